"""encode-corpus from Python: corpus files -> u32 token shards (the Rust pipeline)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from aprx._aprx import DEFAULT_TEXT_EXTENSIONS, Tokenizer
from aprx._aprx import encode_corpus as _encode_corpus
from aprx.errors import CorpusError

PathLike = Union[str, "os.PathLike[str]"]

#: Added tokens taken as the end-of-text token, in order of preference.
EOS_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eot_id|>")


def resolve_eos(tok: Tokenizer, eos_token: Union[None, int, str]) -> Optional[int]:
    """The EOS id: ``eos_token`` (an id, or a token string), else the tokenizer's own."""
    if isinstance(eos_token, int):
        if eos_token < 0:
            raise CorpusError(f"EOS id {eos_token} is not in the tokenizer", "APRX-C209")
        return eos_token
    if isinstance(eos_token, str):
        if eos_token.isdigit():
            return int(eos_token)
        tid = tok.token_to_id(eos_token)
        if tid is None:
            raise CorpusError(f"EOS token {eos_token!r} is not in the tokenizer", "APRX-C209")
        return tid
    for cand in EOS_CANDIDATES:
        for t in tok.info["added_tokens"]:
            if t["content"] == cand:
                return int(t["id"])
    return None


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
    # Checked here: a negative number would otherwise escape as an OverflowError traceback.
    if not isinstance(shard_tokens, int) or shard_tokens < 1:
        raise CorpusError(
            f"shard_tokens must be a positive integer, not {shard_tokens!r}", "APRX-C210"
        )
    if num_workers is not None and (not isinstance(num_workers, int) or num_workers < 0):
        raise CorpusError(
            f"num_workers must be a non-negative integer (0: all CPUs), not {num_workers!r}",
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
