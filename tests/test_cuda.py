"""Training on a CUDA device: parity with transformers, bf16 autocast, resume, torch.compile,
the chunked loss's peak memory, and NCCL under torchrun (two GPUs).

Skipped where torch sees no CUDA device (CI's machine has none); on a GPU machine run
``python -m pytest tests/test_cuda.py`` (``benches/cuda_check.sh`` does, with the rest of the
GPU checks).
"""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)

import torch.nn.functional as F  # noqa: E402

from aprx.checkpoint import load_hf_checkpoint, load_state_dict_files  # noqa: E402
from aprx.model import linear_cross_entropy  # noqa: E402
from aprx.train import train  # noqa: E402

try:  # the CPU tests' tiny tokenizer, corpus, model and checkpoint builders
    from test_ddp import _flags, torchrun
    from test_model import _hf_model, _ids
    from test_train import env, read_metrics  # noqa: F401  (env is a fixture)
except ImportError:  # pragma: no cover - run from the repository root as a package
    from tests.test_ddp import _flags, torchrun  # type: ignore[no-redef]
    from tests.test_model import _hf_model, _ids  # type: ignore[no-redef]
    from tests.test_train import env, read_metrics  # type: ignore[no-redef]  # noqa: F401

CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def full_fp32_matmuls():
    """Each test starts from plain fp32 matmuls (training turns TF32 on while it runs)."""
    torch.set_float32_matmul_precision("highest")


@pytest.mark.parametrize("tie", [True, False])
def test_cuda_logits_match_transformers(tmp_path, tie):
    hf = _hf_model(tie)
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    model = load_hf_checkpoint(tmp_path / "hf", device=CUDA).eval()
    assert next(model.parameters()).device.type == "cuda"
    ids = _ids().to(CUDA)
    with torch.no_grad():
        ref = hf.to(CUDA)(ids).logits
        out = model(ids)
        assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4), (out - ref).abs().max()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            ref16, out16 = hf(ids).logits.float(), model(ids).float()
    # bf16 rounds differently in the two graphs; both stay near the fp32 logits
    assert (out16 - ref).abs().max() < 0.1
    assert (ref16 - ref).abs().max() < 0.1


def test_cuda_bf16_training_follows_the_cpu_run(env):
    tmp, base = env
    kw = dict(base, steps=30, val_interval=10)
    cpu = train(output=str(tmp / "cpu"), device="cpu", **kw)
    gpu = train(output=str(tmp / "gpu"), device="cuda", **kw)
    assert gpu["device"].startswith("cuda") and gpu["bf16_autocast"] is True
    assert cpu["bf16_autocast"] is False
    assert torch.get_float32_matmul_precision() == "highest"  # TF32 only while training
    a, b = read_metrics(tmp / "cpu" / "metrics.jsonl"), read_metrics(tmp / "gpu" / "metrics.jsonl")
    # same initial weights and the same first batch: bf16 rounding is the only difference
    assert b[0]["loss"] == pytest.approx(a[0]["loss"], rel=1e-2)
    assert [r["tokens"] for r in b] == [r["tokens"] for r in a]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in b)
    assert b[-1]["loss"] < b[0]["loss"] - 0.5  # it learns
    assert gpu["final_val_loss"] == pytest.approx(cpu["final_val_loss"], rel=0.1)
    # the checkpoint written from the GPU run is plain fp32 and loads on the CPU
    w = load_state_dict_files(tmp / "gpu" / "model")
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in w.values())
    model = load_hf_checkpoint(tmp / "gpu" / "model").eval()
    ids = _ids(vocab=model.config.vocab_size)
    with torch.no_grad():
        on_gpu = model.to(CUDA)(ids.to(CUDA)).cpu()
        on_cpu = model.cpu()(ids)
    assert torch.allclose(on_gpu, on_cpu, atol=1e-4, rtol=1e-4)


