"""Pass by pass: aprx's `encode_batch` over the standard library on 1 and on N threads, several
passes in one process, each pass with a freshly loaded tokenizer (cold tables, as in
`compare.py`), so the first pass of a fresh process (fresh malloc arenas: page faults) and the
later ones (memory already mapped) show apart.

    python benches/passes.py                 # 1 and 2 threads, 4 passes each, 2 processes each
    python benches/passes.py --threads 1,2 --passes 4 --processes 3

Prints, per thread count and pass index, the median wall time, CPU time and minor page faults
over the processes, then the N-thread / 1-thread speed ratio per pass index.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

TESTS = Path(__file__).resolve().parent.parent / "tests"


def _child(threads: int, passes: int) -> List[Dict[str, float]]:
    sys.path.insert(0, str(TESTS))
    import fixtures

    import aprx

    texts = fixtures.stdlib_texts()
    path = fixtures.qwen2_tokenizer_json()
    out = []
    for _ in range(passes):
        tok = aprx.Tokenizer.from_file(path)
        tok.encode_batch(["warm-up"] * max(2, threads), ordinary=True, num_threads=threads)
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        ids = tok.encode_batch(texts, ordinary=True, num_threads=threads)
        wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
        out.append(
            {
                "wall": wall,
                "cpu": (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime),
                "sys": r1.ru_stime - r0.ru_stime,
                "faults": r1.ru_minflt - r0.ru_minflt,
                "tokens": sum(len(a) for a in ids),
            }
        )
        del ids, tok
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--passes", type=int, default=4)
    ap.add_argument("--processes", type=int, default=2, help="fresh processes per thread count")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(_child(args.child, args.passes)))
        return
    counts = [int(t) for t in args.threads.split(",")]
    runs: Dict[int, List[List[Dict[str, float]]]] = {n: [] for n in counts}
    for _ in range(args.processes):
        for n in counts:  # interleaved, so slow phases of the machine hit every count
            cmd = [sys.executable, __file__, "--child", str(n), "--passes", str(args.passes)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            runs[n].append(json.loads(out.splitlines()[-1]))
    print(f"encode_batch, stdlib, Qwen2; median over {args.processes} processes per row")
    head = ["threads", "pass", "wall s", "cpu s", "sys s", "faults"]
    print(" ".join(f"{h:>7}" for h in head), "M tok/s")
    med: Dict[int, List[float]] = {}
    for n in counts:
        med[n] = []
        for p in range(args.passes):
            rows = [r[p] for r in runs[n]]
            wall = statistics.median(r["wall"] for r in rows)
            med[n].append(wall)
            print(
                f"{n:>7} {p + 1:>7} {wall:7.3f} {statistics.median(r['cpu'] for r in rows):7.3f} "
                f"{statistics.median(r['sys'] for r in rows):7.3f} "
                f"{statistics.median(r['faults'] for r in rows):7.0f} "
                f"{rows[0]['tokens'] / wall / 1e6:7.2f}"
            )
    base = counts[0]
    for n in counts[1:]:
        ratios = ", ".join(
            f"pass {p + 1}: {med[base][p] / med[n][p]:.2f}x" for p in range(args.passes)
        )
        print(f"{n} threads / {base}: {ratios}")


if __name__ == "__main__":
    main()
