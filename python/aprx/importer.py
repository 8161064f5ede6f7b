"""Tokenizer import: an HF ``tokenizer.json`` or a tiktoken rank file -> an aprx tokenizer
directory (``vocab.json``, ``merges.txt``, ``tokenizer.json``, ``manifest.json``).

Everything is validated by the Rust loader before anything is written; the directory is
built under a temporary name and renamed into place, so a failed import leaves nothing behind.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

from aprx._aprx import PATTERNS, Tokenizer, __version__, recover_merges
from aprx.errors import AprxIOError, TokenizerError

PathLike = Union[str, "os.PathLike[str]"]

TOKENIZER_SCHEMA = "aprx.tokenizer/1"

#: HF options carried in the manifest so the directory is self-sufficient for the encoder.
_HF_KEYS_ROOT = ("normalizer", "pre_tokenizer", "decoder")
_HF_KEYS_MODEL = ("ignore_merges", "unk_token", "fuse_unk", "byte_fallback", "dropout")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _pattern_list(pre: Any) -> list[str]:
    steps = pre.get("pretokenizers", []) if pre and pre.get("type") == "Sequence" else [pre]
    out = []
    for s in steps:
        if not s:
            continue
        if s.get("type") == "Split":
            pat = s.get("pattern", {})
            out.append(pat.get("Regex") or pat.get("String"))
        elif s.get("type") == "ByteLevel" and s.get("use_regex", True):
            out.append(PATTERNS["gpt2"])
    return out


def _merge_pair(m: Any) -> tuple[str, str]:
    return (m[0], m[1]) if isinstance(m, list) else tuple(m.split(" "))  # type: ignore[return-value]


def _prepare_output(output: Path, overwrite: bool) -> None:
    if output.exists():
        if not output.is_dir():
            raise AprxIOError(f"{output}: exists and is not a directory", "APRX-C290")
        entries = list(output.iterdir())
        is_ours = (output / "manifest.json").exists() and (output / "vocab.json").exists()
        if entries and not (is_ours or overwrite):
            raise AprxIOError(
                f"{output}: directory is not empty and is not an aprx tokenizer directory "
                "(pass overwrite=True / --overwrite to replace it)",
                "APRX-C206",
            )


def import_hf(
    input: PathLike,
    output: PathLike,
    include_added_tokens: bool = False,
    overwrite: bool = False,
    _source: Optional[Path] = None,
) -> dict[str, Any]:
    """Imports an HF ``tokenizer.json`` into an aprx tokenizer directory; returns the manifest.

    ``include_added_tokens`` keeps the added tokens (e.g. Qwen2's 22 ``<|...|>`` tokens) in the
    directory, so ``encode`` recognises them and the effective vocabulary counts them.
    """
    src = Path(input)
    out = Path(output)
    if not src.is_file():
        raise AprxIOError(f"{src}: no such file", "APRX-C290")
    # Full validation (JSON, model type, vocab, merges, components) happens here, in Rust.
    source_tok = Tokenizer.from_file(src)
    with open(src, encoding="utf-8") as f:
        doc = json.load(f)
    model = doc["model"]
    vocab: dict[str, int] = model["vocab"]
    merges = [_merge_pair(m) for m in model["merges"]]
    for i, (a, b) in enumerate(merges):
        if " " in a or " " in b:
            raise TokenizerError(
                f"{src}: merges[{i}] ({a!r}, {b!r}) contains a space and cannot be written "
                "to merges.txt",
                "APRX-T106",
            )
    added = doc.get("added_tokens") or []
    _prepare_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        with open(tmp / "vocab.json", "w", encoding="utf-8") as f:
            json.dump(
                dict(sorted(vocab.items(), key=lambda kv: kv[1])), f, ensure_ascii=False
            )
        with open(tmp / "merges.txt", "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n")
            f.writelines(f"{a} {b}\n" for a, b in merges)
        shutil.copyfile(src, tmp / "tokenizer.json")
        hf = {k: doc.get(k) for k in _HF_KEYS_ROOT}
        hf.update({k: model.get(k) for k in _HF_KEYS_MODEL if k in model})
        manifest: dict[str, Any] = {
            "schema": TOKENIZER_SCHEMA,
            "source": str(_source or src.resolve()),
            "source_sha256": _sha256_file(_source or src),
            "model_type": "BPE",
            "bpe_vocab_size": len(vocab),
            "merges_count": len(merges),
            "added_tokens_count": len(added),
            "added_tokens": added,
            "include_added_tokens": include_added_tokens,
            "effective_vocab_size": 0,
            "normalizer": (source_tok.info["normalizer"]),
            "pre_tokenizer_patterns": _pattern_list(doc.get("pre_tokenizer")),
            "hf": hf,
            "tokenizer_sha256": "",
            "aprx_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        _write_json(tmp / "manifest.json", manifest)
        # Load what was written: the directory must stand on its own.
        written = Tokenizer.from_file(tmp)
        manifest["effective_vocab_size"] = written.vocab_size
        manifest["tokenizer_sha256"] = written.fingerprint
        _write_json(tmp / "manifest.json", manifest)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


# Added tokens of the presets: (first id, names) — Qwen2.5 and Llama-3 as they ship.
_QWEN2_ADDED = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>",
]  # fmt: skip


def _llama3_added() -> list[str]:
    names = [
        "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
        "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>",
        "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
    ]  # fmt: skip
    names += [f"<|reserved_special_token_{i}|>" for i in range(2, 2 + 256 - len(names))]
    return names


#: Presets for ``import_tiktoken``: pattern, normalizer, ignore_merges, added tokens.
TIKTOKEN_PRESETS: dict[str, dict[str, Any]] = {
    "qwen2": {"pattern": PATTERNS["qwen2"], "nfc": True, "ignore_merges": False,
              "added": _QWEN2_ADDED},
    "llama3": {"pattern": PATTERNS["llama3"], "nfc": False, "ignore_merges": True,
               "added": _llama3_added()},
    "cl100k": {"pattern": PATTERNS["cl100k"], "nfc": False, "ignore_merges": False,
               "added": ["<|endoftext|>"]},
    "gpt2": {"pattern": PATTERNS["gpt2"], "nfc": False, "ignore_merges": False,
             "added": ["<|endoftext|>"]},
}  # fmt: skip


def read_rank_file(path: PathLike) -> list[bytes]:
    """Reads a tiktoken rank file (``base64 rank`` per line); returns tokens in rank order."""
    p = Path(path)
    try:
        lines = p.read_bytes().splitlines()
    except OSError as e:
        raise AprxIOError(f"{p}: cannot read: {e}", "APRX-C290") from e
    tokens: list[bytes] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise TokenizerError(f"{p}:{n}: expected 'BASE64 RANK', got {line[:60]!r}", "APRX-T108")
        try:
            tok = base64.b64decode(parts[0], validate=True)
            rank = int(parts[1])
        except (binascii.Error, ValueError) as e:
            raise TokenizerError(f"{p}:{n}: {e}", "APRX-T108") from e
        if rank != len(tokens):
            raise TokenizerError(
                f"{p}:{n}: rank {rank} out of order (expected {len(tokens)})", "APRX-T108"
            )
        tokens.append(tok)
    if not tokens:
        raise TokenizerError(f"{p}: empty rank file", "APRX-T108")
    return tokens


def tiktoken_to_tokenizer_json(
    tokens: list[bytes],
    pattern: str,
    nfc: bool,
    ignore_merges: bool,
    added: list[str],
) -> dict[str, Any]:
    """Builds an HF tokenizer.json (as a dict) from ranked byte tokens."""
    from aprx._aprx import byte_level_str

    strs = [byte_level_str(t) for t in tokens]
    merges, _unreachable = recover_merges(tokens)
    byte_level = {
        "type": "ByteLevel",
        "add_prefix_space": False,
        "trim_offsets": False,
        "use_regex": False,
    }
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": len(tokens) + i, "content": c, "single_word": False, "lstrip": False,
             "rstrip": False, "normalized": False, "special": True}
            for i, c in enumerate(added)
        ],  # fmt: skip
        "normalizer": {"type": "NFC"} if nfc else None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated",
                 "invert": False},
                byte_level,
            ],
        },  # fmt: skip
        "post_processor": None,
        "decoder": dict(byte_level),
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": ignore_merges,
            "vocab": {s: i for i, s in enumerate(strs)},
            "merges": [[strs[a], strs[b]] for a, b, _ in merges],
        },
    }


def import_tiktoken(
    input: PathLike,
    output: PathLike,
    pattern: str = "qwen2",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Imports a tiktoken rank file with a preset (``qwen2``, ``llama3``, ``cl100k``, ``gpt2``)
    into an aprx tokenizer directory (added tokens included); returns the manifest."""
    if pattern not in TIKTOKEN_PRESETS:
        raise TokenizerError(
            f"unknown pattern preset {pattern!r} (choose from {', '.join(TIKTOKEN_PRESETS)})",
            "APRX-T106",
        )
    preset = TIKTOKEN_PRESETS[pattern]
    src = Path(input)
    tokens = read_rank_file(src)
    doc = tiktoken_to_tokenizer_json(
        tokens, preset["pattern"], preset["nfc"], preset["ignore_merges"], preset["added"]
    )
    with tempfile.TemporaryDirectory() as d:
        tj = Path(d) / "tokenizer.json"
        _write_json(tj, doc)
        return import_hf(tj, output, include_added_tokens=True, overwrite=overwrite, _source=src)
