"""Preflight gates: tokenizer, shards and model must agree (no torch needed)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from aprx.errors import PreflightError
from aprx.preflight import ModelConfig, ensure_preflight, preflight
from aprx.shards import write_shards

ALPHABET = [chr(0x100 + i) for i in range(256)]  # stand-in byte-level alphabet


def make_tokenizer(
    path: Path,
    merged: list,
    *,
    added: tuple = ("<|endoftext|>",),
    unk: str | None = None,
    include_added: bool = True,
) -> dict:
    """An ``aprx tokenize import-hf``-style directory: 256 byte tokens + ``merged`` + added."""
    path.mkdir(parents=True, exist_ok=True)
    tokens = list(ALPHABET) + list(merged)
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = [f"{t[0]} {t[1:]}" for t in merged]  # toy merges: first char + rest
    added_tokens = [
        {"id": len(tokens) + k, "content": c, "special": True} for k, c in enumerate(added)
    ]
    tj = {
        "version": "1.0",
        "added_tokens": added_tokens,
        "model": {"type": "BPE", "vocab": vocab, "merges": merges, "unk_token": unk},
    }
    raw = json.dumps(tj).encode()
    (path / "tokenizer.json").write_bytes(raw)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges))
    ids = list(vocab.values()) + ([a["id"] for a in added_tokens] if include_added else [])
    manifest = {
        "schema": "aprx.tokenizer/1",
        "model_type": "BPE",
        "bpe_vocab_size": len(vocab),
        "merges_count": len(merges),
        "added_tokens": added_tokens,
        "include_added_tokens": include_added,
        "effective_vocab_size": 1 + max(ids),
        "tokenizer_sha256": hashlib.sha256(raw).hexdigest(),
    }
    (path / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def merged_tokens(n: int, flavour: str = "a") -> list:
    """``n`` distinct two-or-more-char tokens; different flavours give different orders."""
    out = []
    for i in range(n):
        a, b = ALPHABET[(i * 7 + (3 if flavour == "b" else 0)) % 256], ALPHABET[(i // 256) % 256]
        out.append(a + b + ("x" * (i // 65536)))
    return out


def make_shards(path: Path, tok_manifest: dict, ids: np.ndarray, *, doc_len=50, shard_tokens=4000):
    eos = tok_manifest["effective_vocab_size"] - 1
    docs = [list(ids[i : i + doc_len]) + [eos] for i in range(0, len(ids), doc_len)]
    return write_shards(
        path,
        docs,
        tokenizer_sha256=tok_manifest["tokenizer_sha256"],
        vocab_size=tok_manifest["effective_vocab_size"],
        eos_id=eos,
        eos_policy="after",
        shard_tokens=shard_tokens,
    )


def zipf_ids(n: int, vocab: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.zipf(1.3, size=n) - 1) % (vocab - 1)


def make_init(path: Path, cfg: ModelConfig, tokenizer_src: Path | None = None, files=None):
    """An HF checkpoint dir as far as preflight looks: config.json (+ the tokenizer files)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg.to_hf_dict()))
    if tokenizer_src is not None:
        for name in files or ["tokenizer.json"]:
            (path / name).write_bytes((tokenizer_src / name).read_bytes())
    return path


def tiny_config(vocab: int, **kw) -> ModelConfig:
    base = dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    base.update(kw)
    return ModelConfig(**base)


def write_config(path: Path, cfg: ModelConfig) -> Path:
    path.write_text(json.dumps(cfg.to_hf_dict()))
    return path


@pytest.fixture()
def setup(tmp_path):
    """A consistent tokenizer (300 + 1 added = 301 ids), shards and scratch config."""
    tok = tmp_path / "tok"
    man = make_tokenizer(tok, merged_tokens(44))
    ds = tmp_path / "ds"
    make_shards(ds, man, zipf_ids(20000, 301))
    cfg = write_config(tmp_path / "config.json", tiny_config(301))
    return tmp_path, tok, man, ds, cfg


def statuses(report):
    return {g.id: g.status for g in report.gates}


