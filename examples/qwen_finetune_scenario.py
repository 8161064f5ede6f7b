"""The seed scenario, end to end: a Qwen2 tokenizer, the 50257-vs-151936 preflight failure,
the corpus encoded with the Qwen vocabulary, the relaxed preflight against a Qwen2-architecture
checkpoint (vocab 151936), a 500-step fine-tune and the val_loss verdict.

    python examples/qwen_finetune_scenario.py                 # CPU, a small random checkpoint
    python examples/qwen_finetune_scenario.py --init Qwen2.5-Coder-0.5B --device cuda \
        --tokenizer-json Qwen2.5-Coder-0.5B/tokenizer.json --seq-len 1024 --batch-size 8 --lr 2e-5

Without --tokenizer-json, the Qwen2 vocabulary comes from the tiktoken rank file in the
`dashscope` wheel (downloaded with pip). Without --init, a small Qwen2-architecture checkpoint
with the real vocabulary size (151936 rows) is created with random weights, carrying the
tokenizer the way HF checkpoints do.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

import aprx
from aprx.errors import PreflightError


def qwen_rank_file(work: Path) -> Path:
    """qwen.tiktoken from the dashscope wheel (151643 ranks)."""
    out = work / "qwen.tiktoken"
    if not out.exists():
        wheels = work / "wheels"
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "dashscope", "-d", str(wheels)],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        whl = next(wheels.glob("dashscope-*.whl"))
        with zipfile.ZipFile(whl) as z:
            out.write_bytes(z.read("dashscope/resources/qwen.tiktoken"))
    return out


def gpt2_style_tokenizer(qwen_json: Path, out: Path) -> Path:
    """The legacy 50257-entry GPT-2-style tokenizer (50000 merges + <|endoftext|>)."""
    doc = json.loads(qwen_json.read_text(encoding="utf-8"))
    merges = doc["model"]["merges"][:50000]
    keep = {t: i for t, i in doc["model"]["vocab"].items() if i < 256 + 50000}
    doc["model"]["vocab"] = keep
    doc["model"]["merges"] = merges
    doc["added_tokens"] = [
        {"id": 50256, "content": "<|endoftext|>", "single_word": False, "lstrip": False,
         "rstrip": False, "normalized": False, "special": True}
    ]  # fmt: skip
    out.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return out


def small_checkpoint(tok_dir: Path, out: Path) -> Path:
    """A random Qwen2-architecture checkpoint with 151936 vocabulary rows + its tokenizer."""
    from aprx.checkpoint import save_hf_checkpoint
    from aprx.model import build_model
    from aprx.preflight import ModelConfig

    cfg = ModelConfig(
        vocab_size=151936, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        rope_theta=1000000.0, tie_word_embeddings=True,
    )  # fmt: skip
    model = build_model(cfg, seed=0)
    files = {n: tok_dir / n for n in ("tokenizer.json", "vocab.json", "merges.txt")}
    save_hf_checkpoint(model, out, extra_files=files)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="aprx-scenario", help="working directory")
    ap.add_argument("--tokenizer-json", help="the model's tokenizer.json (default: rebuilt)")
    ap.add_argument("--init", help="HF checkpoint directory (default: a small random one)")
    ap.add_argument("--corpus", nargs="*", help="corpus paths (default: the stdlib)")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--lr",
        type=float,
        default=1e-3,
        help="peak learning rate (e.g. 2e-5 to fine-tune a real checkpoint)",
    )
    ap.add_argument("--target-val-loss", type=float, default=9.38)
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    print("1. import the Qwen2 tokenizer", flush=True)
    qwen_dir = work / "tok-qwen2"
    if args.tokenizer_json:
        m = aprx.import_hf(args.tokenizer_json, qwen_dir, include_added_tokens=True,
                           overwrite=True)  # fmt: skip
    else:
        m = aprx.import_tiktoken(qwen_rank_file(work), qwen_dir, "qwen2", overwrite=True)
    print(f"   {m['bpe_vocab_size']} vocab, {m['merges_count']} merges, "
          f"{m['added_tokens_count']} added, effective {m['effective_vocab_size']}")  # fmt: skip

    init = Path(args.init) if args.init else small_checkpoint(qwen_dir, work / "ckpt-qwen2")
    corpus = args.corpus or sorted(
        p for p in Path(sysconfig.get_paths()["stdlib"]).iterdir()
        if p.name not in ("site-packages", "__pycache__")
    )  # fmt: skip

    print("2. the legacy 50257-entry tokenizer against the Qwen2 checkpoint", flush=True)
    with tempfile.TemporaryDirectory() as d:
        legacy_json = gpt2_style_tokenizer(qwen_dir / "tokenizer.json", Path(d) / "t.json")
        legacy = work / "tok-legacy-50257"
        aprx.import_hf(legacy_json, legacy, include_added_tokens=True, overwrite=True)
    legacy_shards = work / "shards-legacy"
    aprx.encode_corpus(corpus[:3], legacy, legacy_shards, overwrite=True, on_error="skip",
                       text_extensions=["py"])  # fmt: skip
    report = aprx.preflight.preflight(legacy, legacy_shards, init=init, seq_len=args.seq_len,
                                      batch_size=args.batch_size)  # fmt: skip
    for g in report.gates:
        if g.status in ("fail", "pass") and g.id in ("vocab-size", "tokenizer-identity"):
            print(f"   {g.status:4} {g.id}: {g.message}")
    assert not report.ok, "the legacy tokenizer must not pass against a Qwen checkpoint"

    print("3. encode the corpus with the Qwen2 vocabulary", flush=True)
    shards = work / "shards-qwen2"
    sm = aprx.encode_corpus(corpus, qwen_dir, shards, overwrite=True, on_error="skip",
                            text_extensions=["py"], quiet=False)  # fmt: skip
    print(f"   {sm['total_documents']} documents, {sm['total_tokens']} tokens, "
          f"{sm['run']['tokens_per_s'] / 1e6:.1f} M tokens/s")  # fmt: skip

    print("4. relaxed preflight: tokenizer ids <= checkpoint rows", flush=True)
    report = aprx.preflight.preflight(qwen_dir, shards, init=init, seq_len=args.seq_len,
                                      batch_size=args.batch_size, steps=args.steps,
                                      val_fraction=0.02)  # fmt: skip
    for g in report.gates:
        print(f"   {g.status:4} {g.id}: {g.message}")
    try:
        report.raise_for_failures()
    except PreflightError as e:
        print(f"preflight failed: {e}")
        return 2

    print(f"5. fine-tune {args.steps} steps on {args.device}", flush=True)
    run = work / "run"
    if run.exists():
        import shutil

        shutil.rmtree(run)
    result = aprx.train.train(
        tokenizer=str(qwen_dir), dataset=str(shards), init=str(init), output=str(run),
        steps=args.steps, seq_len=args.seq_len, batch_size=args.batch_size, lr=args.lr,
        val_fraction=0.02, val_interval=max(args.steps // 5, 1),
        target_val_loss=args.target_val_loss, device=args.device, preflight_report=report,
    )  # fmt: skip
    print(f"\nverdict: {result['verdict'].upper()}: val_loss {result['final_val_loss']:.4f} "
          f"(target < {args.target_val_loss}; uniform over 151936 = {math.log(151936):.2f}); "
          f"report {run / 'report.json'}, plot {result.get('plot')}")  # fmt: skip
    return 0 if result["verdict"] == "pass" else 1


if __name__ == "__main__":
    sys.exit(main())
