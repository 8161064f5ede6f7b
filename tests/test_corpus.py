"""encode-corpus end to end: real Qwen2 tokenizer, real stdlib sources as the corpus.

Every test decodes or byte-compares real output: shards are read back with ShardDataset and
checked against ``Tokenizer.encode_ordinary`` of every input document, in order, with the EOS
layout asked for. Fault tests run the CLI in a subprocess and kill it (SIGKILL, SIGINT).
"""

from __future__ import annotations

import gzip
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import unicodedata
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import blake3
import fixtures
import numpy as np
import pytest
import zstandard

import aprx
from aprx.corpus import encode_corpus
from aprx.errors import CorpusError
from aprx.importer import import_hf
from aprx.shards import ShardDataset

# Documents that exercise the encoder's edges: an added-token string that must stay text, NFD
# text that NFC changes, CRLF, astral characters, and empty documents (counted, not written).
SPECIAL_DOCS = [
    "x = '<|endoftext|>'  # not the special token\n<|im_start|>user<|im_end|>\n",
    "caf\u0065\u0301 = 'Cafe\u0301'\r\nprint(caf\u00e9)\r\n",
    "",
    "emoji = '\U0001f600\U0001f680'\n\tindent\n",
    "",
]


# -- helpers --------------------------------------------------------------------------------


def write_jsonl(path: Path, docs: Sequence[str]) -> Path:
    """One {"path", "content"} object a line; every other line with non-ASCII escaped."""
    with open(path, "w", encoding="utf-8") as f:
        for i, d in enumerate(docs):
            obj = {"path": f"doc{i}.py", "content": d}
            f.write(json.dumps(obj, ensure_ascii=(i % 2 == 1)) + "\n")
    return path


def jsonl_bytes(docs: Sequence[str]) -> bytes:
    return "".join(json.dumps({"content": d}) + "\n" for d in docs).encode()


def b3(data: bytes) -> str:
    """BLAKE3 by the ``blake3`` package, to check the digests aprx writes."""
    return blake3.blake3(data).hexdigest()


def b3_file(p: Path) -> str:
    return b3(p.read_bytes())


def out_files(d: Path) -> Dict[str, bytes]:
    """shard .bin/.idx contents by name."""
    return {p.name: p.read_bytes() for p in sorted(d.glob("shard-*")) if p.is_file()}


def manifest_of(d: Path) -> Dict[str, Any]:
    return json.loads((d / "manifest.json").read_text())


def without_run(m: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in m.items() if k != "run"}


def tmp_files(d: Path) -> List[str]:
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".tmp"))


def walk_sorted(d: Path, exts: Sequence[str]) -> List[Path]:
    """The order encode-corpus promises for a directory: sorted names, recursive, no hidden."""
    out: List[Path] = []
    for name in sorted(os.listdir(d)):
        if name.startswith("."):
            continue
        p = d / name
        if p.is_dir():
            out.extend(walk_sorted(p, exts))
        elif name.endswith(".jsonl") or p.suffix.lstrip(".") in exts:
            out.append(p)
    return out


def check_layout(
    out: Path,
    docs: Sequence[str],
    tok: aprx.Tokenizer,
    policy: str,
    eos: Optional[int],
    decode: bool = False,
) -> ShardDataset:
    """The shards hold exactly ``docs`` (non-empty ones, in order), each followed by EOS as the
    policy says, every span inside one shard; the manifest agrees with the files."""
    ds = ShardDataset(out, verify_digests=True)
    nonempty = [d for d in docs if d]
    assert ds.num_documents == len(nonempty)
    spans = list(ds.iter_documents())
    for i, (text, span) in enumerate(zip(nonempty, spans, strict=True)):
        ids = tok.encode_ordinary(text)
        last = i == len(nonempty) - 1
        want_eos = policy == "after" or (policy == "between" and not last)
        expected = np.append(ids, np.uint32(eos)) if want_eos else ids
        assert np.array_equal(span, expected), f"document {i} differs"
        if eos is not None:
            body = span[:-1] if want_eos else span
            assert eos not in body, f"document {i} holds the EOS id inside"
        if decode:
            body_ids = span[:-1] if want_eos else span
            assert tok.decode(body_ids.tolist()) == unicodedata.normalize("NFC", text)
    m = ds.manifest
    assert m["total_documents"] == len(nonempty)
    assert m["total_tokens"] == len(ds) == sum(s["tokens"] for s in m["shards"])
    assert m["eos_policy"] == policy
    if len(ds):
        assert m["max_token_id"] == ds.scan_max_token_id()
    for s, ends in zip(m["shards"], ds.doc_ends, strict=True):
        assert s["documents"] == len(ends) > 0
    return ds


def run_cli(args: Sequence[str], **kw: Any) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "aprx.cli", "tokenize", "encode-corpus", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


# Runs the CLI with Python's own SIGINT handler even when this process was started with SIGINT
# ignored (a background job of a non-interactive shell is, and the ignoring is inherited), as
# it is for someone who presses Ctrl-C.
_CLI_WITH_SIGINT = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'aprx'; runpy.run_module('aprx.cli', run_name='__main__')"
)