def test_consistent_inputs_pass_and_json(setup):
    tmp, tok, man, ds, cfg = setup
    r = preflight(tok, ds, config=cfg, seq_len=32, batch_size=4, val_fraction=0.1)
    st = statuses(r)
    assert r.ok, r.format_text()
    for gid in (
        "tokenizer-files",
        "model-config",
        "vocab-size",
        "shards-integrity",
        "shards-tokenizer",
        "max-token-id",
        "corpus-degenerate",
        "enough-tokens",
    ):
        assert st[gid] == "pass", (gid, r.format_text())
    assert st["tokenizer-identity"] == "skip"  # from scratch
    d = json.loads(r.to_json())
    assert d["ok"] is True and d["schema"] == "aprx.preflight/1"
    assert {g["id"] for g in d["gates"]} == set(st)
    assert all(g["code"].startswith("APRX-P3") for g in d["gates"])
    assert "301" in r.gate("vocab-size").message
    split = d["summary"]["split"]
    assert split["train_tokens"] + split["val_tokens"] == d["summary"]["dataset_tokens"]
    ensure_preflight(tok, ds, config=cfg, seq_len=32, batch_size=4, val_fraction=0.1)


def test_preflight_does_not_import_torch(setup):
    tmp, tok, man, ds, cfg = setup
    import subprocess

    code = (
        "import sys; from aprx.preflight import preflight; "
        f"r = preflight({str(tok)!r}, {str(ds)!r}, config={str(cfg)!r}, seq_len=8, batch_size=1,"
        " val_fraction=0.1); assert r.ok; assert 'torch' not in sys.modules"
    )
    env_path = [p for p in sys.path if p]
    import os

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(env_path))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_vocab_size_scratch_must_be_equal(setup):
    tmp, tok, man, ds, _ = setup
    bigger = write_config(tmp / "big.json", tiny_config(320))
    r = preflight(tok, ds, config=bigger, seq_len=32, batch_size=2, val_fraction=0.1)
    g = r.gate("vocab-size")
    assert g.status == "fail" and g.code == "APRX-P301"
    assert "301" in g.message and "320" in g.message
    assert statuses(r)["max-token-id"] == "pass"


def test_vocab_size_init_allows_spare_rows_but_not_more_ids(setup):
    tmp, tok, man, ds, _ = setup
    # Qwen2.5-style: 301 tokenizer ids for 320 embedding rows
    init = make_init(tmp / "init", tiny_config(320), tok)
    r = preflight(tok, ds, init=init, seq_len=32, batch_size=2, val_fraction=0.1)
    assert r.gate("vocab-size").status == "pass", r.format_text()
    assert "19 spare rows" in r.gate("vocab-size").message
    assert r.gate("tokenizer-identity").status == "pass"
    assert r.gate("tokens-per-parameter").status == "skip"
    assert r.ok, r.format_text()
    # a tokenizer with more ids than the model has rows fails in both modes
    small = make_init(tmp / "small", tiny_config(280), tok)
    r = preflight(tok, ds, init=small, seq_len=32, batch_size=2, val_fraction=0.1)
    assert r.gate("vocab-size").status == "fail"
    assert r.gate("max-token-id").status == "fail"  # eos id 300 >= 280 rows
    cfg = write_config(tmp / "small.json", tiny_config(280))
    r = preflight(tok, ds, config=cfg, seq_len=32, batch_size=2, val_fraction=0.1)
    assert r.gate("vocab-size").status == "fail"


def test_identity_gpt2_style_tokenizer_against_qwen_checkpoint(tmp_path):
    # "Qwen": 256 bytes + 600 merges + added; "GPT-2 style": 256 bytes + 200 other merges.
    qwen_tok = tmp_path / "qwen"
    make_tokenizer(qwen_tok, merged_tokens(600, "a"), added=("<|endoftext|>", "<|im_start|>"))
    gpt = tmp_path / "gpt"
    man = make_tokenizer(gpt, merged_tokens(200, "b"))
    ds = tmp_path / "ds"
    make_shards(ds, man, zipf_ids(20000, man["effective_vocab_size"]))
    init = make_init(tmp_path / "init", tiny_config(896), qwen_tok)
    r = preflight(gpt, ds, init=init, seq_len=32, batch_size=2, val_fraction=0.1)
    assert r.gate("vocab-size").status == "pass"  # 457 <= 896 ...
    g = r.gate("tokenizer-identity")
    assert g.status == "fail" and g.code == "APRX-P302", r.format_text()  # ... but wrong ids
    assert "disagree on" in g.message and "id 256" in g.message
    assert not r.ok
    with pytest.raises(PreflightError) as exc:
        r.raise_for_failures()
    assert exc.value.code == "APRX-P302"


