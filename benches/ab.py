"""A/B of two aprx builds: a one-thread ``encode_ordinary`` loop (or ``--api encode_batch`` /
``encode_batch_flat`` on ``--threads`` threads) over the standard library, each run in a fresh
process with a freshly loaded tokenizer (every document once, cold caches, as in
``compare.py``), the builds' runs alternating so that both see the same machine. Each build is
a directory holding an ``aprx`` package, e.g. an unpacked wheel (``python -m zipfile -e
aprx-*.whl DIR``); ``-`` is the installed one::

    python benches/ab.py /tmp/before /tmp/after --runs 10
    python benches/ab.py /tmp/before - --runs 10 --non-ascii   # only the non-ASCII documents
    python benches/ab.py /tmp/before - --api encode_batch --threads 2
    python benches/ab.py /tmp/before - --api encode-corpus --threads 2   # JSONL in, shards out
    python benches/ab.py /tmp/before - --api encode-corpus --threads 2 --tree  # a .py tree in
    python benches/ab.py /tmp/before - --api encode-corpus --threads 2 --format jsonl.gz
    # 10 copies of the stdlib as 16 .jsonl.gz files in a directory:
    python benches/ab.py /tmp/before - --api encode-corpus --threads 16 --format jsonl.gz \
        --copies 10 --files 16
    # 22,347 files of at most 40 lines, 16 shards:
    python benches/ab.py /tmp/before - --api encode-corpus --threads 2 --tree --doc-lines 40 \
        --shard-tokens 500000

Prints the median, best and worst M tokens/s of each build, the rate over all its runs
together (tokens over the mean time: the mean that a slow run weighs in), the median CPU time
of the timed call (all threads; steadier than the rate on a noisy machine), and the ratio of
the medians.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Tuple

import corpus_files  # benches/corpus_files.py

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import os, sys, time
sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
import numpy  # before the timer: numpy's import starts an OpenBLAS thread that spins a while
import fixtures
import aprx
from aprx.corpus import encode_corpus
api, threads = sys.argv[3], int(sys.argv[4])
if api != "encode-corpus":  # which reads the JSONL the parent wrote
    texts = fixtures.stdlib_texts()
    if sys.argv[2] == "1":
        texts = [t for t in texts if not t.isascii()]
tok = aprx.Tokenizer.from_file(fixtures.qwen2_tokenizer_json())
if api == "encode_ordinary":
    tok.encode_ordinary("warm-up")
    c0, t0 = time.process_time(), time.perf_counter()
    ids = [tok.encode_ordinary(t) for t in texts]
    wall = time.perf_counter() - t0
    n = sum(len(x) for x in ids)
elif api == "encode_batch":
    tok.encode_batch(["warm-up"] * 2, ordinary=True, num_threads=threads)
    c0, t0 = time.process_time(), time.perf_counter()
    ids = tok.encode_batch(texts, ordinary=True, num_threads=threads)
    wall = time.perf_counter() - t0
    n = sum(len(x) for x in ids)
elif api == "encode_batch_flat":
    tok.encode_batch_flat(["warm-up"] * 2, ordinary=True, num_threads=threads)
    c0, t0 = time.process_time(), time.perf_counter()
    flat, offsets = tok.encode_batch_flat(texts, ordinary=True, num_threads=threads)
    wall = time.perf_counter() - t0
    n = len(flat)
else:
    tok.encode_batch(["warm-up"] * 2, ordinary=True, num_threads=threads)
    time.sleep(0.2)  # numpy's OpenBLAS thread, started by the warm-up's array, goes to sleep
    c0, t0 = time.process_time(), time.perf_counter()
    m = encode_corpus(sys.argv[5], tok, sys.argv[6], num_workers=threads, overwrite=True,
                      eos_policy="none", shard_tokens=int(sys.argv[7]))
    wall = time.perf_counter() - t0
    n = m["total_tokens"]
cpu = time.process_time() - c0
print(n / wall / 1e6, cpu, aprx.__file__)
"""


