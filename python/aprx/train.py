"""The training loop behind ``aprx pretrain``.

Order of events: preflight (every gate, before any model memory is allocated) -> model (from
``--init`` or a config/preset, seeded) -> AdamW with linear warmup + cosine decay -> steps of
``grad_accum`` micro-batches of seq_len+1 windows drawn from memory-mapped shards -> clipping
(the pre-clip norm is logged) -> validation at an interval and at the end on a held-out split
that training never reads -> atomic checkpoints (HF safetensors + training state) -> final
model, report JSON, metrics JSONL and loss plot in the output directory::

    OUTPUT/preflight.json          the preflight report
    OUTPUT/metrics.jsonl           one record per step (val_loss on evaluation steps)
    OUTPUT/checkpoints/step-NNNNNNNN/   model.safetensors, config.json, training_state.*
    OUTPUT/model/                  the final HF checkpoint (+ tokenizer files)
    OUTPUT/report.json             verdict: final val_loss < target_val_loss
    OUTPUT/loss.png                train/val loss

``resume=True`` restores model, optimizer moments, schedule position, RNG and data position
from the newest checkpoint, so the resumed run's losses equal an uninterrupted run's exactly
(on the same device and software).

Error codes: ``APRX-R401`` non-finite loss or gradient, ``APRX-R402`` the output directory
holds another run (pass resume or choose a new output), ``APRX-R403`` resume settings differ
from the checkpoint's, ``APRX-R404`` requested device unavailable, ``APRX-R405`` invalid
training argument, ``APRX-R406`` resume with another world size (number of data-parallel
processes) than the checkpoint's, ``APRX-R407`` another rank of a distributed run failed.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the same loop runs data-parallel (DDP), or sharded
(FSDP2 ``fully_shard``) with ``fsdp=True``; see ``docs/distributed.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np
import torch

from .checkpoint import (
    load_hf_checkpoint,
    load_optimizer_state,
    load_state_dict_files,
    load_training_state,
    load_weights,
    optimizer_state_tensors,
    restore_rng_state,
    rng_state_tensors,
    save_hf_checkpoint,
    write_json_atomic,
)
from .distributed import DistContext, context_from_env
from .errors import TrainingError
from .model import CausalLM, build_model, default_loss_chunk
from .preflight import PreflightReport, format_count, preflight
from .shards import TokenView, shard_digest

__all__ = ["TrainConfig", "train", "lr_at", "WindowSampler", "evaluate"]

PathLike = Union[str, "os.PathLike[str]"]
REPORT_SCHEMA = "aprx.train_report/1"

# Settings that must not change across a resume (they shape the loss curve).
_RESUME_KEYS = (
    "steps",
    "seq_len",
    "batch_size",
    "grad_accum",
    "lr",
    "min_lr_ratio",
    "warmup",
    "weight_decay",
    "beta1",
    "beta2",
    "eps",
    "grad_clip",
    "seed",
    "sampling",
    "val_shard",
    "val_fraction",
    "val_batches",
)


@dataclass
class TrainConfig:
    """Everything ``aprx pretrain`` takes (JSON-serialisable)."""

    tokenizer: str
    dataset: str
    output: str
    steps: int
    seq_len: int
    batch_size: int
    init: Optional[str] = None
    config: Optional[str] = None
    grad_accum: int = 1
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup: Optional[int] = None  # None: min(100, steps // 10), resolved in __post_init__
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    val_shard: Optional[str] = None
    val_fraction: Optional[float] = None
    val_interval: int = 0  # 0: only at the end
    val_batches: int = 16
    checkpoint_interval: int = 0  # 0: no intermediate checkpoints
    keep_checkpoints: int = 2
    target_val_loss: Optional[float] = None
    resume: bool = False
    device: str = "auto"
    compile: bool = False
    grad_checkpointing: bool = False
    seed: int = 0
    sampling: str = "random"  # or "sequential"
    log_interval: int = 0  # progress line every N steps; 0: about 100 lines per run
    quiet: bool = False
    verify_digests: bool = False  # hash every shard against its manifest digest
    verify_sha256: bool = False  # the older name of verify_digests (before 0.2)
    save_final: bool = True
    fsdp: bool = False  # shard params, grads and optimizer state over ranks (FSDP2)

    def __post_init__(self) -> None:
        if self.verify_sha256:
            self.verify_digests = True
        for name in ("steps", "seq_len", "batch_size", "grad_accum"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise TrainingError(f"{name} must be a positive integer, got {v!r}", "APRX-R405")
        if self.warmup is None:
            self.warmup = min(100, self.steps // 10)
        if self.warmup < 0 or self.lr <= 0 or not (0.0 <= self.min_lr_ratio <= 1.0):
            raise TrainingError(
                f"invalid schedule: lr {self.lr}, warmup {self.warmup}, min_lr_ratio "
                f"{self.min_lr_ratio}",
                "APRX-R405",
            )
        if self.sampling not in ("random", "sequential"):
            raise TrainingError(
                f"sampling must be 'random' or 'sequential', not {self.sampling!r}", "APRX-R405"
            )
        if self.val_shard is not None and self.val_fraction is not None:
            raise TrainingError("give val_shard or val_fraction, not both", "APRX-R405")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def lr_at(step: int, *, lr: float, warmup: int, total: int, min_lr_ratio: float = 0.1) -> float:
    """The learning rate of update ``step`` (0-based): linear warmup to ``lr`` over ``warmup``
    updates, then cosine decay to ``min_lr_ratio * lr`` at the last update (``total - 1``)."""
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    min_lr = lr * min_lr_ratio
    decay_steps = total - warmup - 1
    if decay_steps <= 0:
        return lr
    progress = min(1.0, (step - warmup) / decay_steps)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


class WindowSampler:
    """Batches of ``seq_len + 1``-token windows from a :class:`TokenView`.

    ``random``: window starts uniform over the stream (numpy PCG64, seeded); ``sequential``:
    consecutive windows with stride ``seq_len`` (each token is a target once per pass), wrapping
    around. :meth:`state` / :meth:`load_state` make the position resumable exactly.

    Data-parallel runs give each rank its own sampler: ``random`` seeds the generator with
    ``(seed, rank)``; ``sequential`` hands rank ``r`` of ``W`` the windows ``r, r + W, ...``
    (start ``r * seq_len``, stride ``W * seq_len``). ``world_size=1`` is the plain sampler.
    """

    def __init__(
        self,
        view: TokenView,
        seq_len: int,
        batch_size: int,
        seed: int,
        mode: str,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.view = view
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.mode = mode
        self.window = seq_len + 1
        self.max_start = len(view) - self.window
        self.offset = rank * seq_len
        self.stride = world_size * seq_len
        if self.max_start < self.offset:
            raise TrainingError(
                f"training split has {len(view)} tokens, fewer than one window of {self.window}"
                + (f" for each of {world_size} ranks" if world_size > 1 else ""),
                "APRX-R405",
            )
        seed_arg: Any = seed if world_size == 1 else [seed, rank]
        self.rng = np.random.Generator(np.random.PCG64(seed_arg))
        self.pos = self.offset
        self.epoch = 0

    def _starts(self) -> List[int]:
        if self.mode == "random":
            return [int(s) for s in self.rng.integers(0, self.max_start + 1, self.batch_size)]
        out = []
        for _ in range(self.batch_size):
            if self.pos > self.max_start:
                self.pos = self.offset
                self.epoch += 1
            out.append(self.pos)
            self.pos += self.stride
        return out

    def next_batch(self) -> torch.Tensor:
        rows = [self.view.slice(s, s + self.window) for s in self._starts()]
        return torch.from_numpy(np.stack(rows).astype(np.int64))

    def state(self) -> Dict[str, Any]:
        return {
            "mode": self.mode,
            "pos": self.pos,
            "epoch": self.epoch,
            "rng": self.rng.bit_generator.state,
        }

    def load_state(self, st: Dict[str, Any]) -> None:
        if st.get("mode") != self.mode:
            raise TrainingError(
                f"checkpoint sampled {st.get('mode')!r} windows, this run {self.mode!r}",
                "APRX-R403",
            )
        self.pos = int(st["pos"])
        self.epoch = int(st["epoch"])
        self.rng.bit_generator.state = st["rng"]


@torch.no_grad()
def evaluate(
    model: CausalLM,
    view: TokenView,
    seq_len: int,
    batch_size: int,
    max_batches: int,
    device: torch.device,
    autocast_dtype: Optional[torch.dtype] = None,
    dist_ctx: Optional[DistContext] = None,
) -> float:
    """Mean next-token loss over consecutive ``seq_len + 1`` windows (stride ``seq_len``) from
    the start of ``view``: deterministic, so the same model always gets the same val_loss.

    With a data-parallel ``dist_ctx`` the batches are dealt round-robin to the ranks and the
    sums all-reduced: every rank returns the same value (over the same windows as one process,
    up to floating-point summation order)."""
    rank, world = (dist_ctx.rank, dist_ctx.world_size) if dist_ctx else (0, 1)
    n_windows = (len(view) - 1) // seq_len
    n_windows = min(n_windows, max_batches * batch_size)
    if n_windows <= 0:
        raise TrainingError(f"validation split too small for seq_len {seq_len}", "APRX-R405")
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for lo in list(range(0, n_windows, batch_size))[rank::world]:
        starts = range(lo * seq_len, min(n_windows, lo + batch_size) * seq_len, seq_len)
        batch = np.stack([view.slice(s, s + seq_len + 1) for s in starts]).astype(np.int64)
        ids = torch.from_numpy(batch).to(device)
        with _autocast(device, autocast_dtype):
            loss = model.loss(ids[:, :-1], ids[:, 1:])
        total += float(loss) * len(starts)
        count += len(starts)
    model.train(was_training)
    if world > 1:
        assert dist_ctx is not None
        sums = dist_ctx.all_reduce_sum(torch.tensor([total, float(count)], dtype=torch.float64))
        total, count = float(sums[0]), int(sums[1])
    return total / count


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype=dtype)


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError("--device cuda requested but CUDA is not available", "APRX-R404")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise TrainingError(f"unknown device {name!r}: {exc}", "APRX-R404") from exc


def _param_groups(model: CausalLM, weight_decay: float):
    decay: List[torch.nn.Parameter] = []
    no_decay: List[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name.endswith(".bias") else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


_CKPT_RE = re.compile(r"^step-(\d{8})$")


def _checkpoints(output: Path) -> List[Path]:
    d = output / "checkpoints"
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        if _CKPT_RE.match(p.name) and (p / "training_state.json").is_file():
            found.append(p)
    return sorted(found, key=lambda p: int(_CKPT_RE.match(p.name).group(1)))  # type: ignore


class _Progress:
    def __init__(self, quiet: bool, total: int, interval: int) -> None:
        self.quiet = quiet
        self.total = total
        self.interval = interval or max(1, total // 100)

    def note(self, msg: str) -> None:
        if not self.quiet:
            print(f"aprx: {msg}", file=sys.stderr, flush=True)

    def step(self, rec: Dict[str, Any], eta_s: float) -> None:
        if self.quiet:
            return
        step = rec["step"]
        if step % self.interval and step != self.total and "val_loss" not in rec:
            return
        parts = [
            f"step {step}/{self.total}",
            f"loss {rec['loss']:.4f}",
            f"lr {rec['lr']:.2e}",
            f"gnorm {rec['grad_norm']:.3g}",
            f"{format_count(rec['tokens_per_s'])} tok/s",
        ]
        if "val_loss" in rec:
            parts.append(f"val {rec['val_loss']:.4f}")
        parts.append(f"eta {_hms(eta_s)}")
        print("  ".join(parts), file=sys.stderr, flush=True)


def _hms(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _tokenizer_files(tokenizer_dir: Path) -> Dict[str, Path]:
    out = {}
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        if (tokenizer_dir / name).is_file():
            out[name] = tokenizer_dir / name
    return out


def train(
    train_config: Optional[TrainConfig] = None,
    /,
    *,
    on_step: Optional[Callable[[Dict[str, Any], torch.optim.Optimizer], None]] = None,
    preflight_report: Optional[PreflightReport] = None,
    **kwargs: Any,
) -> Dict[str, Any]:
    """Run a training job; returns the report dict (also written to ``OUTPUT/report.json``).

    Pass a :class:`TrainConfig` or its fields as keyword arguments. ``on_step(record,
    optimizer)`` is called after every update (after metrics and checkpoints are written).
    Raises :class:`~aprx.errors.PreflightError` before allocating the model when a preflight
    gate fails, and :class:`~aprx.errors.TrainingError` on a non-finite loss or gradient.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) this is one rank of a DistributedDataParallel run:
    each rank reads its own windows, gradients are averaged, only rank 0 writes files and
    prints, and every rank returns the same report (see ``docs/distributed.md``).
    """
    if train_config is None:
        cfg = TrainConfig(**kwargs)
    else:
        cfg = dataclasses.replace(train_config, **kwargs) if kwargs else train_config
    ctx = context_from_env(cfg.device)
    precision = torch.get_float32_matmul_precision()  # CUDA runs use TF32 while training
    try:
        return _train(cfg, ctx, on_step, preflight_report)
    finally:
        torch.set_float32_matmul_precision(precision)
        ctx.close()


def _train(
    cfg: TrainConfig,
    ctx: DistContext,
    on_step: Optional[Callable[[Dict[str, Any], torch.optim.Optimizer], None]],
    preflight_report: Optional[PreflightReport],
) -> Dict[str, Any]:
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    main = ctx.is_main
    world = ctx.world_size
    progress = _Progress(cfg.quiet or not main, cfg.steps, cfg.log_interval)

    # every rank runs preflight and the resume checks; an error on one stops all of them, and
    # nobody writes before all have looked at the output directory
    with ctx.agreed("preflight and setup"):
        # 1. preflight, before any model memory exists
        report = preflight_report or preflight(
            cfg.tokenizer,
            cfg.dataset,
            init=cfg.init,
            config=cfg.config,
            seq_len=cfg.seq_len,
            batch_size=cfg.batch_size,
            grad_accum=cfg.grad_accum,
            steps=cfg.steps,
            val_shard=cfg.val_shard,
            val_fraction=cfg.val_fraction,
            verify_digests=cfg.verify_digests,
        )
        if main:
            write_json_atomic(out / "preflight.json", report.to_dict())
        for g in report.warnings:
            progress.note(f"preflight warning {g.id} [{g.code}]: {g.message}")
        report.raise_for_failures()
        assert report.model_config is not None and report.split is not None
        split = report.split

        # 2. where do we start?
        metrics_path = out / "metrics.jsonl"
        ckpts = _checkpoints(out)
        resume_dir: Optional[Path] = None
        if cfg.resume:
            if ckpts:
                resume_dir = ckpts[-1]
            else:
                progress.note(f"--resume: no checkpoint in {out / 'checkpoints'}; starting fresh")
        elif ckpts or metrics_path.exists():
            raise TrainingError(
                f"{out} already holds a training run (metrics.jsonl / checkpoints): pass "
                "--resume to continue it or choose another --output",
                "APRX-R402",
            )

        device = ctx.device if ctx.device is not None else _resolve_device(cfg.device)
        amp_dtype = None
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            amp_dtype = torch.bfloat16
            torch.set_float32_matmul_precision("high")
        torch.manual_seed(cfg.seed)

        # 3. model
        if cfg.init is not None:
            model = load_hf_checkpoint(cfg.init, device=device)
        else:
            model = build_model(report.model_config, seed=cfg.seed, device=device)
        model.loss_chunk = default_loss_chunk(model.config.vocab_size, device=device)
        model.model.gradient_checkpointing = cfg.grad_checkpointing
        model.train()
        n_params = model.num_parameters()

        use_fsdp = cfg.fsdp and ctx.enabled

        def make_optimizer() -> torch.optim.Optimizer:
            return torch.optim.AdamW(
                _param_groups(model, cfg.weight_decay),
                lr=cfg.lr,
                betas=(cfg.beta1, cfg.beta2),
                eps=cfg.eps,
                fused=device.type == "cuda" and not use_fsdp,
            )

        # FSDP: the optimizer must see the sharded parameters; it is built after sharding
        opt: Optional[torch.optim.Optimizer] = None if use_fsdp else make_optimizer()
        fsdp_resume: Optional[Dict[str, Any]] = None
        sampler = WindowSampler(
            split.train, cfg.seq_len, cfg.batch_size, cfg.seed, cfg.sampling, ctx.rank, world
        )

        start_step = 0
        tokens_seen = 0
        elapsed_before = 0.0
        last_val: Optional[float] = None
        if resume_dir is not None:
            tensors, info = load_training_state(resume_dir)
            saved_world = int(info.get("world_size", 1))
            if saved_world != world:
                raise TrainingError(
                    f"cannot resume from {resume_dir}: it was written by a run with world size "
                    f"{saved_world}, this run has world size {world}; resume with "
                    f"{saved_world} process(es) (torchrun --nproc_per_node/--nnodes) so every "
                    "rank finds its data position",
                    "APRX-R406",
                )
            saved = info.get("settings", {})
            now = {k: getattr(cfg, k) for k in _RESUME_KEYS}
            diff = {k: (saved.get(k), now[k]) for k in _RESUME_KEYS if saved.get(k) != now[k]}
            if diff:
                listing = ", ".join(
                    f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items()
                )
                raise TrainingError(
                    f"cannot resume from {resume_dir}: settings differ ({listing})", "APRX-R403"
                )
            if info.get("data") != _data_identity(report):
                raise TrainingError(
                    f"cannot resume from {resume_dir}: the dataset or tokenizer changed "
                    f"({info.get('data')} vs {_data_identity(report)})",
                    "APRX-R403",
                )
            if use_fsdp:
                # rank 0 reads and checks the full weights; they are broadcast after sharding
                fsdp_resume = {}
                if main:
                    fsdp_resume = _read_full_weights(model, resume_dir)
            else:
                assert opt is not None
                load_weights(model, load_state_dict_files(resume_dir), source=str(resume_dir))
                load_optimizer_state(model, opt, tensors)
            if world == 1:
                restore_rng_state(tensors)
                sampler.load_state(info["sampler"])
            else:
                _restore_rank_rng(tensors, f"rank{ctx.rank}/", device)
                sampler.load_state(info["ranks"][ctx.rank]["sampler"])
            start_step = int(info["step"])
            tokens_seen = int(info["tokens_seen"])
            elapsed_before = float(info.get("elapsed_s", 0.0))
            last_val = info.get("last_val_loss")

    if resume_dir is not None:
        if main:
            _truncate_metrics(metrics_path, start_step)
        progress.note(f"resumed from {resume_dir} at step {start_step}")
    elif main and metrics_path.exists():
        metrics_path.unlink()

    if cfg.compile:
        for layer in model.model.layers:
            layer.compile()
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = model.loss
    ddp: Optional[torch.nn.Module] = None
    fsdp_root: Optional[torch.nn.Module] = None
    if use_fsdp:
        fsdp_root = _shard_model(model, ctx, device)
        loss_fn = fsdp_root
        opt = make_optimizer()
        if fsdp_resume is not None:
            _fsdp_load_full_state(model, opt, fsdp_resume, tensors if main else {})
            fsdp_resume = None
    elif ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel

        # DDP syncs gradients in the backward of its forward(): route the loss through it
        ddp = DistributedDataParallel(
            _LossModule(model),
            device_ids=[device.index] if device.type == "cuda" else None,
        )
        loss_fn = ddp

    assert opt is not None

    def save_checkpoint(step: int) -> Optional[Path]:
        full_sd: Optional[Dict[str, torch.Tensor]] = None
        if world == 1:
            tensors = optimizer_state_tensors(model, opt)
            tensors.update(rng_state_tensors())
            rank_info: Dict[str, Any] = {}
        else:
            tensors, rank_info = _gather_rank_states(ctx, sampler, device)
            if use_fsdp:
                full_sd, opt_tensors = _fsdp_full_state(model, opt)  # collective
                tensors.update(opt_tensors)
            elif main:
                tensors.update(optimizer_state_tensors(model, opt))
        path = out / "checkpoints" / f"step-{step:08d}"
        with ctx.agreed(f"the step-{step} checkpoint"):
            if not main:
                return None
            info = {
                "step": step,
                "tokens_seen": tokens_seen,
                "elapsed_s": elapsed_before + (time.perf_counter() - t_start),
                "last_val_loss": last_val,
                "sampler": sampler.state(),
                "settings": {k: getattr(cfg, k) for k in _RESUME_KEYS},
                "data": _data_identity(report),
                "train_config": cfg.to_dict(),
                "world_size": world,
                **rank_info,
            }
            save_hf_checkpoint(
                model,
                path,
                training_state=(tensors, info),
                state_dict=full_sd if use_fsdp else None,
            )
            for old in _checkpoints(out)[: -max(1, cfg.keep_checkpoints)]:
                shutil.rmtree(old, ignore_errors=True)
        return path

    # 4. the loop
    local_tokens_per_step = cfg.batch_size * cfg.grad_accum * cfg.seq_len
    tokens_per_step = local_tokens_per_step * world  # all ranks
    t_start = time.perf_counter()
    params = [p for p in model.parameters() if p.requires_grad]
    last_rec: Dict[str, Any] = {}
    progress.note(
        f"training {format_count(n_params)} parameters on {device} "
        f"({'bf16 autocast' if amp_dtype else 'fp32'}) for {cfg.steps} steps x "
        f"{tokens_per_step} tokens"
        + (
            f" ({world} ranks, {'FSDP' if use_fsdp else 'DDP'} over {ctx.backend})"
            if ctx.enabled
            else ""
        )
        + f"; {split.description}"
    )
    with contextlib.ExitStack() as stack:
        metrics_file = (
            stack.enter_context(open(metrics_path, "a", encoding="utf-8")) if main else None
        )
        for step in range(start_step, cfg.steps):
            t0 = time.perf_counter()
            lr = lr_at(
                step,
                lr=cfg.lr,
                warmup=cfg.warmup or 0,
                total=cfg.steps,
                min_lr_ratio=cfg.min_lr_ratio,
            )
            for group in opt.param_groups:
                group["lr"] = lr
            loss_sum = torch.zeros((), device=device)
            for micro in range(cfg.grad_accum):
                batch = sampler.next_batch().to(device, non_blocking=True)
                # DDP: all-reduce the gradients once, on the last micro-batch
                sync = ddp is None or micro == cfg.grad_accum - 1
                with contextlib.nullcontext() if sync else ddp.no_sync():  # type: ignore
                    with _autocast(device, amp_dtype):
                        loss = loss_fn(batch[:, :-1], batch[:, 1:])
                    (loss / cfg.grad_accum).backward()
                loss_sum += loss.detach()
            if cfg.grad_clip > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            else:
                grad_norm = torch.nn.utils.clip_grad_norm_(params, float("inf"))
            if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor over the shards
                grad_norm = grad_norm.full_tensor()
            if ctx.enabled:
                # the logged loss is the mean over ranks; any rank's non-finite value stops all
                local_bad = not (math.isfinite(float(loss_sum)) and math.isfinite(float(grad_norm)))
                sums = ctx.all_reduce_sum(
                    torch.stack([loss_sum.float(), torch.tensor(float(local_bad), device=device)])
                )
                train_loss = float(sums[0]) / world / cfg.grad_accum
                any_bad = float(sums[1]) > 0
            else:
                train_loss = float(loss_sum) / cfg.grad_accum
                any_bad = False
            gn = float(grad_norm)
            if any_bad or not (math.isfinite(train_loss) and math.isfinite(gn)):
                if main:
                    _write_report(
                        out,
                        cfg,
                        report,
                        verdict="fail",
                        error=f"non-finite loss {train_loss} / grad norm {gn} at step {step + 1}",
                        step=step,
                        n_params=n_params,
                        last_val=last_val,
                        device=device,
                        world_size=world,
                    )
                ctx.barrier()  # rank 0's report is on disk before any rank exits
                raise TrainingError(
                    f"loss {train_loss} / pre-clip grad norm {gn} is not finite at step "
                    f"{step + 1} (lr {lr:.3g}): lower --lr, raise --warmup, or check the data",
                    "APRX-R401",
                )
            opt.step()
            opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            tokens_seen += tokens_per_step
            done = step + 1
            dt = time.perf_counter() - t0
            rec: Dict[str, Any] = {
                "step": done,
                "loss": train_loss,
                "lr": lr,
                "grad_norm": gn,
                "tokens": tokens_seen,
                "tokens_per_s": tokens_per_step / dt if dt > 0 else 0.0,
                "elapsed_s": elapsed_before + time.perf_counter() - t_start,
            }
            if (cfg.val_interval and done % cfg.val_interval == 0) or done == cfg.steps:
                last_val = evaluate(
                    fsdp_root if fsdp_root is not None else model,  # type: ignore[arg-type]
                    split.val,
                    cfg.seq_len,
                    cfg.batch_size,
                    cfg.val_batches,
                    device,
                    amp_dtype,
                    dist_ctx=ctx if ctx.enabled else None,
                )
                rec["val_loss"] = last_val
                if not math.isfinite(last_val):
                    raise TrainingError(f"val_loss {last_val} at step {done}", "APRX-R401")
            if metrics_file is not None:
                metrics_file.write(json.dumps(rec) + "\n")
                metrics_file.flush()
            if cfg.checkpoint_interval and done % cfg.checkpoint_interval == 0:
                save_checkpoint(done)
            done_run = done - start_step
            run_s = time.perf_counter() - t_start
            progress.step(rec, run_s / done_run * (cfg.steps - done))
            last_rec = rec
            if on_step is not None:
                on_step(rec, opt)

    # 5. final artifacts (rank 0; the others return the same report without writing it)
    model_dir = None
    final_sd = _fsdp_full_state(model, None)[0] if use_fsdp and cfg.save_final else None
    with ctx.agreed("saving the final model"):
        if cfg.save_final and main:
            model_dir = save_hf_checkpoint(
                model,
                out / "model",
                extra_files=_tokenizer_files(Path(cfg.tokenizer)),
                state_dict=final_sd,
            )
    if cfg.save_final and not main:
        model_dir = out / "model"
    result = _write_report(
        out,
        cfg,
        report,
        verdict=None,
        step=cfg.steps,
        n_params=n_params,
        last_val=last_val,
        device=device,
        model_dir=model_dir,
        last_rec=last_rec,
        tokens_seen=tokens_seen,
        elapsed=elapsed_before + time.perf_counter() - t_start,
        resumed_from=None if resume_dir is None else str(resume_dir),
        amp=amp_dtype is not None,
        world_size=world,
        write=main,
    )
    msg = f"done: val_loss {last_val:.4f}" if last_val is not None else "done"
    if cfg.target_val_loss is not None:
        msg += f", target {cfg.target_val_loss}: {result['verdict'].upper()}"
    progress.note(msg + f"; report {out / 'report.json'}")
    return result


class _LossModule(torch.nn.Module):
    """``forward(ids, targets) -> model.loss(...)``: what DDP wraps (its hooks need forward)."""

    def __init__(self, model: CausalLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.model.loss(input_ids, targets)

    def loss(self, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Through ``forward``, so FSDP gathers the root's parameters (used by evaluate)."""
        return self(input_ids, targets)