def start_cli(args: Sequence[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-c", _CLI_WITH_SIGINT, "tokenize", "encode-corpus", *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def completed_shards(d: Path) -> int:
    return len(list(d.glob("shard-*.bin")))


def wait_for(proc: subprocess.Popen, cond: Any, timeout: float = 60.0) -> bool:
    """Polls until ``cond()`` or the process ends; True if the condition was met first."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return True
        if proc.poll() is not None:
            return bool(cond())
        time.sleep(0.002)
    raise AssertionError("timed out waiting for encode-corpus")


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tok") / "qwen2"
    import_hf(fixtures.qwen2_tokenizer_json(), d, include_added_tokens=True)
    return d


@pytest.fixture(scope="module")
def tok(tok_dir: Path) -> aprx.Tokenizer:
    return aprx.Tokenizer.from_file(tok_dir)


@pytest.fixture(scope="module")
def eos(tok: aprx.Tokenizer) -> int:
    eid = tok.token_to_id("<|endoftext|>")
    assert eid == fixtures.QWEN2_VOCAB
    return int(eid)


@pytest.fixture(scope="module")
def stdlib() -> List[Tuple[Path, str]]:
    return fixtures.stdlib_sources()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, stdlib: List[Tuple[Path, str]]):
    """Mixed inputs: plain JSONL, .jsonl.gz, .jsonl.zst and a directory tree of .py files.

    Returns (list of input paths in order, list of documents in the promised order)."""
    root = tmp_path_factory.mktemp("corpus")
    picked = stdlib[::12]  # ~150 files spread over the whole stdlib
    texts = [t for _, t in picked]
    # c ends with the biggest stdlib file: one document larger than a 30k-token shard.
    biggest = max((t for _, t in stdlib), key=len)
    a, b, c = texts[:50] + SPECIAL_DOCS, texts[50:90], texts[90:119] + [biggest]
    write_jsonl(root / "a.jsonl", a)
    (root / "b.jsonl.gz").write_bytes(gzip.compress(jsonl_bytes(b)))
    (root / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor(level=3).compress(jsonl_bytes(c)))
    tree = root / "tree"
    for i, (p, _) in enumerate(picked[120:]):
        sub = tree / ["pkg_b", "pkg_a/inner", "pkg_a", "z"][i % 4]
        sub.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, sub / f"{p.stem}_{i}.py")
    # Taken: a README (md is a text extension) and a JSONL inside the tree.
    (tree / "README.md").write_text("# tree\n\nA corpus directory.\n")
    write_jsonl(tree / "pkg_a" / "extra.jsonl", [texts[0][:500], "second line document\n"])
    # Skipped: hidden files and directories, other extensions.
    (tree / ".hidden.py").write_text("hidden = True\n")
    (tree / ".git").mkdir()
    (tree / ".git" / "config.py").write_text("hidden = True\n")
    (tree / "data.bin").write_bytes(b"\xff\xfe binary")
    (tree / "notes.json").write_text('{"not": "taken"}')
    (tree / "pkg_b" / "module.pyc").write_bytes(b"\x00\x01")
    tree_docs: List[str] = []
    for p in walk_sorted(tree, ["py", "md"]):
        if p.suffix == ".jsonl":
            tree_docs += [json.loads(line)["content"] for line in p.read_text().splitlines()]
        else:
            tree_docs.append(p.read_text(encoding="utf-8"))
    inputs = [root / "a.jsonl", root / "b.jsonl.gz", root / "c.jsonl.zst", tree]
    return inputs, a + b + c + tree_docs


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, corpus, tok_dir):
    inputs, docs = corpus
    out = tmp_path_factory.mktemp("full") / "out"
    m = encode_corpus(inputs, tok_dir, out, shard_tokens=30_000, num_workers=2)
    return out, m


@pytest.fixture(scope="module")
def big_jsonl(tmp_path_factory, stdlib) -> Tuple[Path, List[str]]:
    """A JSONL big enough (about 8M tokens) for about 400 20k-token shards: every stdlib file
    cut into 6-line documents, so that the pipeline goes through many batches (of at most 8192
    records) and a kill can land in any phase of one. The run must outlast the kill tests'
    waits, which are in shards and milliseconds, on a machine twice as fast as this one."""
    docs = []
    for _, text in stdlib:
        lines = text.splitlines(keepends=True)
        docs += ["".join(lines[i : i + 6]) for i in range(0, len(lines), 6)]
    return write_jsonl(tmp_path_factory.mktemp("big") / "big.jsonl", docs), docs


@pytest.fixture(scope="module")
def big_ref(tmp_path_factory, big_jsonl, tok_dir) -> Tuple[Path, Dict[str, Any]]:
    """The uninterrupted run that faulted runs must reproduce byte for byte."""
    out = tmp_path_factory.mktemp("bigref") / "out"
    m = encode_corpus(big_jsonl[0], tok_dir, out, shard_tokens=20_000, num_workers=2)
    assert len(m["shards"]) > 50
    return out, m


# -- round trip -----------------------------------------------------------------------------


def test_round_trip_mixed_inputs_between(full_run, corpus, tok, eos, tok_dir):
    out, m = full_run
    inputs, docs = corpus
    ds = check_layout(out, docs, tok, "between", eos, decode=True)
    assert len(m["shards"]) > 5
    assert m == manifest_of(out)
    assert m["schema"] == "aprx.shards/1"
    assert (m["dtype"], m["byte_order"]) == ("uint32", "little")
    assert m["eos_id"] == eos
    tok_manifest = json.loads((tok_dir / "manifest.json").read_text())
    assert m["tokenizer"]["sha256"] == tok.fingerprint == tok_manifest["tokenizer_sha256"]
    assert m["tokenizer"]["vocab_size"] == tok.vocab_size == 151665
    assert m["max_token_id"] == eos  # the EOS is the largest id written
    assert m["empty_documents"] == sum(1 for d in docs if not d) >= 2
    assert m["skipped_count"] == 0 and m["skipped"] == []
    assert m["run"]["elapsed_s"] > 0 and m["run"]["tokens_per_s"] > 0
    # Every shard's digest and counts, checked against the files themselves.
    for s in m["shards"]:
        data = (out / s["file"]).read_bytes()
        assert b3(data) == s["blake3"] and "sha256" not in s
        assert len(data) == 4 * s["tokens"]
        assert (out / s["index"]).stat().st_size == 8 * s["documents"]
    # Input files: every file taken, in order, with its size and digest (checked by blake3).
    files = inputs[:3] + walk_sorted(inputs[3], ["py", "md"])
    assert [i["path"] for i in m["inputs"]] == [str(p) for p in files]
    for entry, p in zip(m["inputs"], files, strict=True):
        assert entry["size"] == p.stat().st_size
        assert entry["blake3"] == b3_file(p)
    assert sum(i["documents"] for i in m["inputs"]) == ds.num_documents
    assert not any(".hidden" in i["path"] or ".git" in i["path"] for i in m["inputs"])
    assert not any(i["path"].endswith((".bin", ".json", ".pyc")) for i in m["inputs"])
    # The directory's files are in sorted order, recursively.
    tree_paths = [i["path"] for i in m["inputs"][3:]]
    assert tree_paths[0].endswith("README.md")
    assert any(p.endswith("extra.jsonl") for p in tree_paths)
    assert not (out / "progress.json").exists() and tmp_files(out) == []


def test_endoftext_inside_a_document_is_text(full_run, tok, eos):
    out, _ = full_run
    ds = ShardDataset(out)
    # SPECIAL_DOCS[0] is document 50 (after 50 stdlib documents).
    span = ds.document(50)
    assert span[-1] == eos
    assert tok.decode(span[:-1].tolist()) == SPECIAL_DOCS[0]
    assert eos not in span[:-1]
    assert tok.token_to_id("<|im_start|>") not in span
    assert len(span) > 10


def test_rotation_and_no_split(full_run):
    out, m = full_run
    n = m["shard_tokens"]
    ds = ShardDataset(out)
    assert len(ds.shards) == len(m["shards"]) > 5
    for i, ends in enumerate(ds.doc_ends):
        tokens = int(ends[-1])
        if i < len(ds.doc_ends) - 1:
            # Rotated only once the shard reached N tokens ...
            assert tokens >= n
            # ... and not earlier: before its last document it was still below N.
            assert len(ends) == 1 or int(ends[-2]) < n
        else:
            assert 0 < tokens
    # A document bigger than a shard stays whole (shard of one document, over N tokens).
    assert any(len(e) == 1 and int(e[-1]) > n for e in ds.doc_ends)


@pytest.mark.parametrize("policy", ["after", "none"])
def test_eos_policies(tmp_path, corpus, tok, eos, policy):
    inputs, docs = corpus
    m = encode_corpus(inputs[:3], tok, tmp_path / "o", shard_tokens=50_000, eos_policy=policy)
    n_docs = 50 + len(SPECIAL_DOCS) + 40 + 30  # a.jsonl, b.jsonl.gz, c.jsonl.zst
    check_layout(tmp_path / "o", docs[:n_docs], tok, policy, eos)
    if policy == "none":
        assert m["max_token_id"] < eos
    else:
        assert m["max_token_id"] == eos


def test_eos_token_override(tmp_path, corpus, tok, tok_dir):
    inputs, docs = corpus
    im_end = tok.token_to_id("<|im_end|>")
    m = encode_corpus(inputs[1], tok, tmp_path / "s", eos_token="<|im_end|>")
    assert m["eos_id"] == im_end
    check_layout(tmp_path / "s", docs[55:95], tok, "between", im_end)
    r = run_cli(
        [
            "--corpus",
            inputs[1],
            "--tokenizer",
            tok_dir,
            "--output",
            tmp_path / "n",
            "--eos-token",
            str(im_end),
            "--eos-policy",
            "after",
            "--quiet",
        ]
    )
    assert r.returncode == 0, r.stderr
    check_layout(tmp_path / "n", docs[55:95], tok, "after", im_end)
    with pytest.raises(CorpusError) as e:
        encode_corpus(inputs[1], tok, tmp_path / "x", eos_token="<|no such token|>")
    assert e.value.code == "APRX-C209"
    with pytest.raises(CorpusError) as e:
        encode_corpus(inputs[1], tok, tmp_path / "y", eos_token=10**7)
    assert e.value.code == "APRX-C209" and "10000000" in str(e.value)
    assert not (tmp_path / "y" / "manifest.json").exists()


def test_normalization_override(tmp_path, tok, eos):
    nfd = "name = 'Cafe\u0301'\nA\u030a = 1\n"
    src = write_jsonl(tmp_path / "n.jsonl", [nfd, "plain\n"])
    encode_corpus(src, tok, tmp_path / "nfc")
    encode_corpus(src, tok, tmp_path / "none", normalization="none")
    nfc_ids = ShardDataset(tmp_path / "nfc").document(0)[:-1].tolist()
    raw_ids = ShardDataset(tmp_path / "none").document(0)[:-1].tolist()
    assert tok.decode(nfc_ids) == unicodedata.normalize("NFC", nfd) != nfd
    assert tok.decode(raw_ids) == nfd
    assert manifest_of(tmp_path / "none")["normalization"] == "none"
    assert manifest_of(tmp_path / "nfc")["normalization"] == "nfc"


def test_text_files_and_extension_list(tmp_path, corpus, tok, eos):
    inputs, _ = corpus
    tree = inputs[3]
    # Only .md from the directory; an explicit file is taken whatever its extension.
    cfg = tmp_path / "setup.cfg"
    cfg.write_text("[metadata]\nname = x\n")
    m = encode_corpus([tree, cfg], tok, tmp_path / "o", text_extensions=["md"])
    paths = [i["path"] for i in m["inputs"]]
    assert paths == [str(tree / "README.md"), str(tree / "pkg_a" / "extra.jsonl"), str(cfg)]
    docs = [(tree / "README.md").read_text()]
    docs += [json.loads(x)["content"] for x in (tree / "pkg_a" / "extra.jsonl").open()]
    docs.append(cfg.read_text())
    check_layout(tmp_path / "o", docs, tok, "between", eos, decode=True)


def test_workers_give_identical_bytes(tmp_path, full_run, corpus, tok_dir):
    out2, m2 = full_run
    inputs, _ = corpus
    m1 = encode_corpus(inputs, tok_dir, tmp_path / "w1", shard_tokens=30_000, num_workers=1)
    assert m1["run"]["num_workers"] == 1 and m2["run"]["num_workers"] == 2
    assert out_files(tmp_path / "w1") == out_files(out2)
    assert without_run(m1) == without_run(m2)
    # From 4 workers each shard is written on a thread apart from its hashing, and the tree's
    # small text files are read by helper threads.
    m4 = encode_corpus(inputs, tok_dir, tmp_path / "w4", shard_tokens=30_000, num_workers=4)
    assert m4["run"]["num_workers"] == 4
    assert out_files(tmp_path / "w4") == out_files(out2)
    assert without_run(m4) == without_run(m2)


def test_blank_and_empty_lines_counted(tmp_path, tok, eos):
    src = tmp_path / "e.jsonl"
    src.write_text(
        '{"content": "a = 1\\n"}\n\n   \n{"content": ""}\r\n{"content": "b = 2\\n"}\n'
        '{"content": ""}'
    )
    m = encode_corpus(src, tok, tmp_path / "o")
    assert (m["total_documents"], m["empty_documents"], m["blank_lines"]) == (2, 2, 2)
    assert m["inputs"][0]["records"] == 6
    check_layout(tmp_path / "o", ["a = 1\n", "b = 2\n"], tok, "between", eos)


def test_lines_longer_than_a_read_block(tmp_path, stdlib, tok, eos, monkeypatch):
    """The reader reads blocks of 256 KB doubling to 4 MB (a plain file through mapped windows
    of those sizes) and a record is a range of its block: a line longer than any block grows
    one, and the unfinished lines at block ends move to the next block; every document comes
    through whole, in order, and the same through gzip and with the mapping turned off
    (``APRX_MMAP=0``), to identical shards and input digests."""
    texts = [t for _, t in stdlib]
    huge = "".join(texts[:400])
    while len(huge) < (5 << 20):
        huge += huge[: 1 << 20]
    docs = texts[400:430] + [huge] + texts[430:500] + [huge[:300_000]] + texts[500:520]
    src = write_jsonl(tmp_path / "long.jsonl", docs)
    assert src.stat().st_size > (6 << 20)
    gz = tmp_path / "long.jsonl.gz"
    gz.write_bytes(gzip.compress(src.read_bytes(), compresslevel=1))
    for path, mmap in ((src, "1"), (src, "0"), (gz, "1")):
        monkeypatch.setenv("APRX_MMAP", mmap)
        out = tmp_path / f"o-{path.name}-{mmap}"
        m = encode_corpus(path, tok, out, num_workers=2)
        assert m["total_documents"] == len(docs)
        assert m["inputs"][0]["records"] == len(docs)
        assert m["inputs"][0]["blake3"] == b3_file(path)
        check_layout(out, docs, tok, "between", eos)
    shards = [out_files(tmp_path / f"o-long.jsonl-{mmap}") for mmap in "10"]
    assert shards[0] and shards[0] == shards[1]


def test_cli_json_and_summary(tmp_path, corpus, tok_dir):
    inputs, _ = corpus
    r = run_cli(
        [
            "--corpus",
            inputs[2],
            "--tokenizer",
            tok_dir,
            "--output",
            tmp_path / "j",
            "--json",
            "--shard-tokens",
            "40000",
        ]
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == manifest_of(tmp_path / "j")
    assert "encode-corpus" not in r.stderr  # --json implies no progress bar
    r = run_cli(["--corpus", inputs[2], "--tokenizer", tok_dir, "--output", tmp_path / "s"])
    assert r.returncode == 0, r.stderr
    m = manifest_of(tmp_path / "s")
    assert r.stdout.startswith(
        f"wrote {tmp_path / 's'}: {len(m['shards'])} shards, {m['total_documents']} documents"
    )
    assert out_files(tmp_path / "s") != {}


# -- bad input ------------------------------------------------------------------------------

BAD_LINES = [
    (b'{"content": "unterminated', "APRX-C201", "invalid JSON"),
    (b"not json at all", "APRX-C201", "invalid JSON"),
    (b"[1, 2, 3]", "APRX-C201", "not an object"),
    (b"42", "APRX-C201", "not an object"),
    (b'{"content": "ok"} trailing', "APRX-C201", "invalid JSON"),
    (b'{"content": "\xff\xfe bad bytes"}', "APRX-C202", "invalid UTF-8"),
    (b'{"text": "the wrong field"}', "APRX-C203", 'no "content" field'),
    (b'{"content": 5}', "APRX-C204", "not a string"),
    (b'{"content": null}', "APRX-C204", "not a string"),
    (b'{"content": ["a", "b"]}', "APRX-C204", "not a string"),
]


def bad_corpus(path: Path, good: Sequence[str], bad: bytes, at: int) -> int:
    """Writes good documents with ``bad`` inserted as line ``at`` (1-based); returns ``at``."""
    lines = [json.dumps({"content": d}).encode() for d in good]
    lines.insert(at - 1, bad)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return at


@pytest.mark.parametrize("bad,code,reason", BAD_LINES, ids=[c for _, c, _ in BAD_LINES])
def test_fail_names_file_line_and_reason(tmp_path, stdlib, tok, bad, code, reason):
    good = [t for _, t in stdlib[40:70]]
    src = tmp_path / "bad.jsonl"
    line = bad_corpus(src, good, bad, 25)
    out = tmp_path / "o"
    with pytest.raises(CorpusError) as e:
        encode_corpus(src, tok, out, shard_tokens=2_000)
    assert e.value.code == code
    assert f"{src}:{line}:" in str(e.value)
    assert reason in str(e.value)
    # Shards completed before the bad line stay (resumable); nothing half-written, no manifest.
    assert completed_shards(out) >= 1
    assert tmp_files(out) == []
    assert not (out / "manifest.json").exists()


def test_fail_from_cli_exit_code_and_message(tmp_path, stdlib, tok_dir):
    src = tmp_path / "bad.jsonl"
    line = bad_corpus(src, [t for _, t in stdlib[40:50]], b'{"content": 5}', 7)
    r = run_cli(
        [
            "--corpus",
            src,
            "--tokenizer",
            tok_dir,
            "--output",
            tmp_path / "o",
            "--shard-tokens",
            "1000",
        ]
    )
    assert r.returncode == 2
    assert f'aprx: error [APRX-C204] {src}:{line}: field "content"' in r.stderr
    assert tmp_files(tmp_path / "o") == [] and not (tmp_path / "o" / "manifest.json").exists()


def test_invalid_utf8_text_file_names_its_line(tmp_path, tok):
    src = None
    for p in fixtures.stdlib_non_utf8():
        data = p.read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            src, line = p, data[: exc.start].count(b"\n") + 1
            break
    assert src is not None
    with pytest.raises(CorpusError) as e:
        encode_corpus(src, tok, tmp_path / "o")
    assert e.value.code == "APRX-C202"
    assert f"{src}:{line}: invalid UTF-8" in str(e.value)
    m = encode_corpus(src, tok, tmp_path / "s", on_error="skip")
    assert m["skipped"] == [
        {"file": str(src), "line": line, "code": "APRX-C202", "reason": m["skipped"][0]["reason"]}
    ]
    assert m["total_documents"] == 0 and m["shards"] == []


def test_skip_accounts_for_every_bad_line(tmp_path, stdlib, tok, eos):
    good = [t for _, t in stdlib[100:130]]
    lines = [json.dumps({"content": d}).encode() for d in good]
    expected = []
    for k, (bad, code, _) in enumerate(BAD_LINES):
        at = 2 + 3 * k  # 1-based line number in the final file
        lines.insert(at - 1, bad)
        expected.append((at, code))
    src = tmp_path / "mixed.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    # The fail run stops at the first bad line.
    with pytest.raises(CorpusError) as e:
        encode_corpus(src, tok, tmp_path / "f")
    assert e.value.code == BAD_LINES[0][1] and f"{src}:2:" in str(e.value)
    m = encode_corpus(src, tok, tmp_path / "s", on_error="skip", shard_tokens=5_000)
    assert m["skipped_count"] == len(BAD_LINES)
    assert [(s["file"], s["line"], s["code"]) for s in m["skipped"]] == [
        (str(src), at, code) for at, code in expected
    ]
    for s, (_, _, reason) in zip(m["skipped"], BAD_LINES, strict=True):
        assert reason in s["reason"]
    (inp,) = m["inputs"]
    assert (inp["skipped"], inp["documents"], inp["records"]) == (
        len(BAD_LINES),
        len(good),
        len(lines),
    )
    check_layout(tmp_path / "s", good, tok, "between", eos)


@pytest.mark.parametrize("damage", ["truncated", "bad header", "bad CRC"])
@pytest.mark.parametrize("kind", ["gz", "zst"])
def test_corrupt_compressed_input(tmp_path, stdlib, tok, kind, damage):
    raw = jsonl_bytes([t for _, t in stdlib[:20]])
    if kind == "gz":
        data = gzip.compress(raw)
    else:
        data = zstandard.ZstdCompressor(write_checksum=True).compress(raw)
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "bad header":
        data = b"not a compressed file at all\n" + data
    elif kind == "gz":  # the gzip trailer's CRC-32 of the text
        data = data[:-8] + bytes(4) + data[-4:]
    else:  # the zstd frame's checksum of the text
        data = data[:-4] + bytes(4)
    src = tmp_path / f"t.jsonl.{kind}"
    src.write_bytes(data)
    with pytest.raises(CorpusError) as e:
        encode_corpus(src, tok, tmp_path / "o", shard_tokens=1_000)
    assert e.value.code == "APRX-C205" and str(src) in str(e.value)
    assert tmp_files(tmp_path / "o") == [] and not (tmp_path / "o" / "manifest.json").exists()


def runs_by_workers(inputs: Any, tok_dir: Path, tmp: Path, workers: Sequence[int]) -> Dict:
    """encode-corpus of ``inputs`` (20k-token shards, bad records skipped) into ``tmp/wN`` for
    each N of ``workers``; checks that every run's output is byte-identical to the first's."""
    runs: Dict[int, Dict[str, Any]] = {}
    for n in workers:
        runs[n] = encode_corpus(
            inputs, tok_dir, tmp / f"w{n}", shard_tokens=20_000, num_workers=n, on_error="skip"
        )
        assert out_files(tmp / f"w{n}") == out_files(tmp / f"w{workers[0]}")
        assert without_run(runs[n]) == without_run(runs[workers[0]])
    return runs


def kill_and_resume(inputs: Sequence[Path], tok_dir: Path, out: Path, at_shards: int) -> None:
    """The same run as ``runs_by_workers``' on 8 workers from the CLI, SIGKILLed once it has
    completed ``at_shards`` shards, then resumed to its end."""
    args = ["--corpus", *inputs, "--tokenizer", tok_dir, "--output", out]
    args += ["--shard-tokens", "20000", "--num-workers", "8", "--on-error", "skip", "--quiet"]
    proc = start_cli(args)
    hit = wait_for(proc, lambda: out.exists() and completed_shards(out) >= at_shards)
    running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert hit and running, err
    assert not (out / "manifest.json").exists()
    r = run_cli([*args, "--resume", "--json"])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["run"]["resumed"] is True


def test_compressed_inputs_decoded_ahead(tmp_path, stdlib, tok_dir):
    """From 4 workers, compressed and Parquet inputs of 1 MiB or more are decoded several at a
    time, each on a thread of its own (smaller ones in their turn): the output is byte-identical
    to one worker reading them in turn, also when a run killed inside them is resumed, and a
    corrupt file among them stops the run with its own error, leaving nothing behind."""
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    texts = [t for _, t in stdlib]
    inputs = []
    for i in range(9):
        part = texts[i::9]
        stem = tmp_path / f"part-{i}"
        kind = ["jsonl.gz", "jsonl.zst", "parquet", "jsonl.gz", "jsonl"][i % 5]
        if kind == "parquet":
            table = pa.table({"content": part[:3] + [None] + part[3:]})
            pq.write_table(table, f"{stem}.parquet", row_group_size=64, compression="none")
        elif kind == "jsonl":
            write_jsonl(Path(f"{stem}.jsonl"), part)
        elif kind == "jsonl.gz":  # stored, not deflated: over 1 MiB, so decoded ahead
            Path(f"{stem}.jsonl.gz").write_bytes(gzip.compress(jsonl_bytes(part), 0))
        else:  # under 1 MiB: read in its turn
            zst = zstandard.ZstdCompressor(level=1).compress(jsonl_bytes(part))
            Path(f"{stem}.jsonl.zst").write_bytes(zst)
        inputs.append(Path(f"{stem}.{kind}"))
    sizes = {p.name.split(".", 1)[1]: p.stat().st_size >> 20 for p in inputs}
    assert sizes["jsonl.gz"] >= 1 and sizes["parquet"] >= 1 and sizes["jsonl.zst"] < 1
    runs = runs_by_workers(inputs, tok_dir, tmp_path, (1, 4, 8))
    assert len(runs[1]["shards"]) > 250 and len(runs[1]["skipped"]) == 2  # the Parquet nulls
    docs = runs[1]["total_documents"] + runs[1]["empty_documents"]
    assert docs == len(texts) and runs[1]["empty_documents"] == texts.count("")
    # Killed a third of the way in (inside the Parquet file or the gzip file after it), resumed.
    out = tmp_path / "killed"
    kill_and_resume(inputs, tok_dir, out, at_shards=100)
    assert out_files(out) == out_files(tmp_path / "w1")
    assert without_run(manifest_of(out)) == without_run(runs[1])
    # A truncated gzip file after others: its own error, with 8 workers as with one.
    bad = inputs[5]
    bad.write_bytes(bad.read_bytes()[:-40])
    for workers in (1, 8):
        out = tmp_path / f"bad{workers}"
        with pytest.raises(CorpusError) as e:
            encode_corpus(
                inputs, tok_dir, out, shard_tokens=20_000, num_workers=workers, on_error="skip"
            )
        assert e.value.code == "APRX-C205" and str(bad) in str(e.value)
        assert tmp_files(out) == [] and not (out / "manifest.json").exists()


def test_large_parquet_file_decoded_by_row_groups(tmp_path, stdlib, tok_dir):
    """From 4 workers, a Parquet file of several row groups (runs of 4 MiB of them) is read by a
    thread per run and one hashing it: the same shards, manifest, skipped rows and digest as one
    worker reading it, also after a kill and --resume; a file whose metadata is lost gives the
    same error either way."""
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    texts: List[Optional[str]] = [t for _, t in stdlib]
    texts[500] = None  # a null: skipped, by its row number
    src = tmp_path / "big.parquet"
    pq.write_table(pa.table({"content": texts}), src, row_group_size=40, compression="none")
    meta = pq.ParquetFile(src).metadata
    assert meta.num_row_groups > 40 and src.stat().st_size > 6 * 2**20
    m = runs_by_workers(src, tok_dir, tmp_path, (1, 8))[1]
    assert m["inputs"][0]["blake3"] == b3_file(src)
    assert m["inputs"][0]["records"] == len(texts) and m["skipped"][0]["line"] == 501
    # Killed inside the file, resumed on 8 workers.
    out = tmp_path / "killed"
    kill_and_resume([src], tok_dir, out, at_shards=120)
    assert out_files(out) == out_files(tmp_path / "w1")
    assert without_run(manifest_of(out)) == without_run(m)
    # The footer cut off: no row groups to split by; the one reader's error either way.
    src.write_bytes(src.read_bytes()[:-100])
    errors = []
    for workers in (1, 8):
        with pytest.raises(CorpusError) as e:
            encode_corpus(src, tok_dir, tmp_path / f"bad{workers}", num_workers=workers)
        errors.append((e.value.code, str(e.value)))
    assert errors[0] == errors[1] and errors[0][0] == "APRX-C205"


def test_parquet_rows_are_documents(tmp_path, tok, tok_dir, stdlib):
    """A Parquet text column gives the same shards as the same documents in JSONL; nulls,
    non-string values and a missing column are clear errors."""
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    texts = [t for _, t in stdlib[:60]]
    f = tmp_path / "data.parquet"
    table = pa.table({"id": list(range(len(texts))), "content": texts})
    pq.write_table(table, f, row_group_size=16, compression="zstd")
    j = tmp_path / "data.jsonl"
    j.write_bytes(jsonl_bytes(texts))
    a = encode_corpus(f, tok, tmp_path / "pq", shard_tokens=20_000)
    b = encode_corpus(j, tok, tmp_path / "js", shard_tokens=20_000)
    assert [s["blake3"] for s in a["shards"]] == [s["blake3"] for s in b["shards"]]
    assert a["total_documents"] == len(texts)
    assert a["inputs"][0]["records"] == len(texts)
    assert a["inputs"][0]["blake3"] == b3_file(f)
    # found in a directory too
    d = tmp_path / "dir"
    d.mkdir()
    (d / "data.parquet").write_bytes(f.read_bytes())
    c = encode_corpus(d, tok, tmp_path / "dir-out", shard_tokens=20_000)
    assert [s["blake3"] for s in c["shards"]] == [s["blake3"] for s in a["shards"]]

    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"content": ["x = 1\n", None, "y = 2\n"]}), bad)
    with pytest.raises(CorpusError) as e:
        encode_corpus(bad, tok, tmp_path / "o1")
    assert e.value.code == "APRX-C204" and f"{bad}:2:" in str(e.value) and "null" in str(e.value)
    m = encode_corpus(bad, tok, tmp_path / "o2", on_error="skip")
    assert m["total_documents"] == 2 and m["skipped"][0]["line"] == 2
    nums = tmp_path / "nums.parquet"
    pq.write_table(pa.table({"content": [1, 2]}), nums)
    with pytest.raises(CorpusError) as e:
        encode_corpus(nums, tok, tmp_path / "o3")
    assert e.value.code == "APRX-C204"
    with pytest.raises(CorpusError) as e:
        encode_corpus(f, tok, tmp_path / "o4", content_field="text")
    assert e.value.code == "APRX-C203" and "id, content" in str(e.value)
    r = run_cli(["--corpus", f, "--tokenizer", tok_dir, "--output", tmp_path / "c"])
    assert r.returncode == 0, r.stderr


def test_bad_numbers_are_clear_errors(tmp_path, corpus, tok, tok_dir):
    src = corpus[0][2]
    for kw, code in [
        ({"shard_tokens": 0}, "APRX-C210"),
        ({"shard_tokens": -5}, "APRX-C210"),
        ({"num_workers": -1}, "APRX-C210"),
        ({"eos_token": -1}, "APRX-C209"),
    ]:
        with pytest.raises(CorpusError) as e:
            encode_corpus(src, tok, tmp_path / "o", **kw)
        assert e.value.code == code, kw
        assert not (tmp_path / "o").exists()
    r = run_cli(
        [
            "--corpus",
            src,
            "--tokenizer",
            tok_dir,
            "--output",
            tmp_path / "c",
            "--shard-tokens",
            "-5",
        ]
    )
    assert r.returncode == 2 and "[APRX-C210] shard_tokens must be" in r.stderr, r.stderr


def test_missing_input(tmp_path, tok):
    with pytest.raises(CorpusError) as e:
        encode_corpus(tmp_path / "nope.jsonl", tok, tmp_path / "o")
    assert e.value.code == "APRX-C210" and "nope.jsonl" in str(e.value)


def test_codeparrot_style_json_lines(tmp_path, stdlib, tok, eos):
    """codeparrot-clean's layout: JSON Lines files named `file-NNN.json.gz` (and `.json.zst`,
    `.json`). Named as inputs they are JSON Lines; a directory of them alone is an error that
    says to name them (in a directory, JSON files are passed over: a source tree's
    `package.json` or pretty-printed `*.json.gz` fixtures are not corpora)."""
    texts = [t for _, t in stdlib[5:60:5]]
    d = tmp_path / "codeparrot-clean"
    d.mkdir()
    gz = d / "file-000000000001.json.gz"
    gz.write_bytes(gzip.compress(jsonl_bytes(texts[:4])))
    zst = d / "file-000000000002.json.zst"
    zst.write_bytes(zstandard.ZstdCompressor(level=3).compress(jsonl_bytes(texts[4:7])))
    lines = d / "file-000000000003.json"
    lines.write_bytes(jsonl_bytes(texts[7:]))
    m = encode_corpus(sorted(d.glob("file-*.json*")), tok, tmp_path / "o")
    assert [i["path"] for i in m["inputs"]] == [str(gz), str(zst), str(lines)]
    assert [i["records"] for i in m["inputs"]] == [4, 3, len(texts) - 7]
    check_layout(tmp_path / "o", texts, tok, "between", eos, decode=True)

    with pytest.raises(CorpusError) as e:
        encode_corpus(d, tok, tmp_path / "o2")
    msg = str(e.value)
    assert e.value.code == "APRX-C210" and "3 file(s) passed over" in msg
    assert "3 of them are JSON files" in msg and "--corpus DIR/*.json.gz" in msg
    assert not (tmp_path / "o2").exists()

    # Beside a source file in a directory, a pretty-printed .json.gz fixture stays out.
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "m.py").write_text("x = 1\n")
    (tree / "fixture.json.gz").write_bytes(gzip.compress(b'{\n  "a": 1\n}\n'))
    m = encode_corpus(tree, tok, tmp_path / "o3")
    assert [i["path"] for i in m["inputs"]] == [str(tree / "m.py")]
    # Named, it is read as JSON Lines, and its first line says it is not.
    with pytest.raises(CorpusError) as e:
        encode_corpus(tree / "fixture.json.gz", tok, tmp_path / "o4")
    assert e.value.code == "APRX-C201" and "fixture.json.gz:1:" in str(e.value)
    assert "pretty-printed JSON file is not JSON Lines" in str(e.value)


@pytest.mark.parametrize("fmt", ["jsonl.gz", "parquet", "jsonl"])
def test_progress_follows_the_inputs_size(tmp_path, stdlib, tok_dir, fmt):
    """The progress line's percentage is of the inputs as stored: a compressed corpus (whose
    records are several times its size) is not shown done a fraction of the way in. A line
    per batch (APRX_PROGRESS_MS=0), and the documents done at each line to compare."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [t for _, t in stdlib[::4]]
    src = tmp_path / f"docs.{fmt}"
    if fmt == "parquet":
        pq.write_table(pa.table({"content": texts}), src, compression="zstd")
    elif fmt == "jsonl.gz":
        src.write_bytes(gzip.compress(jsonl_bytes(texts), compresslevel=6))
    else:
        src.write_bytes(jsonl_bytes(texts))
    r = run_cli(
        ["--corpus", src, "--tokenizer", tok_dir, "--output", tmp_path / "o"],
        env={**os.environ, "APRX_PROGRESS_MS": "0"},
    )
    assert r.returncode == 0, r.stderr
    lines = [x for x in r.stderr.replace("\r", "\n").splitlines() if "% " in x]
    shown = []
    for x in lines:
        pct, docs = x.split(":", 1)[1].split()[:2]
        shown.append((float(pct.rstrip("%")), int(docs)))
    total = manifest_of(tmp_path / "o")["total_documents"]  # empty texts are not documents
    assert shown[-1] == (100.0, total)
    assert len(shown) > 5
    # Before half the documents are written, the line is not at 100%, nor far ahead of the
    # documents' share of the text (the batches in flight and uneven documents aside).
    for pct, docs in shown:
        if docs < total // 2:
            assert pct < 90.0, (pct, docs, total)
    assert any(5.0 < pct < 95.0 for pct, _ in shown), shown


