"""aprx: exact, fast byte-level BPE for code corpora, u32 token shards, preflight and training.

``import aprx`` needs numpy only; torch is imported lazily by the training entry points.
"""

from __future__ import annotations

from typing import Any

from aprx._aprx import Tokenizer, __version__
from aprx.errors import (
    AprxError,
    AprxIOError,
    AprxWarning,
    CorpusError,
    EncodeError,
    PreflightError,
    TokenizerError,
    TrainingError,
)

__all__ = [
    "AprxError",
    "ShardDataset",
    "encode_corpus",
    "import_hf",
    "import_tiktoken",
    "preflight",
    "train",
    "AprxIOError",
    "AprxWarning",
    "CorpusError",
    "EncodeError",
    "PreflightError",
    "Tokenizer",
    "TokenizerError",
    "TrainingError",
    "__version__",
]

# Public names that live in modules with heavier imports; resolved on first use.
_LAZY = {
    "encode_corpus": "aprx.corpus",
    "import_hf": "aprx.importer",
    "import_tiktoken": "aprx.importer",
    "ShardDataset": "aprx.shards",
}
# Submodules reachable as attributes (``aprx.train.train(...)``, ``aprx.preflight.preflight``)
# without importing torch at ``import aprx`` time.
_SUBMODULES = ("preflight", "train", "model", "checkpoint")


def __getattr__(name: str) -> Any:
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"aprx.{name}")
    raise AttributeError(f"module 'aprx' has no attribute {name!r}")
