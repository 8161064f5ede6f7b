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
import warnings
from pathlib import Path
from typing import Any, Optional, Union

from aprx._aprx import PATTERNS, Tokenizer, __version__, recover_merges
from aprx.errors import AprxIOError, AprxWarning, TokenizerError

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


def _merges_txt_problem(a: str, b: str) -> Optional[str]:
    """Why the merge ``a b`` cannot be a line of merges.txt (None if it can): readers split
    lines on "\n", each line on " ", and HF's reader skips every line starting "#version"."""
    if " " in a or " " in b:
        return "contains a space"
    if any(c in a or c in b for c in "\n\r"):
        return "contains a line break"
    if a.startswith("#version"):
        return "starts with '#version' (read as the merges.txt header)"
    return None


def _check_round_trip(
    src: Path, source_tok: Tokenizer, written: Tokenizer, include_added_tokens: bool
) -> None:
    """The written directory must load as the same tokenizer as the source."""
    want, got = source_tok.info, written.info
    keys = ("bpe_vocab_size", "merges_count", "normalizer", "patterns", "ignore_merges")
    diff = [k for k in keys if want[k] != got[k]]
    if include_added_tokens and not diff and written.fingerprint != source_tok.fingerprint:
        diff = ["fingerprint"]
    if diff:
        raise TokenizerError(
            f"{src}: the imported directory does not reproduce the tokenizer "
            f"({', '.join(f'{k}: {want.get(k)!r} != {got.get(k)!r}' for k in diff)})",
            "APRX-T106",
        )


def _is_tokenizer_dir(path: Path) -> bool:
    """True for a directory written by ``import_hf``: its manifest has our schema id (a
    ``vocab.json`` + ``manifest.json`` of anything else is not ours to replace)."""
    if not (path / "vocab.json").is_file():
        return False
    try:
        with open(path / "manifest.json", encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("schema") == TOKENIZER_SCHEMA


def _prepare_output(output: Path, overwrite: bool) -> None:
    if output.exists():
        if not output.is_dir():
            raise AprxIOError(f"{output}: exists and is not a directory", "APRX-C290")
        entries = list(output.iterdir())
        if entries and not (_is_tokenizer_dir(output) or overwrite):
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
    _extra: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """Imports an HF ``tokenizer.json`` into an aprx tokenizer directory; returns the manifest.

    ``include_added_tokens`` keeps the added tokens (e.g. Qwen2's 22 ``<|...|>`` tokens) in the
    directory, so ``encode`` recognises them and the effective vocabulary counts them.
    """
    src = Path(input)
    out = Path(output)
    if not src.is_file():
        what = "is a directory, not a tokenizer.json" if src.is_dir() else "no such file"
        raise AprxIOError(f"{src}: {what}", "APRX-C290")
    _prepare_output(out, overwrite)  # refuse a foreign directory before the slow part
    # Full validation (JSON, model type, vocab, merges, components) happens here, in Rust.
    source_tok = Tokenizer.from_file(src)
    with open(src, encoding="utf-8") as f:
        doc = json.load(f)
    model = doc["model"]
    vocab: dict[str, int] = model["vocab"]
    merges = [_merge_pair(m) for m in model["merges"]]
    for i, (a, b) in enumerate(merges):
        why = _merges_txt_problem(a, b)
        if why:
            raise TokenizerError(
                f"{src}: merges[{i}] ({a!r}, {b!r}) {why} and cannot be written to merges.txt",
                "APRX-T106",
            )
    added = doc.get("added_tokens") or []
    _prepare_output(out, overwrite)
    # Parent directories this call creates go again if it fails: nothing is left behind.
    created = [p for p in out.absolute().parents if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        with open(tmp / "vocab.json", "w", encoding="utf-8") as f:
            json.dump(dict(sorted(vocab.items(), key=lambda kv: kv[1])), f, ensure_ascii=False)
        with open(tmp / "merges.txt", "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n")
            f.writelines(f"{a} {b}\n" for a, b in merges)
        shutil.copyfile(src, tmp / "tokenizer.json")
        hf = {k: doc.get(k) for k in _HF_KEYS_ROOT}
        hf.update({k: model.get(k) for k in _HF_KEYS_MODEL if k in model})
        manifest: dict[str, Any] = {
            "schema": TOKENIZER_SCHEMA,
            "source": str((_source or src).resolve()),
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
            **(_extra or {}),
        }
        _write_json(tmp / "manifest.json", manifest)
        # Load what was written: the directory must stand on its own.
        written = Tokenizer.from_file(tmp)
        _check_round_trip(src, source_tok, written, include_added_tokens)
        manifest["effective_vocab_size"] = written.vocab_size
        manifest["tokenizer_sha256"] = written.fingerprint
        _write_json(tmp / "manifest.json", manifest)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            try:
                os.replace(tmp, out)
            except BaseException:
                os.replace(old, out)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            shutil.rmtree(created[-1], ignore_errors=True)
        raise
    return manifest


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


# Added tokens of the presets, in id order from the first id after the ranks — Qwen2.5 and
# Llama-3 as they ship. In Qwen2.5 only <tool_call> and </tool_call> are not special.
_QWEN2_ADDED = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>",
]  # fmt: skip
_QWEN2_NOT_SPECIAL = frozenset({"<tool_call>", "</tool_call>"})


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
              "added": _QWEN2_ADDED, "not_special": _QWEN2_NOT_SPECIAL},
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
    seen: dict[bytes, int] = {}
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
        if tok in seen:
            raise TokenizerError(
                f"{p}:{n}: token {parts[0].decode('ascii', 'replace')} (rank {rank}) repeats "
                f"rank {seen[tok]}",
                "APRX-T108",
            )
        seen[tok] = rank
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
    not_special: frozenset[str] = frozenset(),
) -> tuple[dict[str, Any], list[int]]:
    """Builds an HF tokenizer.json (as a dict) from ranked byte tokens; the ``added`` tokens
    get the ids after the ranks and are special unless named in ``not_special``. Also returns
    the ranks of the tokens no merge sequence reaches (see :func:`aprx._aprx.recover_merges`):
    they stay in the vocab but the tokenizer never produces them; :func:`import_tiktoken`
    warns about them. None with ``ignore_merges``, whose whole-piece lookup reaches them."""
    from aprx._aprx import byte_level_str

    strs = [byte_level_str(t) for t in tokens]
    merges, unreachable = recover_merges(tokens)
    byte_level = {
        "type": "ByteLevel",
        "add_prefix_space": False,
        "trim_offsets": False,
        "use_regex": False,
    }
    doc = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": len(tokens) + i,
                "content": c,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": c not in not_special,
            }
            for i, c in enumerate(added)
        ],  # fmt: skip
        "normalizer": {"type": "NFC"} if nfc else None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": pattern},
                    "behavior": "Isolated",
                    "invert": False,
                },
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
    # (with ignore_merges the whole-piece lookup reaches them, as in tiktoken)
    return doc, [] if ignore_merges else list(unreachable)