@pytest.mark.parametrize("held", [[], ["notes.json", "img/logo.png", "a.pyc"]])
def test_directory_without_corpus_files_is_an_error(tmp_path, tok, tok_dir, held):
    """Directories that yield no input are a clear error naming what they passed over, not a
    run of zero documents; nothing is written. Beside a directory that yields documents, one
    that yields none is fine (a tree's `lib-dynload` of `.so` files)."""
    d = tmp_path / "data"
    d.mkdir()
    for name in held:
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text("{}\n")
    (d / ".hidden.jsonl").write_text('{"content": "x"}\n')  # hidden: not taken, not listed
    with pytest.raises(CorpusError) as e:
        encode_corpus(d, tok, tmp_path / "o")
    msg = str(e.value)
    assert e.value.code == "APRX-C210" and str(d) in msg and "no corpus files" in msg
    if held:
        assert "3 file(s) passed over (a.pyc, img/logo.png, notes.json)" in msg
        assert "1 of them are JSON files" in msg
    else:
        assert "no corpus files in this directory: no files at all" in msg
    assert ".jsonl and .ndjson files" in msg and "--text-extensions" in msg
    assert ".hidden" not in msg
    assert not (tmp_path / "o").exists()
    r = run_cli(["--corpus", d, "--tokenizer", tok_dir, "--output", tmp_path / "o2"])
    assert r.returncode != 0 and "APRX-C210" in r.stderr and not (tmp_path / "o2").exists()
    # Two such directories: both named, their files counted together.
    d2 = tmp_path / "more"
    d2.mkdir()
    (d2 / "x.so").write_bytes(b"\x7fELF")
    with pytest.raises(CorpusError) as e:
        encode_corpus([d, d2], tok, tmp_path / "o")
    assert f"{d}, {d2}: no corpus files" in str(e.value)
    assert f"{len(held) + 1} file(s) passed over" in str(e.value)
    # Beside a directory with documents, the empty one is no error.
    good = tmp_path / "good"
    good.mkdir()
    (good / "m.py").write_text("x = 1\n")
    m = encode_corpus([d, good], tok, tmp_path / "o3")
    assert [i["path"] for i in m["inputs"]] == [str(good / "m.py")]