def test_cuda_resume_matches_uninterrupted(env):
    tmp, base = env
    kw = dict(base, steps=8, val_interval=2, checkpoint_interval=3, device="cuda")
    train(output=str(tmp / "full"), **kw)

    class Crash(Exception):
        pass

    def crash(rec, opt):
        if rec["step"] == 5:
            raise Crash

    with pytest.raises(Crash):
        train(output=str(tmp / "part"), on_step=crash, **kw)
    res = train(output=str(tmp / "part"), resume=True, **kw)
    assert res["resumed_from"].endswith("step-00000003")
    a = read_metrics(tmp / "full" / "metrics.jsonl")
    b = read_metrics(tmp / "part" / "metrics.jsonl")
    assert [r["step"] for r in b] == list(range(1, 9))
    assert [r["tokens"] for r in b] == [r["tokens"] for r in a]
    # CUDA kernels may reduce in another order between runs: equal to float tolerance
    for key in ("loss", "grad_norm", "val_loss"):
        for ra, rb in zip(a, b):
            if ra.get(key) is not None:
                assert rb[key] == pytest.approx(ra[key], rel=1e-3, abs=1e-4), (key, ra["step"])
    assert [r["lr"] for r in b] == [r["lr"] for r in a]  # the schedule resumes exactly


def test_cuda_compiled_layers_train_like_eager(env):
    tmp, base = env
    runs = {}
    for compile_ in (False, True):
        out = tmp / f"run-{compile_}"
        train(output=str(out), steps=6, val_interval=3, compile=compile_, device="cuda", **base)
        runs[compile_] = read_metrics(out / "metrics.jsonl")
    eager, compiled = runs[False], runs[True]
    for a, b in zip(eager, compiled, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=2e-2), a["step"]


def _peak(fn) -> tuple:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    return out, torch.cuda.max_memory_allocated() - base


def test_cuda_chunked_loss_peak_memory_at_qwen_vocab():
    """Loss and gradients of the chunked loss equal the naive ``cross_entropy(h @ W.T)`` at
    Qwen2.5-0.5B's sizes (8192 tokens, hidden 896, vocab 151936), in under a fifth of the
    naive loss's extra peak memory."""
    g = torch.Generator(device="cuda").manual_seed(0)
    n, h, v = 8192, 896, 151936
    hid = (torch.randn(n, h, device=CUDA, generator=g) * 0.5).requires_grad_()
    w = (torch.randn(v, h, device=CUDA, generator=g) * 0.02).requires_grad_()
    t = torch.randint(0, v, (n,), device=CUDA, generator=g)

    def run(chunked: bool):
        hid.grad = w.grad = None
        if chunked:
            loss = linear_cross_entropy(hid, w, t)
        else:
            loss = F.cross_entropy(hid @ w.t(), t)
        loss.backward()
        return loss.detach(), hid.grad.clone(), w.grad.clone()

    (l1, gh1, gw1), naive = _peak(lambda: run(False))
    (l2, gh2, gw2), chunked = _peak(lambda: run(True))
    assert l2.item() == pytest.approx(l1.item(), rel=1e-5)
    assert torch.allclose(gh2, gh1, rtol=1e-4, atol=1e-7)
    assert torch.allclose(gw2, gw1, rtol=1e-4, atol=1e-7)
    print(f"peak extra memory: naive {naive / 2**20:.0f} MiB, chunked {chunked / 2**20:.0f} MiB")
    assert chunked * 5 < naive


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs two GPUs")
def test_nccl_two_ranks_learn_and_resume(env):
    base, _ = env
    full = torchrun(_flags(base, base / "full", device="cuda"))
    assert full.returncode == 0, full.stderr[-4000:]
    rep = json.loads((base / "full" / "report.json").read_text())
    assert rep["world_size"] == 2 and rep["bf16_autocast"] is True
    part = base / "part"
    part.mkdir()
    import shutil

    shutil.copytree(base / "full" / "checkpoints" / "step-00000002",
                    part / "checkpoints" / "step-00000002")  # fmt: skip
    lines = (base / "full" / "metrics.jsonl").read_text().splitlines()[:2]
    (part / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    again = torchrun(_flags(base, part, device="cuda", resume=True, quiet=True))
    assert again.returncode == 0, again.stderr[-4000:]
    a, b = read_metrics(base / "full" / "metrics.jsonl"), read_metrics(part / "metrics.jsonl")
    assert [r["step"] for r in b] == [r["step"] for r in a]
    for ra, rb in zip(a, b):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-3, abs=1e-4)