# -- FSDP (``fsdp=True`` under torchrun) -----------------------------------------------------


def _full_options(**kw: Any):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, **kw)


def _shard_model(model: CausalLM, ctx: DistContext, device: torch.device) -> torch.nn.Module:
    """Shard ``model`` in place with FSDP2 ``fully_shard``: each decoder layer is one unit, the
    root (a :class:`_LossModule`, whose forward runs ``model.loss``) holds the rest -- the
    embedding, tied to ``lm_head``, and the final norm. Returns the root to call."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (ctx.world_size,))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    root = _LossModule(model)
    fully_shard(root, mesh=mesh)
    return root


def _read_full_weights(model: CausalLM, resume_dir: Path) -> Dict[str, torch.Tensor]:
    """The checkpoint's weights keyed like ``model.state_dict()`` (checked like
    :func:`load_weights`: missing, unexpected or misshapen tensors raise ``APRX-R431``)."""
    tensors = load_state_dict_files(resume_dir)
    expected = {n: tuple(p.shape) for n, p in model.named_parameters()}
    if model.config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    bad = sorted(set(expected) ^ {k for k in tensors if not k.endswith("inv_freq")})
    bad += sorted(k for k in expected if k in tensors and tuple(tensors[k].shape) != expected[k])
    if bad:
        raise TrainingError(
            f"{resume_dir}: weights do not fit the model (missing, unexpected or misshapen: "
            f"{bad[:5]}{'...' if len(bad) > 5 else ''})",
            code="APRX-R431",
        )
    out = {k: tensors[k] for k in expected}
    if model.config.tie_word_embeddings:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out


def _fsdp_full_state(model: CausalLM, opt: Optional[torch.optim.Optimizer]):
    """Collective: the full weights (HF names, as ``model_state_for_saving``) and, with
    ``opt``, the optimizer state as ``optimizer/<param>/<key>`` tensors -- on rank 0; the
    other ranks get empty dicts."""
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    full: Dict[str, Any] = get_model_state_dict(model, options=_full_options())
    names = [n for n, _ in model.named_parameters()]
    weights: Dict[str, torch.Tensor] = {}
    if full:
        weights = {n: full[n].contiguous() for n in names}
        if not model.config.tie_word_embeddings:
            weights.setdefault("lm_head.weight", full["lm_head.weight"].contiguous())
    opt_tensors: Dict[str, torch.Tensor] = {}
    if opt is not None:
        osd: Dict[str, Any] = dict(get_optimizer_state_dict(model, opt, options=_full_options()))
        for pname, st in (osd.get("state") or {}).items():
            for k, v in st.items():
                t = v.detach().contiguous().cpu() if torch.is_tensor(v) else torch.tensor(v)
                opt_tensors[f"optimizer/{pname}/{k}"] = t
    return weights, opt_tensors


def _fsdp_load_full_state(
    model: CausalLM,
    opt: torch.optim.Optimizer,
    weights: Dict[str, torch.Tensor],
    tensors: Dict[str, torch.Tensor],
) -> None:
    """Collective: rank 0's full ``weights`` and ``optimizer/<param>/<key>`` ``tensors`` are
    broadcast and each rank keeps its shard (the other ranks pass empty dicts)."""
    from torch.distributed.checkpoint.state_dict import (
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    set_model_state_dict(
        model, dict[str, Any](weights), options=_full_options(broadcast_from_rank0=True)
    )
    osd: Dict[str, Any] = {}
    if weights:  # rank 0
        names = {id(p): n for n, p in model.named_parameters()}
        state: Dict[str, Dict[str, torch.Tensor]] = {}
        for key, t in tensors.items():
            if key.startswith("optimizer/"):
                pname, sk = key.split("/", 1)[1].rsplit("/", 1)
                if pname not in names.values():
                    raise TrainingError(
                        f"training state has optimizer state for unknown parameter {pname}",
                        code="APRX-R432",
                    )
                state.setdefault(pname, {})[sk] = t.float() if sk == "step" else t
        groups = []
        for g in opt.param_groups:
            groups.append(
                {
                    **{k: v for k, v in g.items() if k != "params"},
                    "params": [names[id(p)] for p in g["params"]],
                }
            )
        osd = {"state": state, "param_groups": groups}
    set_optimizer_state_dict(model, opt, osd, options=_full_options(broadcast_from_rank0=True))


def _rank_rng_tensors(device: torch.device) -> Dict[str, torch.Tensor]:
    out = {"rng/torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        out["rng/cuda"] = torch.cuda.get_rng_state(device)
    return out


def _restore_rank_rng(tensors: Dict[str, torch.Tensor], prefix: str, device: torch.device):
    if prefix + "rng/torch_cpu" in tensors:
        torch.set_rng_state(tensors[prefix + "rng/torch_cpu"].to(torch.uint8))
    if device.type == "cuda" and prefix + "rng/cuda" in tensors:
        torch.cuda.set_rng_state(tensors[prefix + "rng/cuda"].to(torch.uint8), device)


def _gather_rank_states(ctx: DistContext, sampler: WindowSampler, device: torch.device):
    """Every rank's sampler position (JSON) and RNG states (safetensors bytes), gathered so
    rank 0 can store them as ``rank<R>/rng/...`` tensors and ``info["ranks"][R]``."""
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    samplers = ctx.gather_bytes(json.dumps({"sampler": sampler.state()}).encode())
    rngs = ctx.gather_bytes(st_save(_rank_rng_tensors(device)))
    tensors: Dict[str, torch.Tensor] = {}
    ranks: List[Dict[str, Any]] = []
    if ctx.is_main:
        for r, (js, blob) in enumerate(zip(samplers, rngs)):
            ranks.append(json.loads(js))
            for k, t in st_load(blob).items():
                tensors[f"rank{r}/{k}"] = t
    return tensors, {"ranks": ranks}


def _shard_identity(entry: Dict[str, Any]) -> Any:
    """A shard's digest (`shard_digest`), else its token count."""
    digest = shard_digest(entry)
    return digest[1] if digest else entry["tokens"]