# -- existing output, overwrite, resume settings ---------------------------------------------


def test_refuses_existing_output_then_overwrite(tmp_path, corpus, tok, tok_dir, eos):
    inputs, docs = corpus
    src, src_docs = inputs[1], docs[55:95]
    out = tmp_path / "o"
    encode_corpus(src, tok, out, shard_tokens=5_000)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert len(before) > 5
    with pytest.raises(CorpusError) as e:
        encode_corpus(src, tok, out, shard_tokens=5_000)
    assert e.value.code == "APRX-C206" and "--overwrite" in str(e.value)
    r = run_cli(["--corpus", src, "--tokenizer", tok_dir, "--output", out])
    assert r.returncode == 2 and "[APRX-C206]" in r.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # A directory holding only a killed run's partial shard is refused too.
    partial = tmp_path / "p"
    partial.mkdir()
    (partial / "shard-00000.bin.tmp").write_bytes(b"\0" * 8)
    with pytest.raises(CorpusError) as e:
        encode_corpus(src, tok, partial)
    assert e.value.code == "APRX-C206"
    # Unrelated files do not count as another run's output and are left alone.
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    encode_corpus(src, tok, other)
    assert (other / "notes.txt").read_text() == "mine"
    # Files an overwriting run set aside to delete, and had not deleted when it stopped, are
    # not another run's output: the next run deletes them.
    left = tmp_path / "left"
    left.mkdir()
    (left / ".aprx-old-shard-00003.bin").write_bytes(b"\0" * 8)
    encode_corpus(src, tok, left)
    assert sorted(p.name for p in left.iterdir()) == [
        "manifest.json",
        "shard-00000.bin",
        "shard-00000.idx",
    ]
    # --overwrite replaces everything of the old run: no stale shards survive.
    r = run_cli(
        [
            "--corpus",
            src,
            "--tokenizer",
            tok_dir,
            "--output",
            out,
            "--overwrite",
            "--eos-policy",
            "after",
            "--quiet",
        ]
    )
    assert r.returncode == 0, r.stderr
    m = manifest_of(out)
    assert len(m["shards"]) == 1 and sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "shard-00000.bin",
        "shard-00000.idx",
    ]
    check_layout(out, src_docs, tok, "after", eos)


