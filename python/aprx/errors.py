"""The aprx exception family.

Every error aprx raises on purpose carries a stable ``code`` (e.g. ``"APRX-T101"``) so that
scripts and the troubleshooting table in the README can rely on it. The classes subclass the
standard exceptions where they fit: bad input is a ``ValueError``, a file problem an ``OSError``.

Code ranges: ``T1xx`` tokenizer files and import, ``E1xx`` encoding, ``C2xx`` corpus and
shards, ``P3xx`` preflight gates, ``R4xx`` training runs, ``X9xx`` internal.
"""

from __future__ import annotations

from typing import Optional


class AprxError(Exception):
    """Base class of every aprx error; ``code`` is stable across releases."""

    code: str = "APRX-X900"

    def __init__(self, message: str, code: Optional[str] = None) -> None:
        if code is not None:
            self.code = code
        super().__init__(f"[{self.code}] {message}")
        self.message = message


class TokenizerError(AprxError, ValueError):
    """A tokenizer file is malformed, unsupported or inconsistent."""

    code = "APRX-T100"


class EncodeError(AprxError, ValueError):
    """Text that cannot be encoded (e.g. lone surrogates)."""

    code = "APRX-E100"


class CorpusError(AprxError, ValueError):
    """A corpus line or document is invalid, or shards disagree with their manifest."""

    code = "APRX-C200"


class AprxIOError(AprxError, OSError):
    """A file could not be read or written."""

    code = "APRX-C290"


class PreflightError(AprxError, ValueError):
    """A preflight gate failed: tokenizer, shards and model disagree."""

    code = "APRX-P300"


class TrainingError(AprxError, RuntimeError):
    """A training run failed (NaN loss, bad resume state, ...)."""

    code = "APRX-R400"


class AprxWarning(UserWarning):
    """Something aprx did that works but that you may not expect (e.g. an imported tokenizer
    that cannot produce some of its tokens)."""
