"""aprx against HF ``tokenizers``, token for token, on the Python standard library.

Every stdlib file goes through aprx in one ``encode_batch`` call and through HF's
``encode_batch(..., add_special_tokens=False)``; the ids must be identical. Qwen2 runs on the
whole stdlib by default; Llama-3 and the GPT-2-style file run on a large sample by default and
on the whole stdlib with ``-m slow``. Added tokens are checked in code-shaped texts (FIM, chat
markup, tool calls, partial and adjacent markers): ``encode`` against HF ``encode``, and
``encode_ordinary`` against HF with the file's ``added_tokens`` emptied.
"""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path
from typing import Any, List, Sequence, Tuple

import numpy as np
import pytest

try:
    import fixtures as fx
except ImportError:  # tests/ became a package
    from tests import fixtures as fx  # type: ignore[no-redef]

from tokenizers import Tokenizer as HFTokenizer

import aprx

VOCABS = ("qwen2", "llama3", "gpt2_style")
SAMPLE_STRIDE = 4  # Llama-3 and GPT-2-style by default: a quarter of the stdlib...
N_NON_ASCII = 25  # ...plus the files richest in non-ASCII text
CONTEXT_TOKENS = 12

# The added tokens each vocabulary is probed with, as they appear in real training text.
MARKERS = {
    "qwen2": [
        "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|fim_prefix|>", "<|fim_middle|>",
        "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_call>",
        "</tool_call>",
    ],
    "llama3": [
        "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
        "<|eot_id|>", "<|python_tag|>", "<|reserved_special_token_5|>",
        "<|reserved_special_token_245|>",
    ],
    "gpt2_style": ["<|endoftext|>"],
}  # fmt: skip


def _only_slow(request: pytest.FixtureRequest) -> None:
    if "slow" not in (request.config.option.markexpr or ""):
        pytest.skip("whole-stdlib run; select with -m slow")


def _path(name: str) -> Path:
    return getattr(fx, f"{name}_tokenizer_json")()


@functools.cache
def _ours(name: str) -> aprx.Tokenizer:
    return aprx.Tokenizer.from_file(_path(name))


@functools.cache
def _hf(name: str) -> HFTokenizer:
    return HFTokenizer.from_file(str(_path(name)))


@functools.cache
def _hf_without_added(name: str) -> HFTokenizer:
    """HF tokenizer of the same file with ``added_tokens`` emptied: every marker is text."""
    with open(_path(name), encoding="utf-8") as f:
        obj = json.load(f)
    obj["added_tokens"] = []
    return HFTokenizer.from_str(json.dumps(obj))


@functools.cache
def _sources() -> Tuple[Tuple[Path, str], ...]:
    return tuple(fx.stdlib_sources())


def _sample() -> List[Tuple[Path, str]]:
    sources = list(_sources())
    picked = sources[::SAMPLE_STRIDE]
    richest = sorted(sources, key=lambda s: sum(ord(c) > 127 for c in s[1]), reverse=True)
    chosen = {p for p, _ in picked}
    picked += [s for s in richest[:N_NON_ASCII] if s[0] not in chosen]
    return picked