def test_identity_added_tokens_and_merges(tmp_path):
    a = tmp_path / "a"
    man = make_tokenizer(a, merged_tokens(100), added=("<|endoftext|>",))
    b = tmp_path / "b"
    make_tokenizer(b, merged_tokens(100), added=("<|im_start|>",))
    ds = tmp_path / "ds"
    make_shards(ds, man, zipf_ids(8000, 357))
    init = make_init(tmp_path / "init_b", tiny_config(400), b)
    g = preflight(a, ds, init=init, seq_len=16, batch_size=2, val_fraction=0.1).gate(
        "tokenizer-identity"
    )
    assert g.status == "fail" and "<|endoftext|>" in g.message and "<|im_start|>" in g.message
    # same ids, different merges (vocab.json + merges.txt in the init dir)
    c = tmp_path / "c"
    make_tokenizer(c, merged_tokens(100))
    merges = (c / "merges.txt").read_text().splitlines()
    merges[5], merges[6] = merges[6], merges[5]
    (c / "merges.txt").write_text("\n".join(merges) + "\n")
    init_c = make_init(tmp_path / "init_c", tiny_config(400), c, ["vocab.json", "merges.txt"])
    (init_c / "added_tokens.json").write_text(json.dumps({"<|endoftext|>": 356}))
    g = preflight(a, ds, init=init_c, seq_len=16, batch_size=2, val_fraction=0.1).gate(
        "tokenizer-identity"
    )
    assert g.status == "fail" and "merges" in g.message and "rule 4" in g.message
    # checkpoint without tokenizer: a warning, not a pass
    bare = make_init(tmp_path / "bare", tiny_config(400))
    g = preflight(a, ds, init=bare, seq_len=16, batch_size=2, val_fraction=0.1).gate(
        "tokenizer-identity"
    )
    assert g.status == "warn"


def test_identity_extra_ids_warn(tmp_path):
    base = tmp_path / "base"
    make_tokenizer(base, merged_tokens(100), added=("<|endoftext|>",))
    ext = tmp_path / "ext"
    man = make_tokenizer(ext, merged_tokens(100), added=("<|endoftext|>", "<|fim|>"))
    ds = tmp_path / "ds"
    make_shards(ds, man, zipf_ids(8000, 358))
    init = make_init(tmp_path / "init", tiny_config(400), base)
    r = preflight(ext, ds, init=init, seq_len=16, batch_size=2, val_fraction=0.1)
    g = r.gate("tokenizer-identity")
    assert g.status == "warn" and "<|fim|>" in g.message
    assert r.ok


def test_shards_from_another_tokenizer(setup):
    tmp, tok, man, ds, cfg = setup
    other = dict(man, tokenizer_sha256="0" * 64)
    make_shards(tmp / "ds2", other, zipf_ids(20000, 301))
    r = preflight(tok, tmp / "ds2", config=cfg, seq_len=32, batch_size=2, val_fraction=0.1)
    g = r.gate("shards-tokenizer")
    assert g.status == "fail" and g.code == "APRX-P303"
    assert man["tokenizer_sha256"][:16] in g.message and "0000000000000000" in g.message


def test_truncated_shards(setup):
    tmp, tok, man, ds, cfg = setup
    f = ds / "shard-00001.bin"
    f.write_bytes(f.read_bytes()[:-8])
    r = preflight(tok, ds, config=cfg, seq_len=32, batch_size=2, val_fraction=0.1)
    g = r.gate("shards-integrity")
    assert g.status == "fail" and "shard-00001.bin" in g.message
    assert g.details["error_code"] == "APRX-C223"
    assert r.gate("corpus-degenerate").status == "skip"
    # digest verification catches same-size corruption
    make_shards(tmp / "ds3", man, zipf_ids(20000, 301))
    raw = bytearray((tmp / "ds3" / "shard-00000.bin").read_bytes())
    raw[0] ^= 1
    (tmp / "ds3" / "shard-00000.bin").write_bytes(bytes(raw))
    kw = dict(config=cfg, seq_len=32, batch_size=2, val_fraction=0.1)
    assert preflight(tok, tmp / "ds3", **kw).gate("shards-integrity").status == "pass"
    for verify in ("verify_digests", "verify_sha256"):  # the older name does the same
        r = preflight(tok, tmp / "ds3", **{verify: True}, **kw)
        assert r.gate("shards-integrity").status == "fail"
        assert r.gate("shards-integrity").details["error_code"] == "APRX-C227"