def import_tiktoken(
    input: PathLike,
    output: PathLike,
    pattern: str = "qwen2",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Imports a tiktoken rank file with a preset (``qwen2``, ``llama3``, ``cl100k``, ``gpt2``)
    into an aprx tokenizer directory (added tokens included); returns the manifest.

    tiktoken looks a whole pre-tokenized piece up in the ranks before merging, so it can
    produce a token that no sequence of merges reaches. A tokenizer.json can express that only
    with ``ignore_merges`` (the ``llama3`` preset). With the other presets such tokens stay in
    the vocab but the imported tokenizer never produces them, so it splits those pieces
    differently than tiktoken: the import then warns (:class:`aprx.AprxWarning`, naming how
    many and the first few by rank and bytes), and the manifest's ``unreachable_tokens`` holds
    their count (0 when there are none, and always 0 with ``ignore_merges``).
    """
    if pattern not in TIKTOKEN_PRESETS:
        raise TokenizerError(
            f"unknown pattern preset {pattern!r} (choose from {', '.join(TIKTOKEN_PRESETS)})",
            "APRX-T106",
        )
    preset = TIKTOKEN_PRESETS[pattern]
    src = Path(input)
    tokens = read_rank_file(src)
    doc, unreachable = tiktoken_to_tokenizer_json(
        tokens,
        preset["pattern"],
        preset["nfc"],
        preset["ignore_merges"],
        preset["added"],
        preset.get("not_special", frozenset()),
    )
    with tempfile.TemporaryDirectory() as d:
        tj = Path(d) / "tokenizer.json"
        _write_json(tj, doc)
        manifest = import_hf(
            tj,
            output,
            include_added_tokens=True,
            overwrite=overwrite,
            _source=src,
            _extra={"unreachable_tokens": len(unreachable)},
        )
    if unreachable:
        shown = ", ".join(f"rank {r} {tokens[r]!r}" for r in unreachable[:5])
        more = f" and {len(unreachable) - 5} more" if len(unreachable) > 5 else ""
        warnings.warn(
            f"{src}: {len(unreachable)} of {len(tokens)} tokens are reached by no sequence of "
            f"merges ({shown}{more}); tiktoken produces them for a whole matching piece, but "
            f"the '{pattern}' preset does not ignore merges, so the imported tokenizer never "
            "does and encodes such pieces differently (recorded as unreachable_tokens in the "
            "manifest)",
            AprxWarning,
            stacklevel=2,
        )
    return manifest