def _first_diff(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def _describe(name: str, label: str, ours: List[int], theirs: List[int]) -> str:
    """Where two id lists part: token index, byte offset, line, and decoded context."""
    tok = _ours(name)
    i = _first_diff(ours, theirs)
    offset = len(tok.decode_bytes(ours[:i]))
    prefix = tok.decode_bytes(ours[:i]).decode("utf-8", "replace")
    line = prefix.count("\n") + 1
    lo = max(0, i - CONTEXT_TOKENS)

    def show(ids: List[int]) -> str:
        return repr([tok.id_to_token(x) for x in ids[lo : i + CONTEXT_TOKENS]])

    return (
        f"{label}: first difference at token {i} (byte {offset} of the normalized text, "
        f"line {line}) of {len(ours)} (aprx) / {len(theirs)} (HF) tokens\n"
        f"  context: {tok.decode(ours[lo : i + CONTEXT_TOKENS])!r}\n"
        f"  aprx: {show(ours)}\n"
        f"  HF:   {show(theirs)}"
    )


def _assert_same(
    name: str,
    labels: Sequence[str],
    texts: Sequence[str],
    ours: Sequence[Any],
    theirs: Sequence[List[int]],
) -> None:
    assert len(ours) == len(theirs) == len(texts)
    bad = [k for k, (a, b) in enumerate(zip(ours, theirs, strict=True)) if list(a) != b]
    if bad:
        k = bad[0]
        pytest.fail(
            f"{name}: {len(bad)}/{len(texts)} texts differ from HF; "
            + _describe(name, labels[k], [int(x) for x in ours[k]], theirs[k])
        )


def _check_stdlib(name: str, sources: Sequence[Tuple[Path, str]]) -> None:
    labels = [str(p) for p, _ in sources]
    texts = [t for _, t in sources]
    ours = _ours(name).encode_batch(texts)
    assert all(isinstance(a, np.ndarray) and a.dtype == np.uint32 for a in ours)
    theirs = [e.ids for e in _hf(name).encode_batch(texts, add_special_tokens=False)]
    _assert_same(name, labels, texts, ours, theirs)
    assert sum(map(len, theirs)) > len(texts)
    # The flat form is the same ids, concatenated.
    flat, offsets = _ours(name).encode_batch_flat(texts, ordinary=False)
    assert offsets.dtype == np.uint64 and offsets[0] == 0 and len(offsets) == len(texts) + 1
    assert np.array_equal(np.diff(offsets), [len(a) for a in ours])
    assert np.array_equal(flat, np.concatenate(ours))
    # Ordinary encoding differs only where a file spells an added token.
    markers = [t["content"] for t in _ours(name).info["added_tokens"]]
    plain = [k for k, t in enumerate(texts) if not any(m in t for m in markers)]
    assert len(plain) > len(texts) // 2
    ordinary = _ours(name).encode_batch([texts[k] for k in plain], ordinary=True)
    assert all(np.array_equal(ordinary[j], ours[k]) for j, k in enumerate(plain))


def test_whole_stdlib_qwen2() -> None:
    """The heart of it: every valid-UTF-8 stdlib file, Qwen2 (NFC, one digit per piece)."""
    sources = _sources()
    assert len(sources) > 1000
    _check_stdlib("qwen2", sources)


@pytest.mark.parametrize("name", ["llama3", "gpt2_style"])
def test_stdlib_sample(name: str) -> None:
    sample = _sample()
    assert len(sample) > len(_sources()) // SAMPLE_STRIDE
    _check_stdlib(name, sample)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama3", "gpt2_style"])
def test_whole_stdlib(name: str, request: pytest.FixtureRequest) -> None:
    _only_slow(request)
    _check_stdlib(name, _sources())


def _marked_texts(name: str) -> List[Tuple[str, str]]:
    """(label, text): code with added tokens at the places real data puts them, plus near
    misses (partial, nested, adjacent markers) and markers spliced into random positions."""
    m = MARKERS[name]
    first = m[0]
    code = [t for _, t in _sources()[5::97]][:12]
    out: List[Tuple[str, str]] = []
    if name == "qwen2":
        out += [
            ("fim", "<|fim_prefix|>def add(a, b):\n    <|fim_suffix|>\n    return c"
                    "<|fim_middle|>c = a + b"),
            ("chat", "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n"
                     "Write `x = 1`<|im_end|>\n<|im_start|>assistant\n"),
            ("tool", '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'),
            ("repo", "<|repo_name|>aprx\n<|file_sep|>rust/bpe.rs\nfn f() {}\n<|file_sep|>x"),
        ]  # fmt: skip
    if name == "llama3":
        out += [
            ("header", "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
                       "print(1)<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"),
            ("python_tag", "<|python_tag|>import os\nos.getcwd()<|eom_id|>"),
        ]  # fmt: skip
    out += [
        ("bare", first),
        ("twice", first * 2),
        ("spaced", f"  {first}\n\n{first} x"),
        ("partial", f"{first[:-1]} {first[1:]} {first[:-2]}{first}"),
        ("nested", f"<{first}> <|{first}|> {first[:5]}{first}{first[5:]}"),
        ("in code", f'x = "{first}"  # {first}\nif s.endswith("{first}"):\n    pass\n'),
        ("unicode", f"é{first}中文{first}\u00a0{first}😀"),
    ]
    rng = random.Random(f"markers-{name}")
    for k, text in enumerate(code):
        pieces = []
        cuts = sorted(rng.sample(range(len(text)), min(len(text), 20)))
        last = 0
        for c in cuts:
            pieces += [text[last:c], rng.choice(m)]
            last = c
        pieces.append(text[last:])
        out.append((f"stdlib[{k}]+markers", "".join(pieces)))
        cut = rng.randrange(len(text) // 2 + 1)
        fim = m[0] + text[:cut] + m[-1] + text[cut : 2 * cut] + m[len(m) // 2] + text[2 * cut :]
        out.append((f"fim stdlib[{k}]", fim))
    return out


@pytest.mark.parametrize("name", VOCABS)
def test_added_tokens_in_code(name: str) -> None:
    ours, hf = _ours(name), _hf(name)
    labels, texts = zip(*_marked_texts(name), strict=True)
    got = ours.encode_batch(list(texts))
    want = [e.ids for e in hf.encode_batch(list(texts), add_special_tokens=False)]
    _assert_same(name, labels, texts, got, want)
    single = [ours.encode(t) for t in texts]
    assert all(np.array_equal(a, b) for a, b in zip(single, got, strict=True))
    # Each marker in the text became its id.
    ids = {m: ours.token_to_id(m) for m in MARKERS[name]}
    assert all(i is not None for i in ids.values())
    for text, a in zip(texts, got, strict=True):
        for mk, i in ids.items():
            if mk in text:
                assert i in a, (mk, text[:80])
    # Decoding (all ids; special ones skipped) matches HF too.
    for t, a in zip(texts, got, strict=True):
        ids_ = [int(x) for x in a]
        assert (
            ours.decode(a)
            == hf.decode(ids_, skip_special_tokens=False)
            == (hf.normalizer.normalize_str(t) if hf.normalizer else t)
        )
        assert ours.decode(a, skip_special_tokens=True) == hf.decode(ids_, skip_special_tokens=True)


@pytest.mark.parametrize("name", VOCABS)
def test_ordinary_treats_added_tokens_as_text(name: str) -> None:
    ours, plain_hf = _ours(name), _hf_without_added(name)
    labels, texts = zip(*_marked_texts(name), strict=True)
    got = ours.encode_batch(list(texts), ordinary=True)
    want = [e.ids for e in plain_hf.encode_batch(list(texts), add_special_tokens=False)]
    _assert_same(name, labels, texts, got, want)
    assert all(np.array_equal(ours.encode_ordinary(t), a) for t, a in zip(texts, got, strict=True))
    flat, offsets = ours.encode_batch_flat(list(texts))  # ordinary by default
    assert np.array_equal(flat, np.concatenate(got))
    # No added-token id appears, except where the vocab itself holds the marker's string
    # (GPT-2 keeps <|endoftext|> in its BPE vocab, but BPE never produces it from text).
    added = {t["id"] for t in ours.info["added_tokens"]}
    assert not any(added.intersection(int(x) for x in a) for a in got)