def test_max_token_id(setup):
    tmp, tok, man, ds, cfg = setup
    ids = zipf_ids(20000, 301)
    ids[123] = 305  # beyond the 301 rows
    make_shards(tmp / "ds2", man, ids)
    r = preflight(tok, tmp / "ds2", config=cfg, seq_len=32, batch_size=2, val_fraction=0.1)
    g = r.gate("max-token-id")
    assert g.status == "fail" and "305" in g.message and "301" in g.message
    # a manifest that lies about max_token_id is caught by the scan
    m = json.loads((tmp / "ds2" / "manifest.json").read_text())
    m["max_token_id"] = 200
    (tmp / "ds2" / "manifest.json").write_text(json.dumps(m))
    r = preflight(tok, tmp / "ds2", config=cfg, seq_len=32, batch_size=2, val_fraction=0.1)
    assert r.gate("max-token-id").status == "fail"
    assert "manifest says max_token_id 200" in r.gate("max-token-id").message


def test_degenerate_unk_corpus(tmp_path):
    tok = tmp_path / "tok"
    man = make_tokenizer(tok, merged_tokens(44), added=("<unk>", "<|endoftext|>"), unk="<unk>")
    unk_id = 300
    ids = np.full(20000, unk_id)
    ids[::10] = zipf_ids(2000, 300)  # 90% <unk>
    ds = tmp_path / "ds"
    make_shards(ds, man, ids)
    cfg = write_config(tmp_path / "c.json", tiny_config(302))
    r = preflight(tok, ds, config=cfg, seq_len=32, batch_size=2, val_fraction=0.1)
    g = r.gate("corpus-degenerate")
    assert g.status == "fail" and g.code == "APRX-P306", r.format_text()
    assert "unknown token" in g.message and "<unk>" in g.message
    assert g.details["unk_share"] > 0.8


def test_degenerate_two_ids(setup):
    tmp, tok, man, ds, cfg = setup
    ids = np.where(np.arange(20000) % 3 == 0, 5, 7)
    make_shards(tmp / "ds2", man, ids)
    r = preflight(tok, tmp / "ds2", config=cfg, seq_len=32, batch_size=2, val_fraction=0.1)
    g = r.gate("corpus-degenerate")
    assert g.status == "fail" and "degenerate" in g.message
    assert g.details["distinct_ids"] == 3  # 5, 7 and EOS


def test_enough_tokens_and_val_shard(setup):
    tmp, tok, man, ds, cfg = setup
    r = preflight(tok, ds, config=cfg, seq_len=4096, batch_size=2, val_fraction=0.1)
    g = r.gate("enough-tokens")
    assert g.status == "fail" and "4097" in g.message and "validation" in g.message
    r = preflight(tok, ds, config=cfg, seq_len=32, batch_size=2, val_shard="shard-00002")
    assert r.gate("enough-tokens").status == "pass"
    assert r.summary["split"]["mode"] == "shard"
    assert (
        r.summary["split"]["val_tokens"]
        == r.dataset.shard_token_range(2)[1] - (r.dataset.shard_token_range(2)[0])
    )
    r = preflight(tok, ds, config=cfg, seq_len=32, batch_size=2, val_shard="nope")
    assert r.gate("enough-tokens").status == "fail"
    # many passes over a small split: a warning
    r = preflight(tok, ds, config=cfg, seq_len=32, batch_size=8, steps=5000, val_fraction=0.1)
    assert r.gate("enough-tokens").status == "warn" and "passes" in r.gate("enough-tokens").message


def test_tokens_per_parameter_warns_from_scratch(setup):
    tmp, tok, man, ds, _ = setup
    big = write_config(tmp / "big.json", tiny_config(301, hidden_size=256, intermediate_size=512))
    r = preflight(tok, ds, config=big, seq_len=32, batch_size=2, val_fraction=0.1)
    g = r.gate("tokens-per-parameter")
    assert g.status == "warn" and g.code == "APRX-P308" and "compute-optimal" in g.message
    assert r.ok  # a warning does not fail the preflight


