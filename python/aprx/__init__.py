"""aprx: exact, fast byte-level BPE for code corpora, u32 token shards, preflight and training.

``import aprx`` needs numpy only; torch is imported lazily by the training entry points.
"""

from __future__ import annotations

from typing import Any

from aprx._aprx import Tokenizer, __version__
from aprx.errors import (
    AprxError,
    AprxIOError,
    CorpusError,
    EncodeError,
    PreflightError,
    TokenizerError,
    TrainingError,
)

__all__ = [
    "AprxError",
    "AprxIOError",
    "CorpusError",
    "EncodeError",
    "PreflightError",
    "Tokenizer",
    "TokenizerError",
    "TrainingError",
    "__version__",
]

# Public names that live in modules with heavier imports; resolved on first use.
_LAZY = {}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name])
        return getattr(module, name)
    raise AttributeError(f"module 'aprx' has no attribute {name!r}")
