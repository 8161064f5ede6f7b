"""``aprx pretrain`` under torchrun: 2 CPU ranks (gloo), exact resume, world-size guard, NaN."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

import aprx  # noqa: E402
from aprx.errors import TrainingError  # noqa: E402
from aprx.shards import TokenView  # noqa: E402
from aprx.train import WindowSampler, train  # noqa: E402

try:  # the training tests' tiny tokenizer, corpus and model
    from test_train import make_corpus, make_tokenizer, model_config, read_metrics
except ImportError:  # pragma: no cover - run from the repository root as a package
    from tests.test_train import (  # type: ignore[no-redef]
        make_corpus,
        make_tokenizer,
        model_config,
        read_metrics,
    )

WORLD = 2


# -- launching ------------------------------------------------------------------------------

RUN = dict(steps=6, checkpoint_interval=2, keep_checkpoints=3, val_interval=2)


def _flags(base: Path, output: Path, **over) -> list:
    kw = dict(
        tokenizer=base / "tok",
        dataset=base / "ds",
        config=base / "config.json",
        seq_len=16,
        batch_size=4,
        grad_accum=2,
        lr=3e-3,
        warmup=2,
        val_fraction=0.1,
        val_batches=4,
        seed=1,
        log_interval=1,
        output=output,
        **RUN,
    )
    kw.update(over)
    args = []
    for k, v in kw.items():
        flag = "--" + k.replace("_", "-")
        if v is True:
            args.append(flag)
        elif v is not None and v is not False:
            args += [flag, str(v)]
    return args


def torchrun(args: list, nproc: int = WORLD) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(aprx.__file__).resolve().parents[1]), env.get("PYTHONPATH", "")]
    )
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += ["--nproc_per_node", str(nproc), "-m", "aprx.cli", "pretrain", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """One uninterrupted 2-rank run (6 steps, checkpoints at 2, 4 and 6)."""
    base = tmp_path_factory.mktemp("ddp")
    man = make_tokenizer(base / "tok")
    make_corpus(base / "ds", man)
    model_config(base / "config.json")
    proc = torchrun(_flags(base, base / "full"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return base, proc


# -- tests ----------------------------------------------------------------------------------


def test_ddp_run_writes_once_and_learns(ddp_run):
    base, proc = ddp_run
    out = base / "full"
    assert proc.stdout.count("verdict:") == 1  # rank 1 prints nothing
    assert proc.stderr.count("step 6/6") == 1 and "2 ranks, DDP over gloo" in proc.stderr
    m = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in m] == [1, 2, 3, 4, 5, 6]  # one writer
    assert [r["step"] for r in m if "val_loss" in r] == [2, 4, 6]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in m)
    assert m[-1]["loss"] < m[0]["loss"] and m[-1]["val_loss"] < m[1]["val_loss"]
    assert m[-1]["tokens"] == 6 * 4 * 2 * 16 * WORLD  # tokens count every rank
    rep = json.loads((out / "report.json").read_text())
    assert rep["world_size"] == WORLD and rep["final_val_loss"] == m[-1]["val_loss"]
    assert (out / "loss.png").is_file()
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "checkpoints",
        "loss.png",
        "metrics.jsonl",
        "model",
        "preflight.json",
        "report.json",
    ]
    from aprx.checkpoint import load_hf_checkpoint, load_training_state

    model = load_hf_checkpoint(out / "model")
    ids = torch.arange(17).unsqueeze(0)
    with torch.no_grad():
        assert math.isfinite(float(model.loss(ids[:, :-1], ids[:, 1:])))
    tensors, info = load_training_state(out / "checkpoints" / "step-00000004")
    assert info["world_size"] == WORLD and len(info["ranks"]) == WORLD
    s0, s1 = (r["sampler"] for r in info["ranks"])
    assert s0["rng"] != s1["rng"]  # each rank draws its own windows
    assert {"rank0/rng/torch_cpu", "rank1/rng/torch_cpu"} <= set(tensors)


def test_ddp_resume_is_exact(ddp_run):
    base, _ = ddp_run
    full, part = base / "full", base / "part"
    # the state of a run killed right after its step-2 checkpoint: drop what came later
    shutil.copytree(full, part)
    for name in ("step-00000004", "step-00000006"):
        shutil.rmtree(part / "checkpoints" / name)
    shutil.rmtree(part / "model")
    (part / "report.json").unlink()
    proc = torchrun(_flags(base, part, resume=True, quiet=True))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "step-00000002" in json.loads((part / "report.json").read_text())["resumed_from"]
    a, b = read_metrics(full / "metrics.jsonl"), read_metrics(part / "metrics.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "lr", "grad_norm", "val_loss", "tokens"):
        assert [r.get(key) for r in a] == [r.get(key) for r in b], key  # exactly equal
    from aprx.checkpoint import load_state_dict_files

    wa, wb = load_state_dict_files(full / "model"), load_state_dict_files(part / "model")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_with_another_world_size_is_refused(ddp_run, monkeypatch):
    base, _ = ddp_run
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    target = base / "single"
    shutil.copytree(base / "full", target)
    kw = dict(
        tokenizer=str(base / "tok"),
        dataset=str(base / "ds"),
        config=str(base / "config.json"),
        seq_len=16,
        batch_size=4,
        grad_accum=2,
        lr=3e-3,
        warmup=2,
        val_fraction=0.1,
        val_batches=4,
        seed=1,
        quiet=True,
        **RUN,
    )
    with pytest.raises(TrainingError) as exc:
        train(output=str(target), resume=True, **kw)
    assert exc.value.code == "APRX-R406"
    assert "world size 2" in str(exc.value) and "world size 1" in str(exc.value)


def test_ddp_nan_stops_every_rank(ddp_run):
    base, _ = ddp_run
    out = base / "nan"
    proc = torchrun(_flags(base, out, lr=1e30, grad_clip=0.0, warmup=0, steps=3, quiet=True))
    assert proc.returncode != 0
    assert "APRX-R401" in proc.stderr and "[rank 1]" in proc.stderr  # both ranks stopped
    rep = json.loads((out / "report.json").read_text())
    assert rep["verdict"] == "fail" and "non-finite" in rep["error"]


def test_sampler_shards_by_rank():
    view = TokenView([np.arange(100, dtype=np.uint32)])
    plain = WindowSampler(view, seq_len=9, batch_size=3, seed=5, mode="random")
    one = WindowSampler(view, seq_len=9, batch_size=3, seed=5, mode="random", world_size=1)
    assert torch.equal(plain.next_batch(), one.next_batch())  # world 1 = the plain sampler
    r0, r1 = (
        WindowSampler(view, seq_len=9, batch_size=3, seed=5, mode="random", rank=r, world_size=2)
        for r in (0, 1)
    )
    assert not torch.equal(r0.next_batch(), r1.next_batch())
    q0, q1 = (WindowSampler(view, 9, 3, 0, "sequential", rank=r, world_size=2) for r in (0, 1))
    assert q0.next_batch()[:, 0].tolist() == [0, 18, 36]
    assert q1.next_batch()[:, 0].tolist() == [9, 27, 45]
    assert q0.next_batch()[:, 0].tolist() == [54, 72, 90]  # 90 + 10 = 100 fits
    assert q1.next_batch()[:, 0].tolist() == [63, 81, 9] and q1.epoch == 1  # wraps to its own


# -- FSDP (--fsdp) --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fsdp_run(ddp_run):
    """One uninterrupted 2-rank FSDP run (same settings as ``ddp_run``)."""
    base, _ = ddp_run
    proc = torchrun(_flags(base, base / "fsdp", fsdp=True))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return base, proc


def test_fsdp_run_saves_full_hf_checkpoints(fsdp_run):
    base, proc = fsdp_run
    out = base / "fsdp"
    assert proc.stdout.count("verdict:") == 1 and "2 ranks, FSDP over gloo" in proc.stderr
    m = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in m] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in m)
    assert m[-1]["loss"] < m[0]["loss"]
    # the same math as DDP (averaged gradients, norm over all shards), up to summation order
    d = read_metrics(base / "full" / "metrics.jsonl")
    for key in ("loss", "grad_norm", "val_loss"):
        got = [r[key] for r in m if key in r]
        assert got == pytest.approx([r[key] for r in d if key in r], rel=1e-4), key
    from aprx.checkpoint import load_hf_checkpoint, load_state_dict_files, load_training_state

    # same HF layout and optimizer names as a DDP run, with full (unsharded) tensors
    ddp_w = load_state_dict_files(base / "full" / "model")
    w = load_state_dict_files(out / "model")
    assert w.keys() == ddp_w.keys()
    assert all(w[k].shape == ddp_w[k].shape for k in w)
    t_ddp, _ = load_training_state(base / "full" / "checkpoints" / "step-00000004")
    t, info = load_training_state(out / "checkpoints" / "step-00000004")
    assert t.keys() == t_ddp.keys() and info["world_size"] == WORLD
    assert all(t[k].shape == t_ddp[k].shape for k in t)
    model = load_hf_checkpoint(out / "model")
    ids = torch.arange(17).unsqueeze(0)
    with torch.no_grad():
        assert math.isfinite(float(model.loss(ids[:, :-1], ids[:, 1:])))
    # the final model is what the run validated: val_loss recomputed in one process
    from aprx.preflight import preflight

    rep = preflight(
        base / "tok",
        base / "ds",
        config=str(base / "config.json"),
        seq_len=16,
        batch_size=4,
        grad_accum=2,
        steps=6,
        val_fraction=0.1,
    )
    from aprx.train import evaluate

    val = evaluate(model, rep.split.val, 16, 4, 4, torch.device("cpu"))
    assert val == pytest.approx(m[-1]["val_loss"], rel=1e-5)


def test_fsdp_resume_is_exact(fsdp_run):
    base, _ = fsdp_run
    full, part = base / "fsdp", base / "fsdp_part"
    shutil.copytree(full, part)
    for name in ("step-00000004", "step-00000006"):
        shutil.rmtree(part / "checkpoints" / name)
    shutil.rmtree(part / "model")
    (part / "report.json").unlink()
    proc = torchrun(_flags(base, part, resume=True, quiet=True, fsdp=True))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "step-00000002" in json.loads((part / "report.json").read_text())["resumed_from"]
    a, b = read_metrics(full / "metrics.jsonl"), read_metrics(part / "metrics.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "lr", "grad_norm", "val_loss", "tokens"):
        assert [r.get(key) for r in a] == [r.get(key) for r in b], key  # exactly equal
    from aprx.checkpoint import load_state_dict_files

    wa, wb = load_state_dict_files(full / "model"), load_state_dict_files(part / "model")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