def test_all_failures_listed(setup):
    tmp, tok, man, ds, _ = setup
    cfg = write_config(tmp / "small.json", tiny_config(200))
    with pytest.raises(PreflightError) as exc:
        ensure_preflight(tok, ds, config=cfg, seq_len=9999, batch_size=2, val_fraction=0.1)
    msg = str(exc.value)
    assert exc.value.code == "APRX-P301"
    for gid in ("vocab-size", "max-token-id", "enough-tokens"):
        assert gid in msg


def test_unreadable_inputs(tmp_path, setup):
    _, tok, man, ds, cfg = setup
    r = preflight(tmp_path / "nope", ds, config="nope-preset", seq_len=8, batch_size=1)
    st = statuses(r)
    assert st["tokenizer-files"] == "fail" and st["model-config"] == "fail"
    assert st["vocab-size"] == "skip"
    json.dumps(r.to_dict())


def _aprx_dir_from_tokenizer_json(src: Path, dest: Path) -> dict:
    """What `aprx tokenize import-hf` writes, derived from a tokenizer.json (test-side)."""
    dest.mkdir(parents=True, exist_ok=True)
    raw = src.read_bytes()
    tj = json.loads(raw)
    vocab = tj["model"]["vocab"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    added = [
        {"id": a["id"], "content": a["content"], "special": a.get("special", False)}
        for a in tj.get("added_tokens", [])
    ]
    (dest / "tokenizer.json").write_bytes(raw)
    (dest / "vocab.json").write_text(json.dumps(vocab))
    (dest / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges))
    ids = list(vocab.values()) + [a["id"] for a in added]
    manifest = {
        "schema": "aprx.tokenizer/1",
        "model_type": "BPE",
        "bpe_vocab_size": len(vocab),
        "merges_count": len(merges),
        "added_tokens": added,
        "include_added_tokens": True,
        "effective_vocab_size": 1 + max(ids),
        "tokenizer_sha256": hashlib.sha256(raw).hexdigest(),
    }
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def test_real_gpt2_style_tokenizer_against_qwen_checkpoint(tmp_path):
    """The real files: 151665 Qwen2.5 ids pass against 151936 rows; the 50257-id GPT-2-style
    tokenizer (Qwen's first 50000 merges + <|endoftext|>) fits the rows but is not the
    checkpoint's tokenizer."""
    try:
        try:
            import fixtures as fx
        except ImportError:  # pragma: no cover
            from tests import fixtures as fx  # type: ignore[no-redef]
        qwen_json = fx.qwen2_tokenizer_json()
        gpt_json = fx.gpt2_style_tokenizer_json()
    except Exception as exc:  # no cached fixture and no way to build it
        pytest.skip(f"tokenizer fixtures unavailable: {exc}")
    init = make_init(tmp_path / "qwen-init", ModelConfig(**_qwen_shape()))
    (init / "tokenizer.json").write_bytes(qwen_json.read_bytes())

    qwen_man = _aprx_dir_from_tokenizer_json(qwen_json, tmp_path / "qwen-tok")
    assert qwen_man["effective_vocab_size"] == 151665
    make_shards(tmp_path / "qds", qwen_man, zipf_ids(20000, 151000))
    r = preflight(
        tmp_path / "qwen-tok",
        tmp_path / "qds",
        init=init,
        seq_len=64,
        batch_size=2,
        val_fraction=0.1,
    )
    assert (
        r.gate("vocab-size").status == "pass" and "271 spare rows" in r.gate("vocab-size").message
    )
    assert r.gate("tokenizer-identity").status == "pass", r.format_text()

    gpt_man = _aprx_dir_from_tokenizer_json(gpt_json, tmp_path / "gpt-tok")
    assert gpt_man["effective_vocab_size"] == 50257
    make_shards(tmp_path / "gds", gpt_man, zipf_ids(20000, 50000))
    r = preflight(
        tmp_path / "gpt-tok",
        tmp_path / "gds",
        init=init,
        seq_len=64,
        batch_size=2,
        val_fraction=0.1,
    )
    assert r.gate("vocab-size").status == "pass"  # 50257 <= 151936 ...
    g = r.gate("tokenizer-identity")
    assert g.status == "fail", r.format_text()  # ... but the ids mean other tokens
    assert "id 50256" in g.message and "<|endoftext|>" in g.message


def _qwen_shape() -> dict:
    from aprx.preflight import PRESETS

    return dict(PRESETS["qwen2.5-0.5b"])