def test_resume_of_finished_run_and_changed_settings(tmp_path, stdlib, corpus, tok):
    inputs, _ = corpus
    out = tmp_path / "o"
    m = encode_corpus(inputs[2], tok, out, shard_tokens=5_000)
    before = out_files(out)
    # Resuming a finished run is a no-op that returns its manifest.
    again = encode_corpus(inputs[2], tok, out, shard_tokens=5_000, resume=True)
    assert without_run(again) == without_run(m) == without_run(manifest_of(out))
    assert out_files(out) == before
    with pytest.raises(CorpusError) as e:
        encode_corpus(inputs[2], tok, out, shard_tokens=6_000, resume=True)
    assert e.value.code == "APRX-C207"
    # The settings record how each input is read. A finished run whose input was read another
    # way (a build before JSON files named as inputs were JSON Lines read them as text) is
    # another run's output, not this one's.
    assert [i["kind"] for i in manifest_of(out)["config"]["inputs"]] == ["jsonl.zst"]
    lines = tmp_path / "docs.json"
    lines.write_bytes(jsonl_bytes([t for _, t in stdlib[10:14]]))
    j = tmp_path / "j"
    encode_corpus(lines, tok, j)
    mj = manifest_of(j)
    assert [i["kind"] for i in mj["config"]["inputs"]] == ["jsonl"]
    encode_corpus(lines, tok, j, resume=True)  # the same: finished, returned as it is
    mj["config"]["inputs"][0]["kind"] = "text"
    (j / "manifest.json").write_text(json.dumps(mj))
    with pytest.raises(CorpusError) as e:
        encode_corpus(lines, tok, j, resume=True)
    assert e.value.code == "APRX-C207" and "use --overwrite" in str(e.value)
    # An interrupted run (here: stopped by a bad line) cannot resume with other settings.
    src = tmp_path / "bad.jsonl"
    bad_corpus(src, [t for _, t in stdlib[40:70]], b"{", 25)
    with pytest.raises(CorpusError):
        encode_corpus(src, tok, tmp_path / "i", shard_tokens=2_000)
    assert (tmp_path / "i" / "progress.json").exists()
    with pytest.raises(CorpusError) as e:
        encode_corpus(src, tok, tmp_path / "i", shard_tokens=2_000, eos_policy="after", resume=True)
    assert e.value.code == "APRX-C207" and "eos_policy" in str(e.value)
    # With the same settings it resumes from its completed shards and stops at the same line.
    with pytest.raises(CorpusError) as e:
        encode_corpus(src, tok, tmp_path / "i", shard_tokens=2_000, resume=True)
    assert f"{src}:25:" in str(e.value)


