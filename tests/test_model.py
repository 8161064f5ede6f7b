"""The Qwen2 decoder: parity with transformers, HF checkpoint I/O, chunked cross-entropy."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

import torch.nn.functional as F  # noqa: E402

from aprx.checkpoint import (  # noqa: E402
    load_hf_checkpoint,
    load_state_dict_files,
    save_hf_checkpoint,
)
from aprx.errors import AprxIOError, PreflightError, TrainingError  # noqa: E402
from aprx.model import (  # noqa: E402
    CausalLM,
    ModelConfig,
    build_model,
    linear_cross_entropy,
    preset_config,
    resolve_model_config,
)

TINY_HF = dict(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rope_theta=1000.0,
    rms_norm_eps=1e-6,
)


def _hf_model(tie: bool, seed: int = 0):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = transformers.Qwen2Config(**TINY_HF, tie_word_embeddings=tie)
    model = transformers.Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # HF zero-inits biases: make them non-trivial to test them
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def _ids(batch=2, seq=17, vocab=97, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, seq), generator=g)


# -- chunked cross-entropy ------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_linear_cross_entropy_matches_naive(chunk):
    g = torch.Generator().manual_seed(0)
    n, h, v = 37, 16, 151
    hid = torch.randn(n, h, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(v, h, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, v, (n,), generator=g)
    t[3] = -100
    t[10] = -100
    loss = linear_cross_entropy(hid, w, t, chunk_size=chunk)
    (loss * 2.5).backward()
    gh, gw = hid.grad.clone(), w.grad.clone()
    hid.grad = w.grad = None
    ref = F.cross_entropy(hid @ w.t(), t, ignore_index=-100)
    (ref * 2.5).backward()
    assert torch.allclose(loss, ref, rtol=1e-12, atol=1e-12)
    assert torch.allclose(gh, hid.grad, rtol=1e-10, atol=1e-12)
    assert torch.allclose(gw, w.grad, rtol=1e-10, atol=1e-12)


def test_linear_cross_entropy_fp32_and_no_grad():
    g = torch.Generator().manual_seed(1)
    hid = torch.randn(2, 9, 8, generator=g)
    w = torch.randn(50, 8, generator=g)
    t = torch.randint(0, 50, (2, 9), generator=g)
    with torch.no_grad():
        loss = linear_cross_entropy(hid, w, t, chunk_size=4)
    ref = F.cross_entropy((hid @ w.t()).reshape(-1, 50), t.reshape(-1))
    assert torch.allclose(loss, ref, atol=1e-5)


def test_model_loss_equals_cross_entropy_of_logits():
    cfg = preset_config("tiny")
    model = build_model(cfg, seed=3)
    model.loss_chunk = 5
    ids = _ids(vocab=cfg.vocab_size, seq=12)
    x, y = ids[:, :-1], ids[:, 1:]
    loss = model.loss(x, y)
    ref = F.cross_entropy(model(x).reshape(-1, cfg.vocab_size), y.reshape(-1))
    assert torch.allclose(loss, ref, atol=1e-5)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    ref.backward()
    for n, p in model.named_parameters():
        assert torch.allclose(grads[n], p.grad, atol=1e-6), n


def test_gradient_checkpointing_same_grads():
    cfg = preset_config("tiny")
    model = build_model(cfg, seed=4)
    ids = _ids(vocab=cfg.vocab_size, seq=10)
    model.loss(ids[:, :-1], ids[:, 1:]).backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.model.gradient_checkpointing = True
    model.loss(ids[:, :-1], ids[:, 1:]).backward()
    for n, p in model.named_parameters():
        assert torch.allclose(ref[n], p.grad, atol=1e-6), n


def test_seeded_init_is_deterministic_and_tied():
    cfg = preset_config("tiny")
    a, b = build_model(cfg, seed=7), build_model(cfg, seed=7)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(p, q), n
    assert a.lm_head.weight is a.model.embed_tokens.weight
    assert a.num_parameters() == cfg.num_parameters()
    untied = cfg.replace(tie_word_embeddings=False)
    assert build_model(untied).num_parameters() == untied.num_parameters()


# -- config and presets ---------------------------------------------------------------------


def test_presets_parameter_counts():
    qwen = preset_config("qwen2.5-0.5b")
    assert qwen.num_parameters() == 494_032_768  # Qwen2.5-0.5B's published count
    assert qwen.head_dim == 64 and qwen.rope_theta == 1e6 and qwen.tie_word_embeddings
    scratch = preset_config("scratch-370m")
    assert 360e6 < scratch.num_parameters() < 380e6
    with pytest.raises(PreflightError) as exc:
        preset_config("nope")
    assert exc.value.code == "APRX-P309"


def test_config_roundtrip_and_validation(tmp_path):
    cfg = preset_config("qwen2.5-0.5b")
    d = cfg.to_hf_dict()
    assert d["architectures"] == ["Qwen2ForCausalLM"] and d["model_type"] == "qwen2"
    assert ModelConfig.from_hf_dict(d) == cfg
    # transformers-5 style: theta only inside rope_parameters
    d2 = dict(d)
    del d2["rope_theta"]
    assert ModelConfig.from_hf_dict(d2).rope_theta == 1e6
    (tmp_path / "config.json").write_text(json.dumps(d))
    assert resolve_model_config(config=tmp_path / "config.json") == cfg
    assert resolve_model_config(init=tmp_path) == cfg
    assert resolve_model_config(config="tiny") == preset_config("tiny")
    with pytest.raises(PreflightError):
        resolve_model_config()
    with pytest.raises(PreflightError):
        ModelConfig.from_hf_dict(dict(d, hidden_size=900))  # not divisible by 14 heads
    with pytest.raises(PreflightError):
        ModelConfig.from_hf_dict(dict(d, model_type="llama"))


# -- transformers parity and HF checkpoints -------------------------------------------------


@pytest.mark.parametrize("tie", [True, False])
def test_load_transformers_checkpoint_logits_match(tmp_path, tie):
    hf = _hf_model(tie)
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    model = load_hf_checkpoint(tmp_path / "hf").eval()
    assert model.config.tie_word_embeddings == tie
    assert model.config.rope_theta == 1000.0
    ids = _ids()
    with torch.no_grad():
        ref = hf(ids).logits
        out = model(ids)
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5), (out - ref).abs().max()


@pytest.mark.parametrize("tie", [True, False])
def test_saved_checkpoint_loads_in_transformers(tmp_path, tie):
    transformers = pytest.importorskip("transformers")
    cfg = ModelConfig(**TINY_HF, tie_word_embeddings=tie)
    model = build_model(cfg, seed=11).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    out_dir = save_hf_checkpoint(model, tmp_path / "ckpt")
    files = sorted(p.name for p in out_dir.iterdir())
    assert files == ["config.json", "model.safetensors"]
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp leftovers
    keys = set(load_state_dict_files(out_dir))
    assert ("lm_head.weight" in keys) == (not tie)
    assert "model.layers.1.self_attn.q_proj.bias" in keys
    hf = transformers.Qwen2ForCausalLM.from_pretrained(out_dir).eval()
    assert hf.config.tie_word_embeddings == tie
    ids = _ids()
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, model(ids), atol=1e-5, rtol=1e-5)
    # and back into aprx, bit-identical
    again = load_hf_checkpoint(out_dir)
    for (n, p), (_, q) in zip(model.named_parameters(), again.named_parameters(), strict=True):
        assert torch.equal(p, q), n


def test_sharded_checkpoint(tmp_path):
    hf = _hf_model(False, seed=5)
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True, max_shard_size="20KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    model = load_hf_checkpoint(tmp_path / "hf").eval()
    ids = _ids(seed=9)
    with torch.no_grad():
        assert torch.allclose(model(ids), hf(ids).logits, atol=1e-5, rtol=1e-5)


def test_checkpoint_errors(tmp_path):
    cfg = ModelConfig(**TINY_HF)
    d = save_hf_checkpoint(build_model(cfg, seed=0), tmp_path / "a")
    cfg_json = json.loads((d / "config.json").read_text())
    cfg_json["intermediate_size"] = 64
    (d / "config.json").write_text(json.dumps(cfg_json))
    with pytest.raises(TrainingError) as exc:
        load_hf_checkpoint(d)
    assert exc.value.code == "APRX-R431" and "mlp" in str(exc.value)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps(cfg.to_hf_dict()))
    with pytest.raises(AprxIOError) as exc2:
        load_hf_checkpoint(tmp_path / "empty")
    assert exc2.value.code == "APRX-R430"


def test_resave_replaces_atomically(tmp_path):
    cfg = ModelConfig(**TINY_HF)
    a, b = build_model(cfg, seed=1), build_model(cfg, seed=2)
    save_hf_checkpoint(a, tmp_path / "c")
    save_hf_checkpoint(b, tmp_path / "c")
    loaded = load_hf_checkpoint(tmp_path / "c")
    assert torch.equal(loaded.model.embed_tokens.weight, b.model.embed_tokens.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_causal_lm_is_causal():
    model = build_model(preset_config("tiny"), seed=0).eval()
    ids = _ids(vocab=512, seq=10)
    ids2 = ids.clone()
    ids2[:, 6:] = (ids2[:, 6:] + 1) % 512
    with torch.no_grad():
        a, b = model(ids), model(ids2)
    assert torch.allclose(a[:, :6], b[:, :6], atol=1e-6)
    assert not torch.allclose(a[:, 6:], b[:, 6:])
    assert isinstance(model, CausalLM)


def test_default_loss_chunk_per_device():
    from aprx.model import default_loss_chunk

    v = 151936  # 256 MiB of fp32 logits per chunk on the CPU, 1 GiB on CUDA
    assert default_loss_chunk(v) == default_loss_chunk(v, device=torch.device("cpu")) == 441
    assert default_loss_chunk(v, device=torch.device("cuda", 0)) == 1766
    assert default_loss_chunk(10**9) == 16  # never below 16 tokens
