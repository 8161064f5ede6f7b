"""encode-corpus from Python: corpus files -> u32 token shards (the Rust pipeline)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from aprx._aprx import DEFAULT_TEXT_EXTENSIONS, MAX_THREADS, Tokenizer
from aprx._aprx import encode_corpus as _encode_corpus
from aprx._validate import is_int
from aprx.errors import CorpusError

PathLike = Union[str, "os.PathLike[str]"]

#: Added tokens taken as the end-of-text token, in order of preference.
EOS_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eot_id|>")

U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1


def resolve_eos(tok: Tokenizer, eos_token: Union[None, int, str]) -> Optional[int]:
    """The EOS id: ``eos_token`` (an id, or a token string), else the tokenizer's own.

    A string of ASCII digits is an id. An id outside the tokenizer, a string that is neither
    an id nor a token, and any other type (``True`` included) raise :class:`CorpusError`.
    """
    if isinstance(eos_token, bool) or not isinstance(eos_token, (int, str, type(None))):
        raise CorpusError(
            f"eos_token must be a token id (int) or a token string, not {eos_token!r}",
            "APRX-C210",
        )
    if isinstance(eos_token, str) and eos_token.isascii() and eos_token.isdigit():
        eos_token = int(eos_token)
    if isinstance(eos_token, int):
        # Ids are u32 in the shards; anything outside that cannot be in the tokenizer.
        if not 0 <= eos_token <= U32_MAX:
            raise CorpusError(
                f"EOS id {eos_token} is not in the tokenizer (size {tok.vocab_size})",
                "APRX-C209",
            )
        return eos_token
    if isinstance(eos_token, str):
        tid = tok.token_to_id(eos_token)
        if tid is None:
            raise CorpusError(f"EOS token {eos_token!r} is not in the tokenizer", "APRX-C209")
        return tid
    for cand in EOS_CANDIDATES:
        for t in tok.info["added_tokens"]:
            if t["content"] == cand:
                return int(t["id"])
    return None


def _check_int(name: str, value: Any, lo: int, hi: int, what: str) -> None:
    """Raises APRX-C210 unless ``value`` is an int (not a bool) in ``lo..=hi``."""
    if not is_int(value, lo, hi):
        raise CorpusError(f"{name} must be {what}, not {value!r}", "APRX-C210")


def load_tokenizer(tokenizer: Union[PathLike, Tokenizer]) -> tuple[Tokenizer, str]:
    if isinstance(tokenizer, Tokenizer):
        return tokenizer, "<in-memory>"
    p = Path(tokenizer)
    return Tokenizer.from_file(p), str(p.resolve())


def encode_corpus(
    corpus: Union[PathLike, Sequence[PathLike]],
    tokenizer: Union[PathLike, Tokenizer],
    output: PathLike,
    *,
    shard_tokens: int = 10_000_000,
    content_field: str = "content",
    eos_policy: str = "between",
    eos_token: Union[None, int, str] = None,
    normalization: Optional[str] = None,
    num_workers: Optional[int] = None,
    resume: bool = False,
    overwrite: bool = False,
    on_error: str = "fail",
    quiet: bool = True,
    text_extensions: Optional[Sequence[str]] = None,
    num_tasks: int = 1,
    task_index: int = 0,
) -> dict[str, Any]:
    """Encodes a corpus (JSONL, .jsonl.gz, .jsonl.zst, Parquet, text files, directories) into
    ``shard-NNNNN.bin`` (u32 LE ids) + ``shard-NNNNN.idx`` (u64 LE document ends) and a
    ``manifest.json``, which is returned. Documents are encoded as ordinary text. JSON files
    (``.json``, ``.json.gz``, ``.json.zst``) named in ``corpus`` are JSON Lines; in a directory
    they are passed over unless ``json`` is a text extension. Inputs that yield no file at all
    are an error (APRX-C210), not a run of nothing.

    Output is byte-identical for any ``num_workers`` and across ``resume``. With
    ``on_error="skip"``, bad lines are skipped and listed in the manifest; with ``"fail"`` the
    run stops naming file, line and reason, leaving no partial shard and no manifest.
    """
    paths = [corpus] if isinstance(corpus, (str, os.PathLike)) else list(corpus)
    if not paths:
        raise CorpusError("no corpus path given", "APRX-C210")
    # Checked here: an out-of-range number would otherwise escape as an OverflowError
    # traceback from the conversion to the Rust types (u64, usize, u32).
    _check_int("shard_tokens", shard_tokens, 1, U64_MAX, f"an integer from 1 to {U64_MAX}")
    if num_workers is not None:
        _check_int(
            "num_workers",
            num_workers,
            0,
            MAX_THREADS,
            f"an integer from 0 (all CPUs) to {MAX_THREADS}",
        )
    _check_int("num_tasks", num_tasks, 1, U32_MAX, f"an integer from 1 to {U32_MAX}")
    _check_int("task_index", task_index, 0, U32_MAX, f"an integer from 0 to {U32_MAX}")
    if task_index >= num_tasks:
        raise CorpusError(
            f"task_index {task_index} is not below the number of tasks {num_tasks} "
            f"(task indices run from 0 to {num_tasks - 1})",
            "APRX-C210",
        )
    tok, tok_path = load_tokenizer(tokenizer)
    eos = resolve_eos(tok, eos_token)
    exts = [e.lstrip(".").lower() for e in (text_extensions or DEFAULT_TEXT_EXTENSIONS)]
    text = _encode_corpus(
        tok,
        [Path(p) for p in paths],
        Path(output),
        tokenizer_path=tok_path,
        shard_tokens=shard_tokens,
        content_field=content_field,
        eos_policy=eos_policy,
        eos_id=eos,
        normalization=normalization,
        num_workers=num_workers,
        resume=resume,
        overwrite=overwrite,
        on_error=on_error,
        progress=not quiet,
        text_extensions=exts,
        num_tasks=num_tasks,
        task_index=task_index,
    )
    manifest: dict[str, Any] = json.loads(text)
    return manifest
