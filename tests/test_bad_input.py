"""Bad input gets an aprx error with a stable code (or, from the CLI, ``aprx: error [CODE]``
and exit status 2), never a traceback, and nothing is silently dropped or reinterpreted."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List

import fixtures
import pytest

import aprx
from aprx import _aprx
from aprx.corpus import encode_corpus
from aprx.errors import AprxWarning, CorpusError, PreflightError
from aprx.importer import import_hf, import_tiktoken
from aprx.preflight import preflight, read_aprx_tokenizer, read_hf_tokenizer
from aprx.shards import ShardDataset, write_shards

QWEN2 = fixtures.QWEN2_PATTERN


@pytest.fixture()
def tok_json(tmp_path: Path) -> Path:
    p = tmp_path / "tokenizer.json"
    p.write_text(json.dumps(fixtures.small_tokenizer_json(normalizer=None)), encoding="utf-8")
    return p


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    p = tmp_path / "in.jsonl"
    p.write_text('{"content":"a the"}\n{"content":"b in"}\n', encoding="utf-8")
    return p


# -- 1. encode_corpus numbers -------------------------------------------------------------------

BAD_NUMBERS: List[tuple[str, Dict[str, Any], str, str]] = [
    ("shard_tokens=2**64", {"shard_tokens": 2**64}, "APRX-C210", "shard_tokens"),
    ("shard_tokens=True", {"shard_tokens": True}, "APRX-C210", "shard_tokens"),
    ("num_workers=2**64", {"num_workers": 2**64}, "APRX-C210", "num_workers"),
    ("num_workers=1025", {"num_workers": 1025}, "APRX-C210", "1024"),
    ("num_workers=True", {"num_workers": True}, "APRX-C210", "num_workers"),
    ("num_tasks=-1", {"num_tasks": -1}, "APRX-C210", "num_tasks"),
    ("num_tasks=0", {"num_tasks": 0}, "APRX-C210", "num_tasks"),
    ("num_tasks=2**32", {"num_tasks": 2**32}, "APRX-C210", "num_tasks"),
    ("num_tasks=True", {"num_tasks": True}, "APRX-C210", "num_tasks"),
    ("task_index=-1", {"task_index": -1}, "APRX-C210", "task_index"),
    ("task_index=2**32", {"task_index": 2**32, "num_tasks": 2}, "APRX-C210", "task_index"),
    ("eos_token=2**32", {"eos_token": 2**32}, "APRX-C209", "4294967296"),
    ("eos_token=2**40", {"eos_token": 2**40}, "APRX-C209", "1099511627776"),
    ("eos_token='4294967296'", {"eos_token": str(2**32)}, "APRX-C209", "4294967296"),
    ("eos_token=True", {"eos_token": True}, "APRX-C210", "True"),
    ("eos_token=1.0", {"eos_token": 1.0}, "APRX-C210", "1.0"),
    # str.isdigit() is true for the Arabic-Indic digit three, int() of it is 3: it is a token
    # string (not in this tokenizer), not an id.
    ("eos_token='٣'", {"eos_token": "\u0663"}, "APRX-C209", "'\u0663'"),
]


@pytest.mark.parametrize(
    "kw,code,words", [b[1:] for b in BAD_NUMBERS], ids=[b[0] for b in BAD_NUMBERS]
)
def test_encode_corpus_rejects_bad_numbers(
    tmp_path: Path, tok_json: Path, corpus: Path, kw: Dict[str, Any], code: str, words: str
) -> None:
    with pytest.raises(CorpusError) as ei:
        encode_corpus(corpus, tok_json, tmp_path / "out", **kw)
    assert ei.value.code == code, str(ei.value)
    assert words in str(ei.value)
    assert not (tmp_path / "out").exists()


def test_encode_corpus_numbers_at_the_limits_run(
    tmp_path: Path, tok_json: Path, corpus: Path
) -> None:
    # The largest values that fit still run; a digit string is an id.
    m = encode_corpus(
        corpus,
        tok_json,
        tmp_path / "out",
        shard_tokens=2**64 - 1,
        num_workers=2,
        num_tasks=2**32 - 1,
        task_index=2**32 - 2,
        eos_token="261",
    )
    assert m["eos_id"] == 261 and m["run"]["num_workers"] == 2
    # One past each is an aprx error with its exact code: BAD_NUMBERS.


@pytest.mark.parametrize(
    "option,value",
    [
        ("--eos-token", "4294967296"),
        ("--eos-token", "\u00b3\u00b3"),
        ("--task-index", "-1"),
        ("--num-tasks", "-1"),
        ("--shard-tokens", str(2**64)),
        ("--num-workers", str(2**64)),
    ],
)
def test_cli_bad_numbers_are_errors_not_tracebacks(
    tmp_path: Path, tok_json: Path, corpus: Path, option: str, value: str
) -> None:
    cmd = [sys.executable, "-m", "aprx.cli", "tokenize", "encode-corpus", "--corpus", corpus]
    cmd += ["--tokenizer", tok_json, "--output", tmp_path / "out", "--quiet", option, value]
    r = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("aprx: error [APRX-C2"), r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


# -- 2. shard manifests -------------------------------------------------------------------------


def _set(key: str, value: Any) -> Callable[[Dict[str, Any]], None]:
    def edit(m: Dict[str, Any]) -> None:
        m[key] = value

    return edit


def _set_tok(key: str, value: Any) -> Callable[[Dict[str, Any]], None]:
    def edit(m: Dict[str, Any]) -> None:
        m["tokenizer"][key] = value

    return edit


def _dup_shard(m: Dict[str, Any]) -> None:
    m["shards"].append(dict(m["shards"][0]))
    m["total_tokens"] += m["shards"][0]["tokens"]
    m["total_documents"] += m["shards"][0]["documents"]


def _index_is_other_bin(m: Dict[str, Any]) -> None:
    m["shards"][1]["index"] = m["shards"][0]["file"]


BAD_MANIFESTS: List[tuple[str, Callable[[Dict[str, Any]], None], str]] = [
    ("total_tokens='abc'", _set("total_tokens", "abc"), "total_tokens = 'abc'"),
    ("total_tokens=None", _set("total_tokens", None), "total_tokens = None"),
    ("total_tokens=5.0", _set("total_tokens", 5.0), "total_tokens = 5.0"),
    ("total_tokens='7'", _set("total_tokens", "7"), "total_tokens = '7'"),
    ("total_documents=[1]", _set("total_documents", [1]), "total_documents = [1]"),
    ("total_documents=True", _set("total_documents", True), "total_documents = True"),
    ("max_token_id='abc'", _set("max_token_id", "abc"), "max_token_id = 'abc'"),
    ("max_token_id=-2", _set("max_token_id", -2), "max_token_id = -2 is not an integer >= -1"),
    ("eos_id=-1", _set("eos_id", -1), "eos_id = -1 is not a non-negative integer"),
    ("max_token_id=2**32", _set("max_token_id", 2**32), "max_token_id = 4294967296"),
    ("eos_id={}", _set("eos_id", {}), "eos_id = {}"),
    ("eos_policy=1", _set("eos_policy", 1), "eos_policy = 1"),
    ("tokenizer=[]", _set("tokenizer", []), "tokenizer = []"),
    ("tokenizer.vocab_size='x'", _set_tok("vocab_size", "x"), "tokenizer.vocab_size = 'x'"),
    ("tokenizer.sha256=5", _set_tok("sha256", 5), "tokenizer.sha256 = 5"),
    ("tokenizer.path=[]", _set_tok("path", []), "tokenizer.path = []"),
    ("shard listed twice", _dup_shard, "shards[2].file = 'shard-00000.bin' is already listed"),
    ("index names a .bin", _index_is_other_bin, "shards[1].index = 'shard-00000.bin'"),
]


def _shards(path: Path) -> Path:
    write_shards(
        path, [[1, 2, 3], [4, 5], [6]], tokenizer_sha256="ab" * 32, vocab_size=10, shard_tokens=4
    )
    return path


@pytest.mark.parametrize(
    "edit,words", [b[1:] for b in BAD_MANIFESTS], ids=[b[0] for b in BAD_MANIFESTS]
)
def test_malformed_shard_manifest(
    tmp_path: Path, edit: Callable[[Dict[str, Any]], None], words: str
) -> None:
    d = _shards(tmp_path / "ds")
    manifest = json.loads((d / "manifest.json").read_text())
    assert len(manifest["shards"]) == 2
    edit(manifest)
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CorpusError) as ei:
        ShardDataset(d)
    assert ei.value.code == "APRX-C221"
    assert str(d / "manifest.json") in str(ei.value)
    assert words in str(ei.value)


def test_shard_manifest_optional_fields_null_or_typed(tmp_path: Path) -> None:
    d = _shards(tmp_path / "ds")
    manifest = json.loads((d / "manifest.json").read_text())
    manifest.update(eos_id=None, max_token_id=None, eos_policy=None)
    manifest["tokenizer"] = {"sha256": None, "vocab_size": None, "path": None}
    (d / "manifest.json").write_text(json.dumps(manifest))
    ds = ShardDataset(d)
    assert (ds.eos_id, ds.max_token_id, ds.vocab_size, ds.tokenizer_sha256) == (None,) * 4
    assert len(ds) == 6 and ds.num_documents == 3
    # A number as a string is not silently converted when the property is read later.
    for key, value in (("eos_id", "0"), ("max_token_id", "6"), ("tokenizer", {"vocab_size": "10"})):
        (d / "manifest.json").write_text(json.dumps(dict(manifest, **{key: value})))
        with pytest.raises(CorpusError) as ei:
            ShardDataset(d)
        assert ei.value.code == "APRX-C221" and key in str(ei.value)


def test_shard_manifest_number_too_long_to_parse(tmp_path: Path) -> None:
    d = _shards(tmp_path / "ds")
    text = (d / "manifest.json").read_text()
    assert '"max_token_id": 6' in text
    (d / "manifest.json").write_text(
        text.replace('"max_token_id": 6', '"max_token_id": ' + "9" * 5000)
    )
    with pytest.raises(CorpusError) as ei:
        ShardDataset(d)
    assert ei.value.code == "APRX-C220" and str(d / "manifest.json") in str(ei.value)


def test_shard_manifest_nested_too_deep(tmp_path: Path) -> None:
    d = tmp_path / "ds"
    d.mkdir()
    (d / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CorpusError) as ei:
        ShardDataset(d)
    assert ei.value.code == "APRX-C220" and str(d / "manifest.json") in str(ei.value)


# -- 3. preflight on malformed files ------------------------------------------------------------


@pytest.fixture()
def pf(tmp_path: Path, tok_json: Path) -> tuple[Path, Path]:
    """An aprx tokenizer directory (262 ids) and shards made with it."""
    tok = tmp_path / "tok"
    m = import_hf(tok_json, tok, include_added_tokens=True)
    ds = tmp_path / "ds"
    write_shards(ds, [[1, 2, 3, 261]] * 500, tokenizer_sha256=m["tokenizer_sha256"], vocab_size=262)
    return tok, ds


def _edit_json(path: Path, edit: Callable[[Any], Any]) -> None:
    obj = json.loads(path.read_text(encoding="utf-8"))
    obj = edit(obj) or obj
    path.write_text(json.dumps(obj), encoding="utf-8")


def _gate(report: Any, gid: str) -> Any:
    return next(g for g in report.gates if g.id == gid)


TOKENIZER_BREAKS: List[tuple[str, str, Callable[[Path], None], str]] = [
    (
        "vocab value is a string",
        "vocab.json",
        lambda p: p.write_text('{"a": "x"}'),
        "vocab entry 'a' has id 'x'",
    ),
    (
        "vocab value is negative",
        "vocab.json",
        lambda p: _edit_json(p, lambda v: v.update(a=-3)),
        "vocab entry 'a' has id -3",
    ),
    (
        "merges.txt not UTF-8",
        "merges.txt",
        lambda p: p.write_bytes(b"#version: 0.2\na b\n\xff\xfe\n"),
        "cannot read merges",
    ),
    (
        "added token without id",
        "manifest.json",
        lambda p: _edit_json(p, lambda m: m.update(added_tokens=[{"content": "x"}])),
        "added_tokens[0] has no 'id'",
    ),
    (
        "added token content not a string",
        "manifest.json",
        lambda p: _edit_json(p, lambda m: m.update(added_tokens=[{"id": 261, "content": 5}])),
        "added_tokens[0].content is 5",
    ),
    (
        "added_tokens not a list",
        "manifest.json",
        lambda p: _edit_json(p, lambda m: m.update(added_tokens={"id": 1})),
        "added_tokens is not a list",
    ),
    (
        "effective_vocab_size a string",
        "manifest.json",
        lambda p: _edit_json(p, lambda m: m.update(effective_vocab_size="262")),
        "effective_vocab_size is '262'",
    ),
    (
        "unk_id a string",
        "manifest.json",
        lambda p: _edit_json(p, lambda m: m.update(unk_id="0")),
        "unk_id is '0'",
    ),
    (
        "tokenizer_sha256 a number",
        "manifest.json",
        lambda p: _edit_json(p, lambda m: m.update(tokenizer_sha256=5)),
        "tokenizer_sha256 is 5",
    ),
    (
        "include_added_tokens a string",
        "manifest.json",
        lambda p: _edit_json(p, lambda m: m.update(include_added_tokens="no")),
        "include_added_tokens is 'no'",
    ),
    (
        "manifest number too long",
        "manifest.json",
        lambda p: p.write_text(
            p.read_text().replace(
                '"effective_vocab_size": 262', '"effective_vocab_size": ' + "9" * 5000
            )
        ),
        "cannot read tokenizer manifest",
    ),
]


@pytest.mark.parametrize(
    "name,edit,words",
    [b[1:] for b in TOKENIZER_BREAKS],
    ids=[b[0] for b in TOKENIZER_BREAKS],
)
def test_preflight_malformed_tokenizer_dir(
    pf: tuple[Path, Path], name: str, edit: Callable[[Path], None], words: str
) -> None:
    tok, ds = pf
    edit(tok / name)
    with pytest.raises(PreflightError) as ei:
        read_aprx_tokenizer(tok)
    assert ei.value.code == "APRX-P310"
    assert str(tok / name) in str(ei.value) and words in str(ei.value), str(ei.value)
    r = preflight(tok, ds, config="tiny", seq_len=8, batch_size=1)
    g = _gate(r, "tokenizer-files")
    assert g.status == "fail" and g.code == "APRX-P310"
    assert str(tok / name) in g.message and words in g.message


SHARD_BREAKS: List[tuple[str, Callable[[Dict[str, Any]], None], str]] = [
    ("total_tokens='many'", _set("total_tokens", "many"), "total_tokens = 'many'"),
    ("max_token_id='x'", _set("max_token_id", "x"), "max_token_id = 'x'"),
    ("tokenizer.sha256=5", _set("tokenizer", {"sha256": 5}), "tokenizer.sha256 = 5"),
]


@pytest.mark.parametrize(
    "edit,words", [b[1:] for b in SHARD_BREAKS], ids=[b[0] for b in SHARD_BREAKS]
)
def test_preflight_malformed_shard_manifest(
    pf: tuple[Path, Path], edit: Callable[[Dict[str, Any]], None], words: str
) -> None:
    tok, ds = pf
    _edit_json(ds / "manifest.json", edit)
    r = preflight(tok, ds, config="tiny", seq_len=8, batch_size=1)
    g = _gate(r, "shards-integrity")
    assert g.status == "fail" and g.code == "APRX-P304"
    assert g.details["error_code"] == "APRX-C221"
    assert str(ds / "manifest.json") in g.message and words in g.message
    assert _gate(r, "tokenizer-files").status == "pass"


def test_preflight_cli_malformed_inputs_exit_2(pf: tuple[Path, Path]) -> None:
    tok, ds = pf
    (tok / "merges.txt").write_bytes(b"a b\n\xff\n")
    _edit_json(ds / "manifest.json", _set("total_tokens", "many"))
    cmd = [sys.executable, "-m", "aprx.cli", "preflight", "--tokenizer", str(tok)]
    cmd += ["--dataset", str(ds), "--config", "tiny", "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    assert "Traceback" not in out
    assert f"FAIL tokenizer-files [APRX-P310] {tok / 'merges.txt'}" in out
    assert "FAIL shards-integrity [APRX-P304]" in out and "total_tokens = 'many'" in out


HF_BREAKS: List[tuple[str, str, str]] = [
    ("vocab.json", '{"a": "1"}', "vocab entry 'a' has id '1'"),
    ("added_tokens.json", '{"<x>": null}', "vocab entry '<x>' has id None"),
    ("tokenizer_config.json", '{"added_tokens_decoder": {"x": {"content": "a"}}}', "'x'"),
    ("tokenizer_config.json", '{"added_tokens_decoder": []}', "not an object"),
]


@pytest.mark.parametrize("name,text,words", HF_BREAKS, ids=[f"{b[0]}:{b[1]}" for b in HF_BREAKS])
def test_read_hf_tokenizer_malformed(tmp_path: Path, name: str, text: str, words: str) -> None:
    d = tmp_path / "init"
    d.mkdir()
    (d / "vocab.json").write_text('{"a": 0, "b": 1}')
    (d / "merges.txt").write_text("#version: 0.2\na b\n")
    (d / name).write_text(text)
    with pytest.raises(PreflightError) as ei:
        read_hf_tokenizer(d)
    assert ei.value.code == "APRX-P302"
    assert str(d / name) in str(ei.value) and words in str(ei.value), str(ei.value)


def test_read_hf_tokenizer_json_added_token_without_id(tmp_path: Path, tok_json: Path) -> None:
    d = tmp_path / "init"
    d.mkdir()
    j = fixtures.small_tokenizer_json(normalizer=None)
    j["added_tokens"] = [{"content": "<x>"}]
    (d / "tokenizer.json").write_text(json.dumps(j))
    with pytest.raises(PreflightError) as ei:
        read_hf_tokenizer(d)
    assert ei.value.code == "APRX-P302" and "added_tokens[0] has no 'id'" in str(ei.value)


# -- 4. import_tiktoken: tokens no merge reaches ------------------------------------------------


def _rank_file(path: Path, extra: List[bytes]) -> Path:
    toks = [bytes([b]) for b in range(256)] + extra
    lines = [f"{base64.b64encode(t).decode()} {i}\n" for i, t in enumerate(toks)]
    path.write_text("".join(lines), encoding="ascii")
    return path


def test_tiktoken_unreachable_tokens_warn_and_are_recorded(tmp_path: Path) -> None:
    # "abc" has no "ab" or "bc" to merge through; "th"/"the" are reachable.
    extra = [b"th", b"the", b"abc"] + [bytes([0x41 + i]) * 3 for i in range(6)]
    rank = _rank_file(tmp_path / "r.tiktoken", extra)
    with pytest.warns(AprxWarning) as rec:
        m = import_tiktoken(rank, tmp_path / "tok", "gpt2")
    assert len(rec) == 1
    msg = str(rec[0].message)
    assert str(rank) in msg and "7 of 265 tokens" in msg
    assert "rank 258 b'abc'" in msg and "rank 259 b'AAA'" in msg and "and 2 more" in msg
    assert "'gpt2' preset" in msg
    assert rec[0].filename == __file__  # points at the caller
    assert m["unreachable_tokens"] == 7 and m["merges_count"] == 2
    on_disk = json.loads((tmp_path / "tok" / "manifest.json").read_text())
    assert on_disk["unreachable_tokens"] == 7
    # What the warning says: the imported tokenizer never produces "abc".
    tok = aprx.Tokenizer.from_file(tmp_path / "tok")
    assert tok.encode("abc").tolist() == [97, 98, 99]
    assert tok.encode("the").tolist() == [257]


def test_tiktoken_unreachable_tokens_ignored_with_ignore_merges(tmp_path: Path) -> None:
    rank = _rank_file(tmp_path / "r.tiktoken", [b"abc"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = import_tiktoken(rank, tmp_path / "tok", "llama3")
    assert m["unreachable_tokens"] == 0 and m["hf"]["ignore_merges"] is True
    tok = aprx.Tokenizer.from_file(tmp_path / "tok")
    assert tok.encode_ordinary("abc").tolist() == [256]  # as tiktoken: a whole-piece lookup


def test_tiktoken_all_reachable_no_warning(tmp_path: Path) -> None:
    rank = _rank_file(tmp_path / "r.tiktoken", [b"th", b"the"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = import_tiktoken(rank, tmp_path / "tok", "cl100k")
    assert m["unreachable_tokens"] == 0 and m["merges_count"] == 2


def test_aprx_warning_is_exported() -> None:
    assert aprx.AprxWarning is AprxWarning and issubclass(AprxWarning, UserWarning)
    assert "AprxWarning" in aprx.__all__


# --- Ids and thread counts given to the Tokenizer's methods ----------------------------------


def test_decode_takes_any_uint32_view_and_any_int(tok_json: Path) -> None:
    """A strided or reversed uint32 array decodes as its copy does; an int that is no id
    (negative, past u32, numpy uint64 included) is E101; a non-int is a TypeError."""
    import numpy as np

    tok = aprx.Tokenizer.from_file(tok_json)
    ids = tok.encode("hello the world in there")
    for view in (ids[::2], ids[::-1], ids[1::3]):
        assert not view.flags.c_contiguous or len(view) < 2
        assert tok.decode(view) == tok.decode(view.copy()) == tok.decode(view.tolist())
        assert tok.decode_bytes(view) == tok.decode_bytes(view.copy())
    for bad in ([-1], [2**32], [2**40], [2**64], np.array([2**63], dtype=np.uint64)):
        with pytest.raises(aprx.EncodeError) as e:
            tok.decode(bad)
        assert e.value.code == "APRX-E101"
    with pytest.raises(TypeError):
        tok.decode([1.5])


def test_id_to_token_of_an_id_outside_the_vocabulary_is_none(tok_json: Path) -> None:
    import numpy as np

    tok = aprx.Tokenizer.from_file(tok_json)
    assert tok.id_to_token(np.int64(104)) == tok.id_to_token(104) == "h"
    for outside in (-1, 262, 2**32, 2**70):
        assert tok.id_to_token(outside) is None
    with pytest.raises(TypeError):
        tok.id_to_token(1.0)


@pytest.mark.parametrize("threads", [-1, 1025, 10**6])
def test_thread_counts_out_of_range_are_errors(tok_json: Path, threads: int) -> None:
    """A negative count, or more than 1024 threads (a typo, not a machine: starting a million
    threads brings the machine down first), is APRX-E104, with nothing started."""
    tok = aprx.Tokenizer.from_file(tok_json)
    for call in (tok.encode_batch, tok.encode_batch_flat):
        with pytest.raises(aprx.EncodeError) as e:
            call(["a the"], num_threads=threads)
        assert e.value.code == "APRX-E104" and str(threads) in str(e.value)
    assert len(tok.encode_batch(["a the"], num_threads=0)[0]) == 2  # 0: the default


def test_rayon_num_threads_out_of_range_is_an_error(tok_json: Path) -> None:
    code = (
        "import aprx\n"
        "try:\n"
        f"    aprx.Tokenizer.from_file({str(tok_json)!r}).encode_batch(['x'])\n"
        "except aprx.EncodeError as e:\n    print(e.code, e)\n"
    )
    env = {**__import__("os").environ, "RAYON_NUM_THREADS": "100000"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and r.stdout.startswith("APRX-E104"), r.stdout + r.stderr
    assert "RAYON_NUM_THREADS" in r.stdout


def test_encode_corpus_refuses_a_tokenizer_that_would_drop_bytes(tmp_path: Path) -> None:
    """A byte-level vocabulary without a token for a byte text can hold, and no unk_token:
    encoding drops that byte (as HF does, which ``encode`` follows), so encode-corpus refuses
    the tokenizer rather than write shards that lose text without a trace."""
    doc = fixtures.small_tokenizer_json(normalizer=None)
    doc["added_tokens"] = []
    z = _aprx.byte_level_str(b"z")
    del doc["model"]["vocab"][z]
    tok_file = tmp_path / "no-z.json"
    tok_file.write_text(json.dumps(doc), encoding="utf-8")
    tok = aprx.Tokenizer.from_file(tok_file)
    assert tok.decode(tok.encode("azb")) == "ab"  # dropped, as HF drops it
    src = tmp_path / "in.jsonl"
    src.write_text('{"content":"azb"}\n', encoding="utf-8")
    with pytest.raises(CorpusError) as e:
        encode_corpus(src, tok, tmp_path / "out", eos_policy="none")
    assert e.value.code == "APRX-C210" and "0x7A" in str(e.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    # The same vocabulary with an unk_token: nothing is dropped, the run goes ahead.
    doc["model"]["unk_token"] = _aprx.byte_level_str(b"?")
    tok_file.write_text(json.dumps(doc), encoding="utf-8")
    m = encode_corpus(src, aprx.Tokenizer.from_file(tok_file), tmp_path / "out2", eos_policy="none")
    assert m["total_tokens"] == 3


@pytest.mark.parametrize(
    "option",
    [
        ["--steps", "0"],
        ["--steps", "-1"],
        ["--vocab-size", "10"],
        ["--vocab-size", "99999999999"],  # the trainer would abort allocating 4.5 TB
        ["--target-val-loss", "nan"],
        ["--target-val-loss", "-1"],
    ],
)
def test_quickstart_rejects_bad_settings_before_any_work(tmp_path: Path, option: list) -> None:
    out = tmp_path / "qs"
    r = subprocess.run(
        [sys.executable, "-m", "aprx.cli", "quickstart", "--output", str(out), *option],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.startswith("aprx: error [APRX-R405]") and "Traceback" not in r.stderr
    assert option[0].lstrip("-").replace("-", "_") in r.stderr
    assert not out.exists()
