"""Malformed ``tokenizer.json`` fields, against HF ``tokenizers`` as the reference.

* A present field of the wrong type (``"special": "true"``, ``"unk_token": 5``) is a
  ``TokenizerError`` APRX-T102 naming the field's path, as HF rejects it too, never silently
  the field's default. A missing field, or JSON null, is the default.
* An added token's id has the cap vocab ids have (2,097,150): above it is APRX-T105 naming
  the token and the id, at once, instead of tables sized by the id.
"""

from __future__ import annotations

import json
import time
from typing import Any, Dict, Tuple

import fixtures
import pytest
from tokenizers import Tokenizer as HFTokenizer

import aprx

MAX_ID = 2**21 - 2
QWEN2 = fixtures.QWEN2_PATTERN


def _at(obj: Dict[str, Any], path: str) -> Tuple[Dict[str, Any], str]:
    """The parent of a dotted path such as ``added_tokens[0].special``, and its last key."""
    *keys, last = path.split(".")
    for k in keys:
        if "[" in k:
            name, idx = k[:-1].split("[")
            obj = obj[name][int(idx)]
        else:
            obj = obj[k]
    return obj, last


def _with(path: str, value: Any) -> str:
    obj = fixtures.small_tokenizer_json()
    parent, key = _at(obj, path)
    parent[key] = value
    return json.dumps(obj)


def _without(path: str) -> str:
    obj = fixtures.small_tokenizer_json()
    parent, key = _at(obj, path)
    del parent[key]
    return json.dumps(obj)


SPLIT = "pre_tokenizer.pretokenizers[0]"
BYTELEVEL = "pre_tokenizer.pretokenizers[1]"
WRONG_TYPES = [
    ("added_tokens[0].special", "true", 'must be a boolean, not "true"'),
    ("added_tokens[0].normalized", 1, "must be a boolean, not 1"),
    ("added_tokens[0].lstrip", "true", 'must be a boolean, not "true"'),
    ("added_tokens[0].rstrip", 0, "must be a boolean, not 0"),
    ("added_tokens[0].single_word", "false", 'must be a boolean, not "false"'),
    ("added_tokens[0].content", 7, "must be a string, not 7"),
    ("added_tokens[0].id", "261", 'must be a non-negative integer, not "261"'),
    ("added_tokens[0].id", 261.0, "must be a non-negative integer, not 261.0"),
    ("model.unk_token", 5, "must be a string, not 5"),
    ("model.byte_fallback", "true", 'must be a boolean, not "true"'),
    ("model.ignore_merges", "true", 'must be a boolean, not "true"'),
    ("model.fuse_unk", 1, "must be a boolean, not 1"),
    ("model.end_of_word_suffix", 1, "must be a string, not 1"),
    ("model.type", 5, "must be a string, not 5"),
    (f"{SPLIT}.invert", "true", 'must be a boolean, not "true"'),
    (f"{SPLIT}.behavior", 1, "must be a string, not 1"),
    (f"{BYTELEVEL}.use_regex", "false", 'must be a boolean, not "false"'),
    (f"{BYTELEVEL}.add_prefix_space", 0, "must be a boolean, not 0"),
]


@pytest.mark.parametrize(("path", "value", "want"), WRONG_TYPES)
def test_wrongly_typed_field_is_a_field_error(path: str, value: Any, want: str) -> None:
    js = _with(path, value)
    with pytest.raises(Exception, match="invalid type|did not match"):  # so does the reference
        HFTokenizer.from_str(js)
    with pytest.raises(aprx.TokenizerError) as e:
        aprx.Tokenizer.from_str(js)
    assert e.value.code == "APRX-T102"
    assert f"{path} {want}" in str(e.value)


def test_special_true_as_a_string_is_not_taken_as_false() -> None:
    """The reported case: before, ``"special": "true"`` loaded as a non-special token, so
    ``skip_special_tokens`` decoding kept it."""
    with pytest.raises(aprx.TokenizerError, match=r"added_tokens\[0\]\.special"):
        aprx.Tokenizer.from_str(_with("added_tokens[0].special", "true"))
    ok = aprx.Tokenizer.from_str(json.dumps(fixtures.small_tokenizer_json()))
    assert ok.decode([261], skip_special_tokens=True) == ""


OPTIONAL_IN_HF = [  # Option / #[serde(default)] fields of HF's BPE: missing and null load
    "model.unk_token",
    "model.dropout",
    "model.continuing_subword_prefix",
    "model.end_of_word_suffix",
    "model.fuse_unk",
    "model.byte_fallback",
    "model.ignore_merges",
    "model.type",
]


@pytest.mark.parametrize(
    ("path", "how"),
    [(p, how) for p in OPTIONAL_IN_HF for how in ("null", "missing")
     if (p, how) != ("model.type", "null")],  # HF: a present model type is a string
)  # fmt: skip
def test_missing_or_null_optional_fields_load_like_hf(path: str, how: str) -> None:
    js = _with(path, None) if how == "null" else _without(path)
    hf = HFTokenizer.from_str(js)
    ours = aprx.Tokenizer.from_str(js)
    text = " the in<|endoftext|>the  end"
    assert [int(i) for i in ours.encode(text)] == hf.encode(text, add_special_tokens=False).ids
    assert (
        ours.info["fingerprint"]
        == aprx.Tokenizer.from_str(json.dumps(fixtures.small_tokenizer_json())).info["fingerprint"]
    )


@pytest.mark.parametrize("tid", [MAX_ID + 1, 10**8, 2**32 - 2, 2**32 - 1, 2**40])
def test_added_token_id_above_the_cap_is_t105_at_once(tid: int) -> None:
    t0 = time.monotonic()
    with pytest.raises(aprx.TokenizerError) as e:
        aprx.Tokenizer.from_str(_with("added_tokens[0].id", tid))
    assert time.monotonic() - t0 < 5  # no table of `tid` entries
    assert e.value.code == "APRX-T105"
    msg = str(e.value)
    assert '"<|endoftext|>"' in msg and f"id {tid}" in msg and str(MAX_ID) in msg


@pytest.mark.parametrize("tid", [MAX_ID, 262, 300])
def test_added_token_ids_hf_would_renumber_are_refused(tid: int) -> None:
    """HF numbers the added tokens that are not in the vocab itself, in order from the vocab's
    size (261 here), whatever ids the file gives them: a file that says otherwise would give
    other ids than HF's, so it is refused (T105), naming the id HF gives."""
    text = _with("added_tokens[0].id", tid)
    hf = HFTokenizer.from_str(text)
    assert hf.token_to_id("<|endoftext|>") == 261
    with pytest.raises(aprx.TokenizerError) as e:
        aprx.Tokenizer.from_str(text)
    assert e.value.code == "APRX-T105" and "gives it 261" in str(e.value)
    ok = aprx.Tokenizer.from_str(_with("added_tokens[0].id", 261))
    assert [int(i) for i in ok.encode("x<|endoftext|>")] == hf.encode("x<|endoftext|>").ids


def test_a_long_wrong_value_is_shown_cut_short() -> None:
    obj = fixtures.small_tokenizer_json()
    obj["model"]["unk_token"] = list(range(10_000))
    with pytest.raises(aprx.TokenizerError) as e:
        aprx.Tokenizer.from_str(json.dumps(obj))
    assert e.value.code == "APRX-T102" and len(str(e.value)) < 200
