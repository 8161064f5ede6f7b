"""When each thread of one encode-corpus call ran, and how much of the two cores sat idle
(Linux, needs ``perf``): the call is recorded with ``perf sched record`` and its
``perf sched timehist`` is summed per thread in time buckets, from the reader's first run to
the last run of the threads that finish a shard. A pipeline that keeps the cores busy shows
little idle time: then only less CPU work makes the call faster. Documents: the interpreter's
standard library as one JSONL file, Qwen2 vocabulary, a freshly loaded tokenizer warmed up on
one short text, as in ``threads.py``::

    python benches/timeline.py                      # 2 workers, 10 ms buckets
    python benches/timeline.py --workers 2 --bucket-ms 5 --copies 2
    python benches/timeline.py --format jsonl.gz    # or jsonl.zst, parquet
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Tuple

import corpus_files  # benches/corpus_files.py

TESTS = Path(__file__).resolve().parent.parent / "tests"

# The threads whose last run ends the call's pipeline (the manifest follows the shard's close).
FINISHING = ("aprx-shard", "aprx-writer", "aprx-hash", "aprx-corpus")


def _child(corpus: Path, tok_dir: Path, out: Path, workers: int) -> None:
    import numpy  # noqa: F401  (imported first, as in threads.py)

    import aprx
    from aprx.corpus import encode_corpus

    tok = aprx.Tokenizer.from_file(tok_dir)
    tok.encode_batch(["warm-up"] * 2, ordinary=True, num_threads=workers)
    m = encode_corpus(corpus, tok, out, num_workers=workers, overwrite=True, eos_policy="none")
    rate = m["run"]["tokens_per_s"] / 1e6
    print(f"{m['total_tokens']:,} tokens, {rate:.1f} M tokens/s (the manifest's clock)")


def _runs(timehist: str) -> List[Tuple[float, float, str]]:
    """(start, end, thread name) in seconds of every run ``perf sched timehist`` lists."""
    runs = []
    for line in timehist.splitlines():
        f = line.split()
        if len(f) < 6 or not f[1].startswith("["):
            continue
        try:
            end, ran_ms = float(f[0]), float(f[-1])
        except ValueError:
            continue  # the header
        name = re.sub(r"\[[\d/]+\]$", "", f[2])
        runs.append((end - ran_ms / 1e3, end, name))
    return runs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--copies", type=int, default=1)
    ap.add_argument("--bucket-ms", type=float, default=10.0)
    ap.add_argument("--corpus", type=Path, help="encode this corpus instead")
    ap.add_argument("--format", choices=corpus_files.FORMATS, default="jsonl", help="the stdlib's")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        corpus, tok_dir, out = map(Path, args.child)
        _child(corpus, tok_dir, out, args.workers)
        return 0

    sys.path.insert(0, str(TESTS))
    import fixtures

    from aprx.importer import import_hf

    with tempfile.TemporaryDirectory(prefix="aprx-timeline-") as tmp_s:
        tmp = Path(tmp_s)
        import_hf(fixtures.qwen2_tokenizer_json(), tmp / "tok", include_added_tokens=True)
        if args.corpus:
            corpus = args.corpus.resolve()
        else:
            texts = fixtures.stdlib_texts() * args.copies
            corpus = corpus_files.write_file(tmp / "docs", texts, args.format)
        data = tmp / "sched.data"
        child = [sys.executable, __file__, "--workers", str(args.workers), "--child"]
        child += [str(corpus), str(tmp / "tok"), str(tmp / "out")]
        rec = subprocess.run(
            ["perf", "sched", "record", "-o", str(data), "--", *child],
            capture_output=True,
            text=True,
        )
        if rec.returncode != 0:
            print(rec.stderr, file=sys.stderr)
            return 1
        print(rec.stdout.strip())
        hist = subprocess.run(
            ["perf", "sched", "timehist", "-i", str(data)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    runs = _runs(hist)
    reader = [r for r in runs if r[2].startswith("aprx-reader")]
    finishing = [r for r in runs if r[2].startswith(FINISHING)]
    if not reader or not finishing:
        print("no aprx-reader / shard threads in the recording", file=sys.stderr)
        return 1
    t0 = min(r[0] for r in reader)
    t1 = max(r[1] for r in finishing)
    width = args.bucket_ms
    buckets: Dict[int, Dict[str, float]] = collections.defaultdict(
        lambda: collections.defaultdict(float)
    )
    totals: Dict[str, float] = collections.defaultdict(float)
    for start, end, name in runs:
        lo, hi = (max(start, t0) - t0) * 1e3, (min(end, t1) - t0) * 1e3
        b = int(lo // width)
        while b * width < hi:
            part = min(hi, (b + 1) * width) - max(lo, b * width)
            if part > 0:
                buckets[b][name] += part
                totals[name] += part
            b += 1
    window = (t1 - t0) * 1e3
    print(
        f"window {window:.1f} ms (reader's first run to the last shard thread's), "
        f"{width:g} ms buckets; per bucket: CPU ms busy, idle, then each thread"
    )
    for b in sorted(buckets):
        row = buckets[b]
        busy = sum(v for k, v in row.items() if k != "<idle>")
        parts = " ".join(
            f"{k}:{v:.1f}"
            for k, v in sorted(row.items(), key=lambda kv: -kv[1])
            if v >= 0.3 and k != "<idle>"
        )
        print(f"{b * width:6.0f} ms  busy {busy:5.1f}  idle {row.get('<idle>', 0.0):4.1f}  {parts}")
    busy = sum(v for k, v in totals.items() if k != "<idle>")
    print(
        f"total: busy {busy:.1f} ms, idle {totals.get('<idle>', 0.0):.1f} ms "
        f"of {window:.1f} ms on the CPUs the recording saw"
    )
    for name, ms in sorted(totals.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {name:24s} {ms:7.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
