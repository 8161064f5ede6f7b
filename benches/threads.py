"""One timed call, with the CPU time of each thread that took part (Linux: read from
``/proc/self/task/*/schedstat`` every few milliseconds while the call runs), to see where the
cores go: the encode workers, encode-corpus's reader, hashing and writing threads, the
calling thread itself, and any other thread of the process (numpy's OpenBLAS threads are named
``python``). The sampling thread is left out; it takes a few percent of a core. Documents:
the interpreter's standard library (``--copies`` times), Qwen2 vocabulary, a freshly loaded
tokenizer warmed up on one short text, as in ``scaling.py``::

    python benches/threads.py encode-corpus --threads 2
    APRX_MMAP=0 python benches/threads.py encode-corpus --threads 2 --copies 5
    python benches/threads.py encode_batch --threads 2 --late-numpy
    python benches/threads.py encode-corpus --threads 2 --second-pass
    python benches/threads.py encode-corpus --threads 2 --tree   # one .py file per document
    python benches/threads.py encode-corpus --threads 16 --copies 10 --format jsonl.gz --files 16
    python benches/threads.py encode-corpus --threads 2 --tree --doc-lines 40 \
        --shard-tokens 500000   # 22,347 files, 16 shards

``--late-numpy`` leaves numpy to be imported by aprx's warm-up call (its first array), just
before the timed call, as a script that does not import numpy itself does. ``--second-pass``
makes the same call once, untimed, before the timed one, with the same tokenizer: its tables
then hold every piece of the corpus, so the difference from a run without it is the cost of
a tokenizer's first pass over the corpus (its cold pieces' merges and inserts).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, Tuple

import corpus_files  # benches/corpus_files.py

TESTS = Path(__file__).resolve().parent.parent / "tests"


def _tasks() -> Dict[int, Tuple[str, int]]:
    """tid -> (thread name, CPU nanoseconds so far) of this process's threads."""
    out = {}
    for d in Path("/proc/self/task").iterdir():
        try:
            name = (d / "comm").read_text().strip()
            ns = int((d / "schedstat").read_text().split()[0])
        except (OSError, ValueError):
            continue  # the thread ended meanwhile
        out[int(d.name)] = (name, ns)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=["encode-corpus", "encode_batch"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--copies", type=int, default=1)
    ap.add_argument("--late-numpy", action="store_true")
    ap.add_argument("--second-pass", action="store_true", help="time a second call, see above")
    ap.add_argument("--tree", action="store_true", help="encode-corpus: a .py file per document")
    ap.add_argument("--doc-lines", type=int, default=0, help="documents of at most N lines")
    ap.add_argument("--shard-tokens", type=int, default=10_000_000, help="encode-corpus")
    ap.add_argument("--format", choices=corpus_files.FORMATS, default="jsonl")
    ap.add_argument("--files", type=int, default=1, help="encode-corpus: in this many files")
    args = ap.parse_args()
    if not args.late_numpy:
        import numpy  # noqa: F401

    sys.path.insert(0, str(TESTS))
    import fixtures

    import aprx
    from aprx.corpus import encode_corpus
    from aprx.importer import import_hf

    texts = corpus_files.cut(fixtures.stdlib_texts(), args.doc_lines) * args.copies
    with tempfile.TemporaryDirectory(prefix="aprx-threads-") as tmp_s:
        tmp = Path(tmp_s)
        import_hf(fixtures.qwen2_tokenizer_json(), tmp / "tok", include_added_tokens=True)
        corpus = tmp / "docs.jsonl"
        if args.mode == "encode-corpus":
            if args.tree:
                corpus = corpus_files.write_tree(tmp / "tree", texts)
            elif args.files > 1:
                corpus = corpus_files.write_files(tmp / "corpus", texts, args.format, args.files)
            else:
                corpus = corpus_files.write_file(tmp / "docs", texts, args.format)
        tok = aprx.Tokenizer.from_file(tmp / "tok")
        tok.encode_batch(["warm-up"] * 2, ordinary=True, num_threads=2)

        seen: Dict[int, Tuple[str, int]] = {}
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                seen.update(_tasks())
                time.sleep(0.002)

        def call(out: str) -> int:
            """The call measured; its token count."""
            if args.mode == "encode_batch":
                ids = tok.encode_batch(texts, ordinary=True, num_threads=args.threads)
                return sum(len(x) for x in ids)
            m = encode_corpus(
                corpus,
                tok,
                tmp / out,
                num_workers=args.threads,
                overwrite=True,
                eos_policy="none",
                shard_tokens=args.shard_tokens,
            )
            return int(m["total_tokens"])

        if args.second_pass:
            call("first-pass")

        before = _tasks()
        sampler = threading.Thread(target=sample)
        sampler.start()
        c0, t0 = time.process_time(), time.perf_counter()
        tokens = call("shards")
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        done.set()
        sampler.join()
        seen.update(_tasks())

    by_name: Dict[str, float] = {}
    for tid, (name, ns) in seen.items():
        if tid == sampler.native_id:
            continue  # this script's own sampling
        used = (ns - before.get(tid, (name, 0))[1]) / 1e6
        if used > 0.05:
            key = "calling thread" if tid == threading.main_thread().native_id else name
            by_name[key] = by_name.get(key, 0.0) + used
    threads_ms = sum(by_name.values())
    print(
        f"{args.mode}, {args.threads} threads, {tokens:,} tokens: {tokens / wall / 1e6:.1f} M "
        f"tokens/s, wall {wall * 1e3:.0f} ms, CPU {threads_ms:.0f} ms in the threads below "
        f"({threads_ms / 1e3 / wall:.2f} cores; the process, with the sampling: {cpu * 1e3:.0f} ms)"
    )
    for name, ms in sorted(by_name.items(), key=lambda kv: -kv[1]):
        print(f"  {name:20s} {ms:7.1f} ms CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
