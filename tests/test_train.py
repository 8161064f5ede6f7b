"""The training loop: schedule, data split, checkpoints, exact resume, report, CLI."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from aprx.errors import PreflightError, TrainingError  # noqa: E402
from aprx.shards import ShardDataset, TokenView, split_dataset, write_shards  # noqa: E402
from aprx.train import WindowSampler, lr_at, train  # noqa: E402

VOCAB = 128


def make_tokenizer(path: Path, n_ids: int = VOCAB) -> dict:
    """A minimal ``aprx tokenize import-hf``-style directory with ``n_ids`` ids (last = EOS)."""
    path.mkdir(parents=True, exist_ok=True)
    vocab = {f"t{i}": i for i in range(n_ids - 1)}
    added = [{"id": n_ids - 1, "content": "<|endoftext|>", "special": True}]
    raw = json.dumps({"model": {"type": "BPE", "vocab": vocab, "merges": []}}).encode()
    (path / "tokenizer.json").write_bytes(raw)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    man = {
        "schema": "aprx.tokenizer/1",
        "model_type": "BPE",
        "bpe_vocab_size": n_ids - 1,
        "merges_count": 0,
        "added_tokens": added,
        "include_added_tokens": True,
        "effective_vocab_size": n_ids,
        "tokenizer_sha256": hashlib.sha256(raw).hexdigest(),
    }
    (path / "manifest.json").write_text(json.dumps(man))
    return man


def make_corpus(path: Path, man: dict, n_docs: int = 120, seed: int = 0, shard_tokens=2000):
    """Learnable documents: runs of an arithmetic pattern with noise, EOS after each."""
    rng = np.random.default_rng(seed)
    eos = man["effective_vocab_size"] - 1
    docs = []
    for _ in range(n_docs):
        start, stride = int(rng.integers(0, eos)), int(rng.integers(1, 4))
        n = int(rng.integers(20, 60))
        doc = [(start + stride * k) % eos for k in range(n)]
        docs.append(doc + [eos])
    write_shards(
        path,
        docs,
        tokenizer_sha256=man["tokenizer_sha256"],
        vocab_size=man["effective_vocab_size"],
        eos_id=eos,
        eos_policy="after",
        shard_tokens=shard_tokens,
    )
    return docs


def model_config(path: Path) -> Path:
    cfg = {
        "model_type": "qwen2",
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
    }
    path.write_text(json.dumps(cfg))
    return path


@pytest.fixture()
def env(tmp_path):
    man = make_tokenizer(tmp_path / "tok")
    make_corpus(tmp_path / "ds", man)
    cfg = model_config(tmp_path / "config.json")
    base = dict(
        tokenizer=str(tmp_path / "tok"),
        dataset=str(tmp_path / "ds"),
        config=str(cfg),
        seq_len=16,
        batch_size=4,
        grad_accum=2,
        lr=3e-3,
        warmup=2,
        val_fraction=0.1,
        val_batches=4,
        quiet=True,
        seed=1,
    )
    return tmp_path, base


def read_metrics(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- schedule and sampling ------------------------------------------------------------------


def test_lr_schedule_values():
    kw = dict(lr=1e-3, warmup=10, total=110, min_lr_ratio=0.1)
    assert lr_at(0, **kw) == pytest.approx(1e-4)
    assert lr_at(4, **kw) == pytest.approx(5e-4)
    assert lr_at(9, **kw) == pytest.approx(1e-3)
    assert lr_at(10, **kw) == pytest.approx(1e-3)
    mid = 10 + 99 / 2
    assert lr_at(int(mid), **kw) > lr_at(int(mid) + 1, **kw)
    assert lr_at(109, **kw) == pytest.approx(1e-4)  # min_lr at the last update
    assert lr_at(500, **kw) == pytest.approx(1e-4)
    # halfway through the decay: the mean of lr and min_lr
    assert lr_at(10, lr=1.0, warmup=10, total=13, min_lr_ratio=0.0) == pytest.approx(1.0)
    assert lr_at(11, lr=1.0, warmup=10, total=13, min_lr_ratio=0.0) == pytest.approx(0.5)
    assert lr_at(0, lr=1.0, warmup=0, total=1) == 1.0


def test_window_sampler_random_and_sequential():
    view = TokenView([np.arange(50, dtype=np.uint32), np.arange(50, 100, dtype=np.uint32)])
    s = WindowSampler(view, seq_len=9, batch_size=8, seed=3, mode="random")
    b = s.next_batch()
    assert b.shape == (8, 10) and b.dtype == torch.int64
    assert all(torch.equal(row, torch.arange(row[0], row[0] + 10)) for row in b)
    st = s.state()
    nxt = s.next_batch()
    s2 = WindowSampler(view, seq_len=9, batch_size=8, seed=99, mode="random")
    s2.load_state(json.loads(json.dumps(st)))  # state survives JSON
    assert torch.equal(s2.next_batch(), nxt)
    q = WindowSampler(view, seq_len=9, batch_size=4, seed=0, mode="sequential")
    assert q.next_batch()[:, 0].tolist() == [0, 9, 18, 27]
    q.next_batch()
    third = q.next_batch()[:, 0].tolist()
    assert third == [72, 81, 90, 0] and q.epoch == 1  # 90 + 10 = 100 fits; 99 would not


def test_validation_split_disjoint(tmp_path):
    man = make_tokenizer(tmp_path / "tok")
    docs = make_corpus(tmp_path / "ds", man, n_docs=60)
    ds = ShardDataset(tmp_path / "ds")
    sp = split_dataset(ds, val_fraction=0.2)
    assert len(sp.train) + len(sp.val) == len(ds)
    # the split lands on a document boundary
    assert sp.info["split_token"] in set(np.cumsum([len(d) for d in docs]).tolist())
    stream = ds.tokens(0, len(ds))
    assert np.array_equal(sp.train[0 : len(sp.train)], stream[: len(sp.train)])
    assert np.array_equal(sp.val[0 : len(sp.val)], stream[len(sp.train) :])
    sp2 = split_dataset(ds, val_shard="shard-00001")
    a, b = ds.shard_token_range(1)
    assert len(sp2.val) == b - a and len(sp2.train) == len(ds) - (b - a)


# -- training runs --------------------------------------------------------------------------


def test_training_learns_and_writes_artifacts(env, capsys):
    tmp, base = env
    out = tmp / "run"
    seen_lrs = []

    def on_step(rec, opt):
        seen_lrs.append((rec["step"], opt.param_groups[0]["lr"], opt.param_groups[1]["lr"]))

    res = train(
        output=str(out),
        steps=30,
        val_interval=10,
        target_val_loss=4.0,
        quiet=False,
        on_step=on_step,
        **{k: v for k, v in base.items() if k != "quiet"},
    )
    m = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in m] == list(range(1, 31))
    assert [r["step"] for r in m if "val_loss" in r] == [10, 20, 30]
    for r in m:
        assert set(r) >= {"step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s"}
        assert r["lr"] == pytest.approx(lr_at(r["step"] - 1, lr=3e-3, warmup=2, total=30))
    # the schedule is what the optimizer really used, in both param groups
    for step, lr0, lr1 in seen_lrs:
        assert lr0 == lr1 == pytest.approx(lr_at(step - 1, lr=3e-3, warmup=2, total=30))
    assert m[-1]["tokens"] == 30 * 4 * 2 * 16
    assert m[-1]["loss"] < m[0]["loss"] - 0.5  # it learns
    assert math.log(VOCAB) - 0.5 > m[-1]["val_loss"]
    rep = json.loads((out / "report.json").read_text())
    assert rep == json.loads(json.dumps(res))
    assert rep["final_val_loss"] == m[-1]["val_loss"]
    assert rep["verdict"] == ("pass" if m[-1]["val_loss"] < 4.0 else "fail")
    assert rep["schema"] == "aprx.train_report/1" and rep["steps"] == 30
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "preflight.json").read_text())["ok"] is True
    assert {p.name for p in (out / "model").iterdir()} >= {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    }
    err = capsys.readouterr().err
    assert "step 30/30" in err and "val" in err and "tok/s" in err


def test_grad_norm_is_pre_clip(env):
    tmp, base = env
    norms = {}
    for clip in (1e-3, 0.0):
        out = tmp / f"clip{clip}"
        train(output=str(out), steps=1, grad_clip=clip, save_final=False, **base)
        norms[clip] = read_metrics(out / "metrics.jsonl")[0]["grad_norm"]
    # the logged norm is the real (unclipped) one, identical whether or not we clip
    assert norms[1e-3] == pytest.approx(norms[0.0], rel=1e-6)
    assert norms[1e-3] > 1e-3


def test_verdict_fail_on_unreachable_target(env):
    tmp, base = env
    res = train(output=str(tmp / "r"), steps=2, target_val_loss=0.001, save_final=False, **base)
    assert res["verdict"] == "fail"
    res = train(output=str(tmp / "r2"), steps=2, save_final=False, **base)
    assert res["verdict"] == "no-target"


def test_resume_equals_uninterrupted(env):
    tmp, base = env
    kw = dict(base, steps=8, val_interval=2, checkpoint_interval=3, sampling="random")
    full = tmp / "full"
    train(output=str(full), **kw)

    part = tmp / "part"

    class Crash(Exception):
        pass

    def crash(rec, opt):
        if rec["step"] == 5:  # after the step-3 checkpoint, before the step-6 one
            raise Crash

    with pytest.raises(Crash):
        train(output=str(part), on_step=crash, **kw)
    assert [p.name for p in (part / "checkpoints").iterdir()] == ["step-00000003"]
    with pytest.raises(TrainingError) as exc:  # refuses to clobber the run without --resume
        train(output=str(part), **kw)
    assert exc.value.code == "APRX-R402"
    res = train(output=str(part), resume=True, **kw)
    assert res["resumed_from"].endswith("step-00000003")

    a, b = read_metrics(full / "metrics.jsonl"), read_metrics(part / "metrics.jsonl")
    assert [r["step"] for r in b] == list(range(1, 9))
    for key in ("loss", "lr", "grad_norm", "val_loss", "tokens"):
        assert [r.get(key) for r in a] == [r.get(key) for r in b], key  # exactly equal
    from aprx.checkpoint import load_state_dict_files

    wa, wb = load_state_dict_files(full / "model"), load_state_dict_files(part / "model")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    # keep_checkpoints=2: steps 3 and 6 remain
    assert sorted(p.name for p in (full / "checkpoints").iterdir()) == [
        "step-00000003",
        "step-00000006",
    ]


def test_resume_sequential_and_settings_guard(env):
    tmp, base = env
    kw = dict(base, steps=4, checkpoint_interval=2, sampling="sequential", save_final=False)
    full, part = tmp / "f", tmp / "p"
    train(output=str(full), **kw)

    def stop(rec, opt):
        if rec["step"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(output=str(part), on_step=stop, **kw)
    with pytest.raises(TrainingError) as exc:
        train(output=str(part), resume=True, **dict(kw, lr=1e-2))
    assert exc.value.code == "APRX-R403" and "lr" in str(exc.value)
    train(output=str(part), resume=True, **kw)
    a, b = read_metrics(full / "metrics.jsonl"), read_metrics(part / "metrics.jsonl")
    assert [r["loss"] for r in a] == [r["loss"] for r in b]


def test_preflight_failure_stops_before_training(env):
    tmp, base = env
    bad = dict(base)
    cfg = json.loads(Path(base["config"]).read_text())
    cfg["vocab_size"] = VOCAB - 10
    (tmp / "bad.json").write_text(json.dumps(cfg))
    bad["config"] = str(tmp / "bad.json")
    with pytest.raises(PreflightError) as exc:
        train(output=str(tmp / "x"), steps=2, **bad)
    assert "vocab-size" in str(exc.value) and "max-token-id" in str(exc.value)
    assert json.loads((tmp / "x" / "preflight.json").read_text())["ok"] is False
    assert not (tmp / "x" / "metrics.jsonl").exists()


def test_nan_stops_training(env):
    tmp, base = env
    with pytest.raises(TrainingError) as exc:
        train(
            output=str(tmp / "nan"),
            steps=3,
            lr=1e30,
            grad_clip=0.0,
            warmup=0,
            **{k: v for k, v in base.items() if k not in ("lr", "warmup")},
        )
    assert exc.value.code == "APRX-R401"
    rep = json.loads((tmp / "nan" / "report.json").read_text())
    assert rep["verdict"] == "fail" and "non-finite" in rep["error"]


def test_init_from_checkpoint_trains(env):
    tmp, base = env
    first = tmp / "first"
    train(output=str(first), steps=3, **base)
    kw = {k: v for k, v in base.items() if k != "config"}
    res = train(output=str(tmp / "ft"), init=str(first / "model"), steps=2, **kw)
    m = read_metrics(tmp / "ft" / "metrics.jsonl")
    first_m = read_metrics(first / "metrics.jsonl")
    assert res["verdict"] == "no-target"
    assert m[0]["loss"] < first_m[0]["loss"]  # starts from the trained weights


# -- CLI ------------------------------------------------------------------------------------


def _parser():
    from aprx.train_cli import add_preflight_parser, add_pretrain_parser

    p = argparse.ArgumentParser(prog="aprx")
    sub = p.add_subparsers(dest="command", required=True)
    add_pretrain_parser(sub)
    add_preflight_parser(sub)
    return p


def test_cli_pretrain_exit_codes(env, capsys):
    tmp, base = env
    common = [
        "--tokenizer",
        base["tokenizer"],
        "--dataset",
        base["dataset"],
        "--config",
        base["config"],
        "--seq-len",
        "16",
        "--batch-size",
        "4",
        "--val-fraction",
        "0.1",
        "--quiet",
    ]
    p = _parser()
    args = p.parse_args(
        ["pretrain", *common, "--output", str(tmp / "c1"), "--steps", "3", "--lr", "3e-3"]
        + ["--target-val-loss", "100", "--json"]
    )
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"] == "pass"
    args = p.parse_args(
        ["pretrain", *common, "--output", str(tmp / "c2"), "--steps", "2"]
        + ["--target-val-loss", "0.0001"]
    )
    assert args.func(args) == 1
    assert "verdict: fail" in capsys.readouterr().out
    args = p.parse_args(["preflight", *common, "--json"])
    assert args.func(args) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["ok"] is True and len(rep["gates"]) == 10
    for flag in ("--verify-digests", "--verify-sha256"):  # the older name does the same
        args = p.parse_args(["preflight", *common, flag, "--json"])
        assert args.verify_digests is True and args.func(args) == 0
        rep = json.loads(capsys.readouterr().out)
        gate = next(g for g in rep["gates"] if g["id"] == "shards-integrity")
        assert "(digests verified)" in gate["message"], gate
    bad = [x if x != base["config"] else "qwen2.5-0.5b" for x in common]
    args = p.parse_args(["preflight", *bad])
    assert args.func(args) == 2
    assert "FAIL vocab-size" in capsys.readouterr().out
    args = p.parse_args(["pretrain", *bad, "--output", str(tmp / "c3"), "--steps", "2"])
    assert args.func(args) == 2
    assert "APRX-P301" in capsys.readouterr().err


def test_compiled_layers_train_like_eager(env):
    """``--compile`` (torch.compile of each decoder layer; inductor's C++ backend on CPU) gives
    the eager loss curve, to float tolerance."""
    tmp, base = env
    runs = {}
    for compile_ in (False, True):
        out = tmp / f"run-{compile_}"
        train(output=str(out), steps=6, val_interval=3, compile=compile_, **base)
        runs[compile_] = read_metrics(out / "metrics.jsonl")
    eager, compiled = runs[False], runs[True]
    assert [r["step"] for r in compiled] == [r["step"] for r in eager]
    for a, b in zip(eager, compiled):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-4)
    assert compiled[-1]["val_loss"] == pytest.approx(eager[-1]["val_loss"], rel=1e-4, abs=1e-4)


def test_verify_sha256_is_the_older_name_of_verify_digests():
    from aprx.train import TrainConfig

    base = dict(tokenizer="t", dataset="d", output="o", steps=1, seq_len=8, batch_size=1)
    assert TrainConfig(**base).verify_digests is False
    assert TrainConfig(**base, verify_sha256=True).verify_digests is True
    assert TrainConfig(**base, verify_digests=True).verify_digests is True