def run(
    build: str,
    non_ascii: bool,
    api: str,
    threads: int,
    corpus: Path,
    tmp: Path,
    shard_tokens: int,
) -> Tuple[float, float]:
    """(M tokens/s, CPU seconds) of one timed call in a fresh process."""
    env = dict(os.environ)
    if build != "-":
        env["PYTHONPATH"] = os.path.abspath(build)
    argv = [sys.executable, "-c", CHILD, str(ROOT), "1" if non_ascii else "0", api, str(threads)]
    argv += [str(corpus), str(tmp / "shards"), str(shard_tokens)]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout.split()
    # Untimed, as in compare.py and scaling.py: the next run then has no earlier shards to
    # delete (`overwrite`) while it runs.
    shutil.rmtree(tmp / "shards", ignore_errors=True)
    rate, cpu, where = float(out[0]), float(out[1]), out[2]
    if build != "-" and not where.startswith(os.path.abspath(build)):
        raise SystemExit(f"{build}: imported aprx from {where}, not from the build given")
    return rate, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("builds", nargs=2, help="directories holding an aprx package, or -")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--non-ascii", action="store_true", help="only the non-ASCII documents")
    ap.add_argument(
        "--api",
        choices=["encode_ordinary", "encode_batch", "encode_batch_flat", "encode-corpus"],
        default="encode_ordinary",
    )
    ap.add_argument("--threads", type=int, default=1, help="for the batch APIs and encode-corpus")
    ap.add_argument(
        "--tree",
        action="store_true",
        help="encode-corpus reads the documents as a tree of .py files (one document each), "
        "not as one JSONL file",
    )
    ap.add_argument(
        "--doc-lines",
        type=int,
        default=0,
        help="encode-corpus: each file cut into documents of at most this many lines",
    )
    ap.add_argument("--shard-tokens", type=int, default=10_000_000, help="encode-corpus")
    ap.add_argument(
        "--format",
        choices=corpus_files.FORMATS,
        default="jsonl",
        help="encode-corpus: the corpus files' format (not with --tree)",
    )
    ap.add_argument(
        "--files",
        type=int,
        default=1,
        help="encode-corpus: the documents cut into this many files of --format, in order, "
        "in one directory",
    )
    ap.add_argument("--copies", type=int, default=1, help="encode-corpus: the stdlib N times")
    args = ap.parse_args()
    corpus_args = args.tree or args.doc_lines or args.format != "jsonl" or args.files > 1
    if (corpus_args or args.copies > 1) and args.api != "encode-corpus":
        ap.error("--tree, --doc-lines, --format, --files and --copies are for encode-corpus")
    if args.tree and (args.format != "jsonl" or args.files > 1):
        ap.error("--tree reads .py files; --format and --files are for corpus files")
    if args.builds[0] == args.builds[1]:
        ap.error("give two different builds")
    rates: Dict[str, List[float]] = {b: [] for b in args.builds}
    cpus: Dict[str, List[float]] = {b: [] for b in args.builds}
    with tempfile.TemporaryDirectory(prefix="aprx-ab-") as tmp_s:
        tmp = Path(tmp_s)
        corpus = tmp / "docs.jsonl"  # read by the encode-corpus child only
        if args.api == "encode-corpus":
            sys.path.insert(0, str(ROOT / "tests"))
            import fixtures

            texts = fixtures.stdlib_texts()
            if args.non_ascii:
                texts = [t for t in texts if not t.isascii()]
            texts = corpus_files.cut(texts, args.doc_lines) * args.copies
            if args.tree:
                corpus = corpus_files.write_tree(tmp / "tree", texts)
            elif args.files > 1:
                corpus = corpus_files.write_files(tmp / "corpus", texts, args.format, args.files)
            else:
                corpus = corpus_files.write_file(tmp / "docs", texts, args.format)
        for _ in range(args.runs):
            for b in args.builds:
                rate, cpu = run(
                    b, args.non_ascii, args.api, args.threads, corpus, tmp, args.shard_tokens
                )
                rates[b].append(rate)
                cpus[b].append(cpu)
    print(f"command: python benches/ab.py {' '.join(sys.argv[1:])}")
    medians = []
    for b, v in rates.items():
        medians.append(statistics.median(v))
        print(
            f"{b}: median {medians[-1]:.1f}, best {max(v):.1f}, worst {min(v):.1f}, over all "
            f"{statistics.harmonic_mean(v):.1f} M tokens/s over {len(v)} runs; "
            f"CPU median {statistics.median(cpus[b]) * 1e3:.0f} ms"
        )
    print(f"second / first, medians: {medians[1] / medians[0]:.3f}x")


if __name__ == "__main__":
    main()
