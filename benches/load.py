"""Tokenizer load time: aprx from the Qwen2 tokenizer.json and from the directory
``aprx tokenize import-hf`` makes of it, beside HF ``tokenizers`` on the same file, each
loaded ``--repeat`` times in turn in one process (best and median)::

    python benches/load.py --repeat 7
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()

    import fixtures

    import aprx
    from aprx.importer import import_hf

    src = fixtures.qwen2_tokenizer_json()
    with tempfile.TemporaryDirectory(prefix="aprx-load-") as tmp:
        imported = Path(tmp) / "tok"
        import_hf(src, imported, include_added_tokens=True)
        loaders: Dict[str, Callable[[], object]] = {
            "aprx tokenizer.json": lambda: aprx.Tokenizer.from_file(src),
            "aprx imported dir": lambda: aprx.Tokenizer.from_file(imported),
        }
        try:
            import tokenizers

            loaders["HF tokenizers tokenizer.json"] = lambda: tokenizers.Tokenizer.from_file(
                str(src)
            )
        except ImportError:
            pass
        times: Dict[str, List[float]] = {name: [] for name in loaders}
        for _ in range(args.repeat):
            for name, load in loaders.items():
                t = time.perf_counter()
                load()
                times[name].append(time.perf_counter() - t)
    for name, ts in times.items():
        print(
            f"{name:30s} best {min(ts) * 1e3:6.0f} ms, median {statistics.median(ts) * 1e3:6.0f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
