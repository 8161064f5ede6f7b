"""Added tokens with HF's matching options, against HF ``tokenizers`` as the reference.

``lstrip`` takes the white space on a token's left into its match, ``rstrip`` the white space
on its right, and a ``single_word`` token matches only where no word char touches it (else
its text is encoded as text). RoBERTa-family files (CodeBERT, CodeT5) give ``<mask>``
``lstrip``. The ids must be HF's on every text, raw and normalized tokens alike, through
every encoding call, the cut-and-encode-in-parallel path of long texts included.
"""

from __future__ import annotations

import functools
import json
import random
from typing import Any, Dict, List, Tuple

import fixtures
import pytest
from tokenizers import Tokenizer as HFTokenizer

import aprx

# (content, lstrip, rstrip, single_word, normalized)
OPTIONED = [
    ("<mask>", True, False, False, False),
    ("<r>", False, True, False, False),
    ("<both>", True, True, False, False),
    ("sw", False, False, True, False),
    ("<sw_l>", True, False, True, False),
    ("é!", True, True, False, True),  # normalized: matched in NFC text by its NFC content
    ("ok", False, True, True, True),
]


# Tokens of white space, which a previous token's lstrip or rstrip can take in whole or part.
SPACES = [
    ("\n", True, True, True, False),
    (" ", True, True, False, True),
    ("\n\t", True, True, False, False),
    ("  ", True, False, True, False),
    ("<r>", False, True, False, False),
]


@functools.cache
def _json(options: Tuple[Tuple[str, bool, bool, bool, bool], ...] = tuple(OPTIONED)) -> str:
    obj: Dict[str, Any] = json.loads(fixtures.qwen2_tokenizer_json().read_text("utf-8"))
    n = 1 + max(max(obj["model"]["vocab"].values()), max(t["id"] for t in obj["added_tokens"]))
    vocab = obj["model"]["vocab"]
    for content, lstrip, rstrip, single_word, normalized in options:
        # A token whose content is a vocab entry keeps its id (as HF gives it); the others
        # follow the largest.
        tid = vocab.get(content)
        if tid is None:
            tid, n = n, n + 1
        obj["added_tokens"].append(
            {"id": tid, "content": content, "single_word": single_word, "lstrip": lstrip,
             "rstrip": rstrip, "normalized": normalized, "special": not normalized}
        )  # fmt: skip
    return json.dumps(obj)


@functools.cache
def _pair() -> tuple[aprx.Tokenizer, HFTokenizer]:
    return aprx.Tokenizer.from_str(_json()), HFTokenizer.from_str(_json())


FIXED = [
    "I saw a <mask> 😺",
    "a<mask>b  <mask>\n\n<mask>",
    " \t <r> \n x <r>",
    "<r>   <both>  \u3000 <both>\u2028y",
    "sw swx xsw _sw sw_ (sw) sw\u200d é sw",
    "<sw_l> x<sw_l> <sw_l>y   <sw_l>",
    "e\u0301! x  e\u0301!  é!  é!é!",
    "ok okay ok! ok\n\nok  is ok",
    "<mask><mask>  <r><r>  <both><mask>",
    "  <|endoftext|>  <mask> <|im_start|>sw<|im_end|>",
    "",
    "   ",
]


def _texts() -> List[str]:
    rng = random.Random(5)
    parts = [c for c, *_ in OPTIONED] + [
        " ", "  ", "\n", "\t", "\r\n", "\u00a0", "\u3000", "x", "word", "_", "1", "é",
        "e\u0301", "!", "<|endoftext|>", "\u200c",
    ]  # fmt: skip
    return FIXED + ["".join(rng.choices(parts, k=rng.randint(1, 24))) for _ in range(400)]


def test_options_are_read_and_reported() -> None:
    ours, _ = _pair()
    got = {t["content"]: t for t in ours.info["added_tokens"]}
    for content, lstrip, rstrip, single_word, normalized in OPTIONED:
        t = got[content]
        assert (t["lstrip"], t["rstrip"], t["single_word"], t["normalized"]) == (
            lstrip,
            rstrip,
            single_word,
            normalized,
        )


