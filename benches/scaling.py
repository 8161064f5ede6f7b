"""Worker scaling: aprx's `encode_batch` and `encode-corpus` at several thread / worker counts,
on the standard library written `--copies` times over as one JSONL file (so a many-core machine
gets a corpus long enough to keep its workers busy), each measurement in a fresh process with a
freshly loaded tokenizer (cold tables, as in `compare.py`), rounds interleaved.

    python benches/scaling.py                              # 1,2 workers, 1 copy, 3 rounds
    python benches/scaling.py --copies 3 --workers 1,2,4,8,16 --rounds 3
    python benches/scaling.py --doc-lines 4        # many small documents: files cut in 4-line parts
    python benches/scaling.py --append-comment     # every document non-ASCII (a CJK comment added)
    python benches/scaling.py --workers 2 --modes encode-corpus --shard-tokens 1000000  # 8 shards

Prints, per mode and count, the best and the median rate in M tokens/s and the cores used (CPU
time / wall time) in the best run. Ids are not checked here (`compare.py` checks them against
HF); the token totals of the modes must agree, and the script fails if they do not.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

import corpus_files  # benches/corpus_files.py

TESTS = Path(__file__).resolve().parent.parent / "tests"
MODES = ("encode_batch", "encode-corpus", "encode_ordinary-loop")
CJK_COMMENT = "\n# 中文注释：说明这个函数的用途。\n"


def _child(mode: str, workers: int, tmp: Path, shard_tokens: int) -> Dict[str, float]:
    # numpy first, as in compare.py: its OpenBLAS threads spin for about 0.1 s after numpy is
    # imported, which the warm-up call (aprx's first numpy array) would otherwise do just
    # before the timed call, taking a core from it.
    import numpy  # noqa: F401

    import aprx
    from aprx.corpus import encode_corpus

    docs = tmp / "docs.jsonl"
    tok = aprx.Tokenizer.from_file(tmp / "tokenizer")
    tok.encode_batch(["warm-up"] * 2, ordinary=True, num_threads=2)
    if mode in ("encode_batch", "encode_ordinary-loop"):
        with open(docs, encoding="utf-8") as f:
            texts = [json.loads(line)["content"] for line in f]
        c0, t0 = time.process_time(), time.perf_counter()
        if mode == "encode_batch":
            ids = tok.encode_batch(texts, ordinary=True, num_threads=workers)
        else:  # one call per text, from Python (one thread)
            ids = [tok.encode_ordinary(t) for t in texts]
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        tokens = sum(len(x) for x in ids)
    else:
        c0, t0 = time.process_time(), time.perf_counter()
        manifest = encode_corpus(
            docs,
            tok,
            tmp / "shards",
            num_workers=workers,
            overwrite=True,
            eos_policy="none",
            shard_tokens=shard_tokens,
        )
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        tokens = manifest["total_tokens"]
        # Untimed: the next run then has no earlier shards to delete (`overwrite`) while it runs.
        shutil.rmtree(tmp / "shards")
    return {"tokens": tokens, "seconds": wall, "cpu_seconds": cpu}


def _counts(value: str) -> List[int]:
    counts = [int(v) for v in value.split(",") if v.strip()]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected counts >= 1 such as 1,2,4: {value!r}")
    return counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=_counts, default=[1, 2], help="e.g. 1,2,4,8,16")
    ap.add_argument("--copies", type=int, default=1, help="times the stdlib is written")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; best and median reported")
    ap.add_argument(
        "--modes",
        default="encode_batch,encode-corpus",
        help=f"comma-separated, of {', '.join(MODES)} (the loop runs for 1 worker only)",
    )
    ap.add_argument(
        "--doc-lines",
        type=int,
        default=0,
        help="cut each file into documents of this many lines (0: a document per file), to "
        "measure the cost per document",
    )
    ap.add_argument(
        "--append-comment",
        action="store_true",
        help=f"append {CJK_COMMENT!r} to every document, so every one is a non-ASCII string "
        "(CPython makes its UTF-8 on first use, with the GIL held)",
    )
    ap.add_argument(
        "--shard-tokens",
        type=int,
        default=10_000_000,
        help="encode-corpus's shard size (smaller: more shards to complete along the way)",
    )
    ap.add_argument("--_child", nargs=3, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        mode, workers, tmp = args._child
        print(json.dumps(_child(mode, int(workers), Path(tmp), args.shard_tokens)))
        return 0

    sys.path.insert(0, str(TESTS))
    import fixtures

    from aprx.importer import import_hf

    modes = [m for m in args.modes.split(",") if m]
    if not modes or set(modes) - set(MODES):
        ap.error(f"--modes: expected some of {', '.join(MODES)}, got {args.modes!r}")
    texts = corpus_files.cut(fixtures.stdlib_texts(), args.doc_lines)
    if args.append_comment:
        texts = [t + CJK_COMMENT for t in texts]
    with tempfile.TemporaryDirectory(prefix="aprx-scaling-") as tmp_s:
        tmp = Path(tmp_s)
        corpus_files.write_jsonl(tmp / "docs.jsonl", texts * args.copies)
        import_hf(fixtures.qwen2_tokenizer_json(), tmp / "tokenizer", include_added_tokens=True)
        size = (tmp / "docs.jsonl").stat().st_size
        what = f"{args.doc_lines}-line parts of stdlib files" if args.doc_lines else "stdlib files"
        what += ", a CJK comment appended to each" if args.append_comment else ""
        print(f"{len(texts)} documents ({what}) x {args.copies}, {size / 1e6:.1f} MB of JSONL")
        runs: Dict[Tuple[str, int], List[Dict[str, float]]] = {}
        for _ in range(args.rounds):
            for workers in args.workers:
                for mode in modes:
                    if mode == "encode_ordinary-loop" and workers != 1:
                        continue
                    cmd = [sys.executable, __file__, "--_child", mode, str(workers), str(tmp)]
                    cmd += ["--shard-tokens", str(args.shard_tokens)]
                    out = subprocess.run(cmd, capture_output=True, text=True)
                    if out.returncode != 0:
                        print(f"{mode} {workers} workers failed:\n{out.stderr}", file=sys.stderr)
                        return 1
                    runs.setdefault((mode, workers), []).append(
                        json.loads(out.stdout.strip().splitlines()[-1])
                    )
    totals = {r["tokens"] for rs in runs.values() for r in rs}
    if len(totals) != 1:
        print(f"token totals differ between runs: {sorted(totals)}", file=sys.stderr)
        return 1
    for (mode, workers), rs in sorted(runs.items()):
        best = min(rs, key=lambda r: r["seconds"])
        median = statistics.median(r["seconds"] for r in rs)
        print(
            f"{mode:20s} {workers:3d} workers: best {best['tokens'] / best['seconds'] / 1e6:7.1f}"
            f" M tok/s, median {best['tokens'] / median / 1e6:7.1f}, cores "
            f"{best['cpu_seconds'] / best['seconds']:.2f} ({int(best['tokens']):,} tokens)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
