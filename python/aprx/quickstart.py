"""``aprx quickstart``: the whole pipeline on a built-in default, with no download.

1. corpus: the interpreter's own standard library sources (real Python code);
2. tokenizer: a byte-level BPE trained on that corpus with the ``tokenizers`` library,
   written as a Qwen2-style tokenizer.json (NFC, Qwen2 split pattern, ByteLevel) and then
   imported like any other;
3. encode-corpus into u32 shards; 4. preflight; 5. a short from-scratch training of a tiny
   Qwen2-architecture model on CPU; 6. the val_loss verdict and the loss plot.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any, Dict

from aprx._aprx import MAX_ID, PATTERNS
from aprx._validate import is_int


def stdlib_corpus() -> list[Path]:
    """Top-level entries of the standard library, without site-packages."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.iterdir() if p.name not in ("site-packages", "__pycache__"))


def _say(msg: str) -> None:
    print(f"[quickstart] {msg}", file=sys.stderr, flush=True)


def train_tokenizer(files: list[Path], vocab_size: int, out: Path, max_bytes: int) -> Path:
    """Trains a byte-level BPE on (up to ``max_bytes`` of) the corpus; writes tokenizer.json."""
    try:
        from tokenizers import (
            Regex,
            Tokenizer,
            decoders,
            models,
            normalizers,
            pre_tokenizers,
            trainers,
        )
    except ImportError as e:  # pragma: no cover - depends on the install
        raise SystemExit(
            "aprx quickstart trains its tokenizer with the `tokenizers` library: "
            "pip install 'aprx[quickstart]'"
        ) from e

    def texts() -> Any:
        seen = 0
        for f in files:
            for p in sorted(f.rglob("*.py")) if f.is_dir() else [f]:
                try:
                    t = p.read_text(encoding="utf-8")
                except (UnicodeDecodeError, OSError):
                    continue
                yield t
                seen += len(t)
                if seen >= max_bytes:
                    return

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PATTERNS["qwen2"]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts(), trainer=trainer)
    path = out / "tokenizer.json"
    tok.save(str(path))
    return path


#: The largest vocabulary quickstart trains: ids up to aprx's largest (its packed merge table).
MAX_VOCAB = MAX_ID + 1


def check_args(args: argparse.Namespace) -> None:
    """Rejects settings the run would only fail on after minutes of work, or that would abort
    the process (the tokenizer trainer allocates a table per vocab entry up front)."""
    from aprx.errors import TrainingError

    def bad(what: str) -> TrainingError:
        return TrainingError(what, "APRX-R405")

    if not is_int(args.steps, 1):
        raise bad(f"steps must be a positive integer, got {args.steps!r}")
    v = args.vocab_size
    if not is_int(v, 257, MAX_VOCAB):
        raise bad(
            f"vocab_size must be an integer from 257 (the 256 bytes and <|endoftext|>) to "
            f"{MAX_VOCAB}, got {v!r}"
        )
    t = args.target_val_loss
    if t is not None and not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0):
        raise bad(f"target_val_loss must be a positive finite number, got {t!r}")


def quickstart(args: argparse.Namespace) -> int:
    from aprx.corpus import encode_corpus
    from aprx.importer import import_hf
    from aprx.preflight import preflight

    check_args(args)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    corpus = stdlib_corpus()
    _say(f"corpus: the standard library at {Path(sysconfig.get_paths()['stdlib'])}")

    _say(f"1/5 training a {args.vocab_size}-token byte-level BPE on it (tokenizers library)")
    hf_dir = out / "hf-tokenizer"
    hf_dir.mkdir(exist_ok=True)
    tj = train_tokenizer(corpus, args.vocab_size, hf_dir, max_bytes=8 << 20)

    _say("2/5 importing it: aprx tokenize import-hf --include-added-tokens")
    tok_dir = out / "tokenizer"
    tm = import_hf(tj, tok_dir, include_added_tokens=True, overwrite=True)
    vocab = int(tm["effective_vocab_size"])

    _say("3/5 encoding the corpus into shards: aprx tokenize encode-corpus")
    shards = out / "shards"
    sm = encode_corpus(
        corpus,
        tok_dir,
        shards,
        shard_tokens=2_000_000,
        text_extensions=["py"],
        on_error="skip",  # a few stdlib test files are deliberately not UTF-8
        overwrite=True,
        quiet=False,
    )
    _say(
        f"    {sm['total_documents']} documents, {sm['total_tokens']} tokens in "
        f"{len(sm['shards'])} shards, {sm['skipped_count']} files skipped (listed in the "
        f"manifest), {sm['run']['tokens_per_s'] / 1e6:.1f} M tokens/s"
    )

    config = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": 128,
        "intermediate_size": 384,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": vocab,
        "max_position_embeddings": 1024,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
    }
    cfg_path = out / "model-config.json"
    cfg_path.write_text(json.dumps(config, indent=2) + "\n")

    _say("4/5 preflight: aprx preflight")
    seq_len, batch = 128, 16
    report = preflight(
        tok_dir, shards, config=cfg_path, seq_len=seq_len, batch_size=batch, steps=args.steps,
        val_fraction=0.05,
    )  # fmt: skip
    for g in report.gates:
        _say(f"    {g.status:4} {g.id}: {g.message}")
    report.raise_for_failures()

    # Uniform guessing scores ln(V); the verdict asks for a model that has clearly learned.
    target = args.target_val_loss or round(0.75 * math.log(vocab), 2)
    _say(f"5/5 training a tiny Qwen2-architecture model for {args.steps} steps on {args.device}")
    from aprx.train import train

    run_dir = out / "run"
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)  # a previous quickstart's run: start over
    result = train(
        tokenizer=str(tok_dir),
        dataset=str(shards),
        config=str(cfg_path),
        output=str(run_dir),
        steps=args.steps,
        seq_len=seq_len,
        batch_size=batch,
        lr=3e-3,
        val_fraction=0.05,
        val_interval=max(args.steps // 5, 1),
        target_val_loss=target,
        device=args.device,
        preflight_report=report,
        resume=False,
        save_final=True,
    )
    passed = result.get("verdict") == "pass"
    summary: Dict[str, Any] = {
        "verdict": "PASS" if passed else "FAIL",
        "val_loss": result.get("final_val_loss"),
        "target_val_loss": target,
        "elapsed_s": round(time.time() - t0, 1),
        "artefacts": {
            "hf_tokenizer_json": str(tj),
            "tokenizer_dir": str(tok_dir),
            "shards": str(shards),
            "model_config": str(cfg_path),
            "run": str(run_dir),
            "report": str(run_dir / "report.json"),
            "metrics": str(run_dir / "metrics.jsonl"),
            "loss_plot": str(result.get("plot")),
            "model": str(result.get("model_dir")),
        },
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"\naprx quickstart: {summary['verdict']}: val_loss {summary['val_loss']} "
            f"(target < {target}; uniform guessing = {math.log(vocab):.2f}) "
            f"in {summary['elapsed_s']} s"
        )
        for k, v in summary["artefacts"].items():
            print(f"  {k:18} {v}")
    return 0 if passed else 1