def test_ids_match_hf_with_added_token_options() -> None:
    ours, hf = _pair()
    texts = _texts()
    want = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]

    def flat(ts: List[str]) -> List[Any]:
        ids, ends = ours.encode_batch_flat(ts, ordinary=False, num_threads=2)
        return [ids[a:b] for a, b in zip(ends[:-1], ends[1:])]

    for call in (
        lambda ts: [ours.encode(t) for t in ts],
        ours.encode_batch,
        lambda ts: ours.encode_batch(ts, num_threads=2),
        flat,
    ):
        got = [[int(i) for i in ids] for ids in call(texts)]
        bad = [t for t, a, b in zip(texts, got, want, strict=True) if a != b]
        assert not bad, f"{len(bad)} texts differ, first {bad[:3]!r}"


def test_ordinary_encoding_ignores_the_options() -> None:
    """``encode_ordinary`` treats added tokens' text as text, whatever their options."""
    ours, _ = _pair()
    plain = json.loads(_json())
    plain["added_tokens"] = []
    hf_plain = HFTokenizer.from_str(json.dumps(plain))
    for t in FIXED:
        assert [int(i) for i in ours.encode_ordinary(t)] == hf_plain.encode(t).ids


def test_long_texts_are_not_cut_where_white_space_is_taken() -> None:
    """Long texts are cut at line breaks and their parts encoded in parallel; a token that
    takes white space would take less of it at a cut, so such a tokenizer is not cut."""
    ours, hf = _pair()
    line = "def f(x):\n    return x  <mask>\n<mask>y\n<r>\n    <both>\n<both>z\nsw\n"
    text = line * 20_000  # about 1 MB: above the size encode_batch splits on 2 threads
    want = hf.encode(text, add_special_tokens=False).ids
    assert [int(i) for i in ours.encode_batch([text], num_threads=2)[0]] == want
    assert [int(i) for i in ours.encode(text)] == want


def test_options_change_the_fingerprint_and_only_then() -> None:
    ours, _ = _pair()
    obj = json.loads(_json())
    for t in obj["added_tokens"]:
        t["lstrip"] = t["rstrip"] = t["single_word"] = False
    plain = aprx.Tokenizer.from_str(json.dumps(obj))
    assert plain.fingerprint != ours.fingerprint
    # Without options, the fingerprint is the one a file without those fields has...
    for t in obj["added_tokens"]:
        del t["lstrip"], t["rstrip"], t["single_word"]
    assert aprx.Tokenizer.from_str(json.dumps(obj)).fingerprint == plain.fingerprint
    # ...and the one versions before the options computed (shards they wrote record it).
    qwen2 = aprx.Tokenizer.from_file(fixtures.qwen2_tokenizer_json())
    assert qwen2.fingerprint == "f5f5951a4ecc1ca35b82d5ec9024480b0e62e104a0883c33ee9e7e8e21f65192"


def test_options_survive_the_import(tmp_path: Any) -> None:
    """An imported directory keeps the options: same fingerprint, same ids."""
    from aprx.importer import import_hf

    ours, _ = _pair()
    src = tmp_path / "tokenizer.json"
    src.write_text(_json(), encoding="utf-8")
    import_hf(src, tmp_path / "tok", include_added_tokens=True)
    imported = aprx.Tokenizer.from_file(tmp_path / "tok")
    assert imported.fingerprint == ours.fingerprint
    texts = _texts()
    assert [list(a) for a in imported.encode_batch(texts)] == [
        list(b) for b in ours.encode_batch(texts)
    ]


@pytest.mark.parametrize(
    "text",
    [
        "1\t  !\n\tx<!\n\n",
        "\u3000   ",
        "xxb\t\n\t\n\t\u00e9",
        "a  b    c \n\n\n",
        "<r> y <r>\n\tz",
        " \n x",
        "<r>\n\n x",
    ],
)
def test_tokens_inside_white_space_another_took(text: str) -> None:
    """A token matched inside white space that an earlier token's lstrip or rstrip took is
    no token where nothing of it is left (HF drops the empty split). (Where its split would
    end before it starts, HF panics: "AddedVocabulary bad split"; aprx drops it too.)"""
    js = _json(tuple(SPACES))
    want = HFTokenizer.from_str(js).encode(text, add_special_tokens=False).ids
    assert [int(i) for i in aprx.Tokenizer.from_str(js).encode(text)] == want
