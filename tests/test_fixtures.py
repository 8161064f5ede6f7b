"""Checks for tests/fixtures.py: counts, loadability, and HF tokenizers == tiktoken."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

try:
    import fixtures as fx
except ImportError:  # tests/ became a package
    from tests import fixtures as fx  # type: ignore[no-redef]

from tokenizers import Tokenizer

SAMPLE_STRIDE = 6  # ~300 of the ~1790 stdlib files
N_NON_ASCII = 12  # plus the files richest in non-ASCII text


def _load(path: Path) -> Dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def qwen2_json() -> Dict[str, Any]:
    return _load(fx.qwen2_tokenizer_json())


@pytest.fixture(scope="module")
def llama3_json() -> Dict[str, Any]:
    return _load(fx.llama3_tokenizer_json())


@pytest.fixture(scope="module")
def gpt2_json() -> Dict[str, Any]:
    return _load(fx.gpt2_style_tokenizer_json())


@pytest.fixture(scope="module")
def qwen2_tok() -> Tokenizer:
    return Tokenizer.from_file(str(fx.qwen2_tokenizer_json()))


@pytest.fixture(scope="module")
def llama3_tok() -> Tokenizer:
    return Tokenizer.from_file(str(fx.llama3_tokenizer_json()))


@pytest.fixture(scope="module")
def sample() -> List[Tuple[Path, str]]:
    sources = fx.stdlib_sources()
    picked = sources[::SAMPLE_STRIDE]
    richest = sorted(sources, key=lambda s: sum(ord(c) > 127 for c in s[1]), reverse=True)
    picked += [s for s in richest[:N_NON_ASCII] if s not in picked]
    return picked


def _first_diff(a: List[int], b: List[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _assert_same_ids(tok: Tokenizer, enc: Any, sources: List[Tuple[Path, str]], nfc: bool) -> None:
    texts = [t for _, t in sources]
    hf = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
    tk = enc.encode_ordinary_batch([unicodedata.normalize("NFC", t) if nfc else t for t in texts])
    bad = [(p, a, b) for (p, _), a, b in zip(sources, hf, tk) if a != b]
    if bad:
        p, a, b = bad[0]
        i = _first_diff(a, b)
        pytest.fail(
            f"{len(bad)}/{len(sources)} files differ; first {p} at token {i}: "
            f"hf={[tok.id_to_token(x) for x in a[i : i + 4]]} "
            f"tiktoken={[tok.id_to_token(x) for x in b[i : i + 4]]}"
        )
    assert sum(map(len, hf)) > 0


def _check_merges_order(model: Dict[str, Any], merges: List[Tuple[str, str]]) -> None:
    vocab = model["vocab"]
    ranks = [vocab[a + b] for a, b in merges]
    assert ranks == sorted(ranks)
    assert len(set(ranks)) == len(ranks)
    assert all(vocab[a] < r and vocab[b] < r for (a, b), r in zip(merges, ranks))


def _only_slow(request: pytest.FixtureRequest) -> None:
    if "slow" not in (request.config.option.markexpr or ""):
        pytest.skip("whole-stdlib run; select with -m slow")


def test_cache_dir_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "a" / "b"
    monkeypatch.setenv("APRX_TEST_CACHE", str(target))
    assert fx.cache_dir() == target
    assert target.is_dir()
    monkeypatch.delenv("APRX_TEST_CACHE")
    assert fx.cache_dir() == Path.home() / ".cache" / "aprx-tests"


def test_find_wheel(tmp_path: Path) -> None:
    for name in [
        "llama_models-0.2.0-py3-none-any.whl",
        "llama_models-0.3.0-py3-none-any.whl",
        "dashscope-2.0.2-py3-none-any.whl",
    ]:
        (tmp_path / name).write_bytes(b"")
    found = fx._find_wheel(tmp_path, "llama-models==0.2.0")
    assert found is not None and found.name.startswith("llama_models-0.2.0-")
    assert fx._find_wheel(tmp_path, "Llama.Models") is not None
    assert fx._find_wheel(tmp_path, "dashscope==9.9") is None
    with pytest.raises(ValueError):
        fx._find_wheel(tmp_path, "dashscope>=2")


def test_wheel_member_cached() -> None:
    data = fx.wheel_member(fx.DASHSCOPE, fx.QWEN_SOURCE_MEMBER)
    assert b"PAT_STR" in data
    cached = fx.cache_dir() / "wheel-members" / fx.DASHSCOPE / fx.QWEN_SOURCE_MEMBER
    assert cached.read_bytes() == data


def test_bytes_to_unicode_roundtrip() -> None:
    table = fx.bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("a")] == "a"
    raw = bytes(range(256))
    assert fx.from_byte_level(fx.byte_level(raw)) == raw


def test_recover_merges_toy() -> None:
    ranks = {b"a": 0, b"b": 1, b"c": 2, b"ab": 3, b"bc": 4, b"abc": 5, b"cab": 6, b"ca": 7}
    merges, failed = fx.recover_merges(ranks)
    # "abc" takes the lower-ranked "ab"; "cab" (6) cannot use "ca" (7), so it is c + ab.
    assert merges == [(b"a", b"b"), (b"b", b"c"), (b"ab", b"c"), (b"c", b"ab"), (b"c", b"a")]
    assert failed == []
    # "xyz" ranks below both "xy" and "yz": it cannot be reached by merges.
    merges, failed = fx.recover_merges({b"x": 0, b"y": 1, b"z": 2, b"xyz": 3, b"xy": 4, b"yz": 5})
    assert merges == [(b"x", b"y"), (b"y", b"z")]
    assert failed == [b"xyz"]


def test_qwen2_counts(qwen2_json: Dict[str, Any]) -> None:
    model = qwen2_json["model"]
    assert len(model["vocab"]) == 151643
    assert len(model["merges"]) == 151387
    assert all(isinstance(m, list) and len(m) == 2 for m in model["merges"])
    assert model["ignore_merges"] is False
    assert qwen2_json["normalizer"] == {"type": "NFC"}
    split = qwen2_json["pre_tokenizer"]["pretokenizers"][0]
    assert split["pattern"]["Regex"] == fx.QWEN2_PATTERN == fx.qwen2_pattern()
    added = qwen2_json["added_tokens"]
    assert len(added) == 22
    assert [a["id"] for a in added] == list(range(151643, 151665))
    assert [a["content"] for a in added] == [name for name, _ in fx.QWEN2_ADDED]
    assert {a["content"] for a in added if not a["special"]} == {"<tool_call>", "</tool_call>"}
    assert not any(a["normalized"] for a in added)
    _check_merges_order(model, [tuple(m) for m in model["merges"]])


def test_qwen2_loads(qwen2_tok: Tokenizer) -> None:
    tok = qwen2_tok
    assert tok.get_vocab_size(with_added_tokens=True) == 151665
    assert tok.token_to_id("<|endoftext|>") == 151643
    assert tok.token_to_id("<|file_sep|>") == 151664
    assert tok.encode("<|im_start|>", add_special_tokens=False).ids == [151644]


def test_qwen2_nfc(qwen2_tok: Tokenizer) -> None:
    tok = qwen2_tok
    enc = fx.tiktoken_encoding_qwen2()
    decomposed = "caf" + "e\u0301 na" + "i\u0308ve"
    hf = tok.encode(decomposed, add_special_tokens=False).ids
    assert hf == enc.encode_ordinary(unicodedata.normalize("NFC", decomposed))
    assert hf != enc.encode_ordinary(decomposed)


def test_llama3_counts(llama3_json: Dict[str, Any]) -> None:
    model = llama3_json["model"]
    assert len(model["vocab"]) == 128000
    # 678 tokens of Llama-3's additions to cl100k do not recover into two parts.
    assert len(model["merges"]) == 127066
    assert model["ignore_merges"] is True
    assert llama3_json["normalizer"] is None
    added = llama3_json["added_tokens"]
    assert len(added) == 256
    assert [a["id"] for a in added] == list(range(128000, 128256))
    assert all(a["special"] and not a["normalized"] for a in added)
    names = {a["content"]: a["id"] for a in added}
    assert names["<|begin_of_text|>"] == 128000
    assert names["<|end_of_text|>"] == 128001
    assert names["<|start_header_id|>"] == 128006
    assert names["<|eot_id|>"] == 128009
    assert names["<|python_tag|>"] == 128010
    assert names["<|reserved_special_token_245|>"] == 128255
    _check_merges_order(model, [tuple(m) for m in model["merges"]])


def test_llama3_loads(llama3_tok: Tokenizer) -> None:
    tok = llama3_tok
    assert tok.get_vocab_size(with_added_tokens=True) == 128256
    assert tok.token_to_id("<|eot_id|>") == 128009
    decomposed = "e\u0301"  # no normalizer: stays decomposed
    enc = fx.tiktoken_encoding_llama3()
    assert tok.encode(decomposed, add_special_tokens=False).ids == enc.encode_ordinary(decomposed)


def test_gpt2_style_counts(gpt2_json: Dict[str, Any], qwen2_json: Dict[str, Any]) -> None:
    model = gpt2_json["model"]
    assert len(model["vocab"]) == 50257
    assert len(model["merges"]) == 50000
    assert all(isinstance(m, str) and m.count(" ") == 1 for m in model["merges"])
    assert gpt2_json["normalizer"] is None
    assert gpt2_json["pre_tokenizer"] == {
        "type": "ByteLevel",
        "add_prefix_space": False,
        "trim_offsets": True,
        "use_regex": True,
    }
    assert gpt2_json["added_tokens"] == [
        {
            "id": 50256,
            "content": "<|endoftext|>",
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": True,
            "special": True,
        }
    ]
    # Same ids as the Qwen2 rebuild for the shared part.
    qwen_vocab = qwen2_json["model"]["vocab"]
    assert all(qwen_vocab[t] == i for t, i in model["vocab"].items() if t != "<|endoftext|>")
    assert [m.split(" ") for m in model["merges"]] == qwen2_json["model"]["merges"][:50000]
    tok = Tokenizer.from_file(str(fx.gpt2_style_tokenizer_json()))
    assert tok.get_vocab_size(with_added_tokens=True) == 50257
    assert tok.token_to_id("<|endoftext|>") == 50256


def test_stdlib_files() -> None:
    files = fx.stdlib_files()
    assert len(files) > 1000
    assert files == sorted(files)
    assert not any("site-packages" in p.parts for p in files)
    texts = fx.stdlib_texts()
    assert len(texts) + len(fx.stdlib_non_utf8()) == len(files)
    assert len(fx.stdlib_non_utf8()) <= 10
    assert sum(len(t) for t in texts) > 10_000_000


def test_qwen2_matches_tiktoken(qwen2_tok: Tokenizer, sample: List[Tuple[Path, str]]) -> None:
    _assert_same_ids(qwen2_tok, fx.tiktoken_encoding_qwen2(), sample, nfc=True)


def test_llama3_matches_tiktoken(llama3_tok: Tokenizer, sample: List[Tuple[Path, str]]) -> None:
    _assert_same_ids(llama3_tok, fx.tiktoken_encoding_llama3(), sample, nfc=False)


def test_gpt2_style_matches_tiktoken(sample: List[Tuple[Path, str]]) -> None:
    tok = Tokenizer.from_file(str(fx.gpt2_style_tokenizer_json()))
    _assert_same_ids(tok, fx.tiktoken_encoding_gpt2_style(), sample, nfc=False)


def test_qwen2_decode_roundtrip(qwen2_tok: Tokenizer, sample: List[Tuple[Path, str]]) -> None:
    tok = qwen2_tok
    for _, text in sample[:: max(1, len(sample) // 20)]:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert tok.decode(ids, skip_special_tokens=False) == unicodedata.normalize("NFC", text)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["qwen2", "llama3", "gpt2_style"])
def test_whole_stdlib_matches_tiktoken(name: str, request: pytest.FixtureRequest) -> None:
    _only_slow(request)
    build = getattr(fx, f"{name}_tokenizer_json")
    enc = getattr(fx, f"tiktoken_encoding_{name}")()
    _assert_same_ids(
        Tokenizer.from_file(str(build())), enc, fx.stdlib_sources(), nfc=name == "qwen2"
    )