def _data_identity(report: PreflightReport) -> Dict[str, Any]:
    ds = report.dataset
    return {
        "tokenizer_sha256": ds.tokenizer_sha256,
        "total_tokens": len(ds),
        "shards": [_shard_identity(e) for e in ds.manifest["shards"]],
    }


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records past ``step`` (written after the checkpoint the run resumes from)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line from the interruption
        if int(rec.get("step", 0)) <= step:
            keep.append(json.dumps(rec))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(k + "\n" for k in keep), encoding="utf-8")
    os.replace(tmp, path)


def _write_report(
    out: Path,
    cfg: TrainConfig,
    report: PreflightReport,
    *,
    verdict: Optional[str],
    step: int,
    n_params: int,
    last_val: Optional[float],
    device: torch.device,
    error: Optional[str] = None,
    model_dir: Optional[Path] = None,
    last_rec: Optional[Dict[str, Any]] = None,
    tokens_seen: int = 0,
    elapsed: float = 0.0,
    resumed_from: Optional[str] = None,
    amp: bool = False,
    world_size: int = 1,
    write: bool = True,
) -> Dict[str, Any]:
    notes: List[str] = []
    if verdict is None:
        if cfg.target_val_loss is None:
            verdict = "no-target"
        elif last_val is not None and last_val < cfg.target_val_loss:
            verdict = "pass"
        else:
            verdict = "fail"
    if last_val is not None and last_val < 0.05:
        notes.append(
            f"val_loss {last_val:.4g} is suspiciously low: check the corpus-degenerate gate and "
            "that the validation split is not a copy of the training data"
        )
    plot_path = None
    if write:
        from .plot import plot_losses

        png, note = plot_losses(
            out / "metrics.jsonl",
            out / "loss.png",
            title=f"aprx pretrain: {Path(cfg.output).name}",
            target_val_loss=cfg.target_val_loss,
        )
        if png is not None:
            plot_path = str(png)
        if note:
            notes.append(note)
    result: Dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "verdict": verdict,
        "target_val_loss": cfg.target_val_loss,
        "final_val_loss": last_val,
        "final_train_loss": (last_rec or {}).get("loss"),
        "steps": step,
        "tokens": tokens_seen,
        "tokens_per_s": tokens_seen / elapsed if elapsed > 0 else None,
        "elapsed_s": elapsed,
        "parameters": n_params,
        "device": str(device),
        "world_size": world_size,
        "bf16_autocast": amp,
        "model_dir": None if model_dir is None else str(model_dir),
        "metrics": str(out / "metrics.jsonl"),
        "plot": plot_path,
        "resumed_from": resumed_from,
        "error": error,
        "notes": notes,
        "preflight": {
            "ok": report.ok,
            "warnings": [g.line() for g in report.warnings],
            "split": report.summary.get("split"),
        },
        "config": cfg.to_dict(),
    }
    if write:
        write_json_atomic(out / "report.json", result)
    return result
