"""A/B of two aprx builds: a one-thread ``encode_ordinary`` loop (or ``--api encode_batch`` /
``encode_batch_flat`` on ``--threads`` threads) over the standard library, each run in a fresh
process with a freshly loaded tokenizer (every document once, cold caches, as in
``compare.py``), the builds' runs alternating so that both see the same machine. Each build is
a directory holding an ``aprx`` package, e.g. an unpacked wheel (``python -m zipfile -e
aprx-*.whl DIR``); ``-`` is the installed one::

    python benches/ab.py /tmp/before /tmp/after --runs 10
    python benches/ab.py /tmp/before - --runs 10 --non-ascii   # only the non-ASCII documents
    python benches/ab.py /tmp/before - --api encode_batch --threads 2

Prints the median and best M tokens/s of each build and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import os, sys, time
sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
import numpy  # before the timer: numpy's import starts an OpenBLAS thread that spins a while
import fixtures
import aprx
texts = fixtures.stdlib_texts()
if sys.argv[2] == "1":
    texts = [t for t in texts if not t.isascii()]
tok = aprx.Tokenizer.from_file(fixtures.qwen2_tokenizer_json())
api, threads = sys.argv[3], int(sys.argv[4])
if api == "encode_ordinary":
    tok.encode_ordinary("warm-up")
    t0 = time.perf_counter()
    ids = [tok.encode_ordinary(t) for t in texts]
    wall = time.perf_counter() - t0
    n = sum(len(x) for x in ids)
elif api == "encode_batch":
    tok.encode_batch(["warm-up"] * 2, ordinary=True, num_threads=threads)
    t0 = time.perf_counter()
    ids = tok.encode_batch(texts, ordinary=True, num_threads=threads)
    wall = time.perf_counter() - t0
    n = sum(len(x) for x in ids)
else:
    tok.encode_batch_flat(["warm-up"] * 2, ordinary=True, num_threads=threads)
    t0 = time.perf_counter()
    flat, offsets = tok.encode_batch_flat(texts, ordinary=True, num_threads=threads)
    wall = time.perf_counter() - t0
    n = len(flat)
print(n / wall / 1e6, aprx.__file__)
"""


def run(build: str, non_ascii: bool, api: str, threads: int) -> float:
    env = dict(os.environ)
    if build != "-":
        env["PYTHONPATH"] = os.path.abspath(build)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(ROOT), "1" if non_ascii else "0", api, str(threads)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    rate, where = float(out[0]), out[1]
    if build != "-" and not where.startswith(os.path.abspath(build)):
        raise SystemExit(f"{build}: imported aprx from {where}, not from the build given")
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("builds", nargs=2, help="directories holding an aprx package, or -")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--non-ascii", action="store_true", help="only the non-ASCII documents")
    ap.add_argument(
        "--api",
        choices=["encode_ordinary", "encode_batch", "encode_batch_flat"],
        default="encode_ordinary",
    )
    ap.add_argument("--threads", type=int, default=1, help="for the batch APIs")
    args = ap.parse_args()
    rates: dict[str, list[float]] = {b: [] for b in args.builds}
    for _ in range(args.runs):
        for b in args.builds:
            rates[b].append(run(b, args.non_ascii, args.api, args.threads))
    print(f"command: python benches/ab.py {' '.join(sys.argv[1:])}")
    medians = []
    for b, v in rates.items():
        medians.append(statistics.median(v))
        print(f"{b}: median {medians[-1]:.1f}, best {max(v):.1f} M tokens/s over {len(v)} runs")
    print(f"second / first, medians: {medians[1] / medians[0]:.3f}x")


if __name__ == "__main__":
    main()
