"""argparse wiring for ``aprx pretrain`` and ``aprx preflight``.

``add_pretrain_parser(subparsers)`` / ``add_preflight_parser(subparsers)`` add the
subcommands and set ``func`` to a handler ``(args) -> int``. Exit codes: ``pretrain`` 0 when
the final val_loss beats ``--target-val-loss`` (or no target was given), 1 when it does not;
``preflight`` 0 when every gate passes (warnings allowed); both 2 on a failed preflight gate or
another aprx error (message with its code on stderr). torch is imported only when training.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .errors import AprxError, PreflightError
from .preflight import PRESETS

__all__ = ["add_pretrain_parser", "add_preflight_parser", "run_pretrain", "run_preflight"]

_PRESET_LIST = ", ".join(PRESETS)


def _positive_int(text: str) -> int:
    v = int(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return v


def _non_negative_int(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return v


def _fraction(text: str) -> float:
    v = float(text)
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text}")
    return v


def _add_common(p: argparse.ArgumentParser) -> None:
    io = p.add_argument_group("inputs")
    io.add_argument(
        "--tokenizer",
        required=True,
        metavar="DIR",
        help="tokenizer directory made by `aprx tokenize import-hf`",
    )
    io.add_argument(
        "--dataset",
        required=True,
        metavar="DIR",
        help="shard directory made by `aprx tokenize encode-corpus`",
    )
    model = io.add_mutually_exclusive_group(required=True)
    model.add_argument(
        "--init",
        metavar="DIR",
        help="start from this HF checkpoint (config.json + safetensors); its tokenizer, if "
        "present, must match --tokenizer",
    )
    model.add_argument(
        "--config",
        metavar="FILE_OR_PRESET",
        help=f"train from scratch with this HF config.json or a preset ({_PRESET_LIST}); "
        "vocab_size must equal the tokenizer's",
    )
    shape = p.add_argument_group("batch shape")
    shape.add_argument(
        "--seq-len",
        type=_positive_int,
        default=1024,
        metavar="N",
        help="tokens per training window (default 1024)",
    )
    shape.add_argument(
        "--batch-size",
        type=_positive_int,
        default=8,
        metavar="N",
        help="windows per micro-batch (default 8)",
    )
    shape.add_argument(
        "--grad-accum",
        type=_positive_int,
        default=1,
        metavar="N",
        help="micro-batches per optimizer step (default 1)",
    )
    val = p.add_argument_group("validation split (never trained on)")
    vx = val.add_mutually_exclusive_group()
    vx.add_argument(
        "--val-shard",
        metavar="NAME",
        help="hold out this whole shard (e.g. shard-00007.bin, shard-00007 or 7)",
    )
    vx.add_argument(
        "--val-fraction",
        type=_fraction,
        metavar="X",
        help="hold out the last X of all tokens, cut at a document boundary (default 0.01)",
    )
    p.add_argument(
        "--verify-digests",
        "--verify-sha256",
        dest="verify_digests",
        action="store_true",
        help="hash every shard against its manifest digest (reads the whole corpus; "
        "--verify-sha256 is its older name)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.add_argument(
        "--quiet",
        action="store_true",
        help="pretrain: no progress lines on stderr; preflight: print only failed/warned gates",
    )


def add_preflight_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "preflight",
        help="check that tokenizer, shards and model agree before training",
        description="Run every preflight gate (vocab size, tokenizer identity, shard "
        "integrity and tokenizer, max token id, degenerate corpus, token budget) and print one "
        "line per gate. Exit 0 when none fails, 2 otherwise.",
    )
    _add_common(p)
    p.add_argument(
        "--steps",
        type=_positive_int,
        metavar="N",
        help="planned optimizer steps (for the token-budget gates)",
    )
    p.set_defaults(func=run_preflight)
    return p


def add_pretrain_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "pretrain",
        help="train or fine-tune a Qwen2-architecture model on token shards",
        description="Pretrain (--config) or continue training (--init) a Qwen2-architecture "
        "model on memory-mapped u32 shards. Runs the preflight gates first; writes metrics.jsonl,"
        " checkpoints/, model/ (HF format), report.json and loss.png under --output. Exit 0 when "
        "the final val_loss is below --target-val-loss (or none given), 1 when not, 2 on error.",
    )
    _add_common(p)
    p.add_argument(
        "--output",
        required=True,
        metavar="DIR",
        help="run directory (metrics, checkpoints, model, report)",
    )
    p.add_argument(
        "--steps", type=_positive_int, required=True, metavar="N", help="optimizer steps"
    )
    opt = p.add_argument_group("optimizer and schedule")
    opt.add_argument(
        "--lr", type=float, default=3e-4, metavar="X", help="peak learning rate (default 3e-4)"
    )
    opt.add_argument(
        "--min-lr-ratio",
        type=float,
        default=0.1,
        metavar="X",
        help="cosine decay ends at X * lr (default 0.1)",
    )
    opt.add_argument(
        "--warmup",
        type=_non_negative_int,
        metavar="N",
        help="linear warmup steps (default min(100, steps/10))",
    )
    opt.add_argument(
        "--weight-decay",
        type=float,
        default=0.1,
        metavar="X",
        help="AdamW weight decay (default 0.1)",
    )
    opt.add_argument(
        "--grad-clip",
        type=float,
        default=1.0,
        metavar="X",
        help="clip the global grad norm to X (0: off); the pre-clip norm is logged",
    )
    run = p.add_argument_group("run control")
    run.add_argument(
        "--val-interval",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="compute val_loss every N steps (always at the end)",
    )
    run.add_argument(
        "--val-batches",
        type=_positive_int,
        default=16,
        metavar="N",
        help="validation batches per evaluation (default 16)",
    )
    run.add_argument(
        "--checkpoint-interval",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="save a resumable checkpoint every N steps (0: none)",
    )
    run.add_argument(
        "--keep-checkpoints",
        type=_positive_int,
        default=2,
        metavar="N",
        help="keep the newest N checkpoints (default 2)",
    )
    run.add_argument(
        "--target-val-loss",
        type=float,
        metavar="X",
        help="verdict pass (exit 0) only if the final val_loss < X",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest checkpoint in --output (model, optimizer, schedule, RNG "
        "and data position restored exactly)",
    )
    run.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="auto: cuda when available (bf16 autocast), else cpu",
    )
    run.add_argument("--compile", action="store_true", help="torch.compile the decoder layers")
    run.add_argument(
        "--fsdp",
        action="store_true",
        help="under torchrun: shard weights, gradients and optimizer state over the ranks "
        "(FSDP) instead of replicating them (DDP); for models that do not fit one device",
    )
    run.add_argument(
        "--grad-checkpointing",
        action="store_true",
        help="recompute activations in the backward pass (less memory, ~30%% slower)",
    )
    run.add_argument(
        "--sampling",
        choices=["random", "sequential"],
        default="random",
        help="random windows (seeded) or consecutive windows",
    )
    run.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="N",
        help="seed for weight init and window sampling (default 0)",
    )
    run.add_argument(
        "--log-interval",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="progress line every N steps (default: ~100 lines per run)",
    )
    p.set_defaults(func=run_pretrain)
    return p


def _rank() -> int:
    from .distributed import env_rank

    return env_rank()


def _error(exc: AprxError) -> int:
    rank = _rank()
    who = f"aprx[rank {rank}]" if rank else "aprx"
    print(f"{who}: error: {exc}", file=sys.stderr)
    return 2


def run_preflight(args: argparse.Namespace) -> int:
    from .preflight import preflight

    try:
        report = preflight(
            args.tokenizer,
            args.dataset,
            init=args.init,
            config=args.config,
            seq_len=args.seq_len,
            batch_size=args.batch_size,
            grad_accum=args.grad_accum,
            steps=args.steps,
            val_shard=args.val_shard,
            val_fraction=args.val_fraction,
            verify_digests=args.verify_digests,
        )
    except AprxError as exc:
        return _error(exc)
    if args.json:
        print(report.to_json())
    elif args.quiet:
        lines = [g.line() for g in report.gates if g.status in ("fail", "warn")]
        if lines:
            print("\n".join(lines))
    else:
        print(report.format_text())
    return 0 if report.ok else 2


def run_pretrain(args: argparse.Namespace) -> int:
    try:
        from .train import TrainConfig, train
    except ImportError as exc:  # torch missing
        print(
            f"aprx: error: training needs torch and safetensors ({exc}); "
            "install with `pip install aprx[train]`",
            file=sys.stderr,
        )
        return 2
    try:
        cfg = TrainConfig(
            tokenizer=args.tokenizer,
            dataset=args.dataset,
            output=args.output,
            init=args.init,
            config=args.config,
            steps=args.steps,
            seq_len=args.seq_len,
            batch_size=args.batch_size,
            grad_accum=args.grad_accum,
            lr=args.lr,
            min_lr_ratio=args.min_lr_ratio,
            warmup=args.warmup,
            weight_decay=args.weight_decay,
            grad_clip=args.grad_clip,
            val_shard=args.val_shard,
            val_fraction=args.val_fraction,
            val_interval=args.val_interval,
            val_batches=args.val_batches,
            checkpoint_interval=args.checkpoint_interval,
            keep_checkpoints=args.keep_checkpoints,
            target_val_loss=args.target_val_loss,
            resume=args.resume,
            device=args.device,
            compile=args.compile,
            grad_checkpointing=args.grad_checkpointing,
            seed=args.seed,
            sampling=args.sampling,
            log_interval=args.log_interval,
            quiet=args.quiet,
            verify_digests=args.verify_digests,
            fsdp=args.fsdp,
        )
        result = train(cfg)
    except PreflightError as exc:
        if _rank() == 0:  # every rank runs the same gates: one message is enough
            print(f"aprx: preflight failed: {exc}", file=sys.stderr)
        return 2
    except AprxError as exc:
        return _error(exc)
    if _rank() != 0:  # under torchrun only rank 0 prints the result (all ranks share it)
        pass
    elif args.json:
        print(json.dumps(result, indent=2))
    else:
        val = result.get("final_val_loss")
        print(
            f"verdict: {result['verdict']}  final val_loss: "
            f"{'n/a' if val is None else f'{val:.4f}'}  target: {result['target_val_loss']}  "
            f"report: {args.output}/report.json"
        )
    return 1 if result["verdict"] == "fail" else 0