# -- faults: SIGKILL and Ctrl-C --------------------------------------------------------------


def fault_args(src: Path, tok_dir: Path, out: Path, *extra: str) -> List[Any]:
    return [
        "--corpus",
        src,
        "--tokenizer",
        tok_dir,
        "--output",
        out,
        "--shard-tokens",
        "20000",
        "--num-workers",
        "2",
        "--quiet",
        *extra,
    ]


def test_sigkill_at_random_moments_then_resume(tmp_path, big_jsonl, big_ref, tok_dir):
    src, _ = big_jsonl
    ref, ref_m = big_ref
    out = tmp_path / "o"
    rng = random.Random(20240607)
    # First kill: while a shard is half-written (*.tmp) in the very first batch. Then each
    # --resume attempt is killed once it has completed a random 1..12 more shards, after a
    # random extra delay, so kills land while encoding, writing a shard, renaming it or
    # saving progress.json. The corpus has ~400 shards, so every kill hits a running process.
    plan = [("tmp", 0, 0.0)]
    plan += [("shard", rng.randint(1, 12), rng.uniform(0, 0.05)) for _ in range(3)]
    kills: List[Tuple[str, int, float, int]] = []
    for attempt, (cond, more, delay) in enumerate(plan):
        start = completed_shards(out) if out.exists() else 0
        proc = start_cli(fault_args(src, tok_dir, out, *(["--resume"] if attempt else [])))
        if cond == "tmp":
            hit = wait_for(proc, lambda: out.exists() and any(out.glob("shard-*.bin.tmp")))
        else:
            target = start + more
            hit = wait_for(proc, lambda t=target: out.exists() and completed_shards(out) >= t)
        time.sleep(delay)
        running = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
        kills.append((cond, more, round(delay, 3), completed_shards(out)))
        assert hit and running, f"attempt {attempt} ended before its kill: {kills} {err}"
        assert proc.returncode == -signal.SIGKILL
        assert not (out / "manifest.json").exists()
    assert kills[-1][-1] < len(ref_m["shards"])
    r = run_cli(fault_args(src, tok_dir, out, "--resume", "--json"))
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert out_files(out) == out_files(ref)
    assert without_run(m) == without_run(ref_m) == without_run(manifest_of(out))
    assert m["run"]["resumed"] is True
    assert tmp_files(out) == [] and not (out / "progress.json").exists()


