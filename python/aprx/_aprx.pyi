"""Type stubs for the native module (checked by mypy.stubtest in CI)."""

from os import PathLike
from typing import Any, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt
from typing_extensions import final

__all__ = [
    "Blake3",
    "DEFAULT_TEXT_EXTENSIONS",
    "MAX_ID",
    "MAX_THREADS",
    "PATTERNS",
    "Tokenizer",
    "__version__",
    "blake3_file",
    "byte_level_str",
    "default_num_threads",
    "encode_corpus",
    "recover_merges",
]
__version__: str
PATTERNS: dict[str, str]
MAX_ID: int  # the largest token id (aprx's packed merge table)
MAX_THREADS: int  # the most threads num_threads / num_workers may ask for
DEFAULT_TEXT_EXTENSIONS: list[str]

_Ids = Union[npt.NDArray[np.uint32], Sequence[int]]

@final
class Tokenizer:
    @staticmethod
    def from_file(path: Union[str, PathLike[str]]) -> Tokenizer: ...
    @staticmethod
    def from_str(json: str, source: str = "<string>") -> Tokenizer: ...
    def encode(self, text: str) -> npt.NDArray[np.uint32]: ...
    def encode_ordinary(self, text: str) -> npt.NDArray[np.uint32]: ...
    def encode_batch(
        self, texts: Sequence[str], ordinary: bool = False, num_threads: Optional[int] = None
    ) -> list[npt.NDArray[np.uint32]]: ...
    def encode_batch_flat(
        self, texts: Sequence[str], ordinary: bool = True, num_threads: Optional[int] = None
    ) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint64]]: ...
    def decode(self, ids: _Ids, skip_special_tokens: bool = False) -> str: ...
    def decode_bytes(self, ids: _Ids, skip_special_tokens: bool = False) -> bytes: ...
    def pre_tokenize(self, text: str) -> list[str]: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def fingerprint(self) -> str: ...
    @property
    def info(self) -> dict[str, Any]: ...
    def token_to_id(self, token: str) -> Optional[int]: ...
    def id_to_token(self, id: int) -> Optional[str]: ...

def recover_merges(
    tokens: Sequence[bytes],
) -> tuple[list[tuple[int, int, int]], list[int]]: ...
def default_num_threads() -> int: ...

@final
class Blake3:
    def __init__(self) -> None: ...
    def update(self, data: bytes) -> None: ...
    def hexdigest(self) -> str: ...

def blake3_file(path: Union[str, PathLike[str]]) -> str: ...
def byte_level_str(data: bytes) -> str: ...
def encode_corpus(
    tokenizer: Tokenizer,
    inputs: Sequence[Union[str, PathLike[str]]],
    output: Union[str, PathLike[str]],
    *,
    tokenizer_path: str,
    shard_tokens: int,
    content_field: str,
    eos_policy: str,
    eos_id: Optional[int],
    normalization: Optional[str],
    num_workers: Optional[int],
    resume: bool,
    overwrite: bool,
    on_error: str,
    progress: bool,
    text_extensions: Sequence[str],
    num_tasks: int = 1,
    task_index: int = 0,
) -> str: ...