def test_sigint_stops_cleanly_and_resumes(tmp_path, big_jsonl, big_ref, tok_dir):
    src, _ = big_jsonl
    ref, ref_m = big_ref
    out = tmp_path / "o"
    proc = start_cli(fault_args(src, tok_dir, out))
    assert wait_for(proc, lambda: out.exists() and completed_shards(out) >= 2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "aprx: interrupted" in err
    assert tmp_files(out) == []
    assert not (out / "manifest.json").exists()
    assert (out / "progress.json").exists()
    n_done = completed_shards(out)
    assert 2 <= n_done < len(ref_m["shards"])
    # Without --resume the interrupted output is refused; with it the run completes.
    r = run_cli(fault_args(src, tok_dir, out))
    assert r.returncode == 2 and "[APRX-C206]" in r.stderr
    m = encode_corpus(src, tok_dir, out, shard_tokens=20_000, num_workers=1, resume=True)
    assert out_files(out) == out_files(ref)
    assert without_run(m) == without_run(ref_m)
    assert m["run"]["resumed"] is True


def test_big_reference_round_trip(big_jsonl, big_ref, tok, eos):
    """The reference the fault tests compare against is itself right (checked as one stream:
    every document's ids followed by EOS, the last without, and the index at each EOS)."""
    src, docs = big_jsonl
    ref, m = big_ref
    ds = ShardDataset(ref, verify_digests=True)
    ids = [tok.encode_ordinary(d) for d in docs]
    eos_arr = np.array([eos], dtype=np.uint32)
    want = np.concatenate([p for x in ids for p in (x, eos_arr)][:-1])
    assert np.array_equal(ds.tokens(0, len(ds)), want)
    spans = np.array([len(x) + 1 for x in ids])
    spans[-1] -= 1  # no EOS after the last document
    assert np.array_equal(ds.document_boundaries(), np.cumsum(spans))
    assert ds.num_documents == len(docs) == m["total_documents"]
    assert len(m["shards"]) > 50 and m["max_token_id"] == ds.scan_max_token_id() == eos
    assert m["inputs"][0]["blake3"] == b3_file(src)


def test_corrupt_parquet_footers_give_errors_not_panics(tmp_path, tok):
    """Every byte of a Parquet file's footer (its metadata) set to 0xFF: each file either reads
    or stops the run with the file's own error (APRX-C205, naming it). The parquet crate
    panics on some of them (a column chunk of negative length): that is the file's error too,
    never a PanicException from across the FFI boundary."""
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    good_path = tmp_path / "good.parquet"
    docs = [f"doc {i} " * (i % 7 + 1) for i in range(60)]
    pq.write_table(pa.table({"content": docs}), good_path, row_group_size=20)
    good = good_path.read_bytes()
    footer = int.from_bytes(good[-8:-4], "little")
    bad = tmp_path / "bad.parquet"
    outcomes: Dict[str, int] = {}
    for i in range(len(good) - 8 - footer, len(good) - 8):
        data = bytearray(good)
        data[i] = 0xFF
        bad.write_bytes(bytes(data))
        try:
            encode_corpus(bad, tok, tmp_path / "out", eos_policy="none", overwrite=True)
            kind = "read"
        except CorpusError as e:
            assert e.code == "APRX-C205" and str(bad) in str(e), (i, e)
            kind = "reader failed" if "the reader failed" in str(e) else "corrupt"
        outcomes[kind] = outcomes.get(kind, 0) + 1
    assert outcomes.get("corrupt", 0) > 0
    # With this file and the parquet crate aprx pins, some corruptions reach a panic of the
    # reader (caught): the case this test is for.
    assert outcomes.get("reader failed", 0) > 0, outcomes


def test_overwrite_and_resume_never_touch_inputs_or_files_not_ours(tmp_path, tok):
    """Only files named as aprx names its own (`shard-NNNNN.bin`/`.idx`, the manifest and
    progress files, their `.tmp`) count as an earlier run's output. An input in the output
    directory under such a name stops the run untouched; a user's `shard-00000.jsonl` (a
    common dataset naming) or `manifest.json.bak` beside the output survives `overwrite`."""
    out = tmp_path / "data"
    out.mkdir()
    data = out / "shard-00000.jsonl"
    write_jsonl(data, ["precious data", "more data"])
    keep = {data: data.read_bytes()}
    for name in ("manifest.json.bak", "shard-notes.txt", "shard-00000.bin.orig"):
        (out / name).write_text("user file")
        keep[out / name] = b"user file"
    first = encode_corpus(data, tok, out, eos_policy="none")
    assert first["total_documents"] == 2
    for flag in ("overwrite", "resume"):
        again = encode_corpus(data, tok, out, eos_policy="none", **{flag: True})
        assert without_run(again) == without_run(first), flag
    assert all(p.read_bytes() == b for p, b in keep.items())
    # An input named like a shard of ours, in the output directory: never deleted.
    named = out / "shard-00001.bin"
    named.write_text('{"content": "x"}\n')
    for flag in ("overwrite", "resume"):
        with pytest.raises(CorpusError) as e:
            encode_corpus(named, tok, out, eos_policy="none", **{flag: True})
        assert e.value.code == "APRX-C210" and str(named) in str(e.value)
        assert named.read_text() == '{"content": "x"}\n'
    assert all(p.read_bytes() == b for p, b in keep.items())
