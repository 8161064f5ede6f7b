"""The benchmark corpora on disk: documents cut into parts of a few lines, written as one JSONL
file (a ``content`` field each; plain, gzip- or zstd-compressed, or as a Parquet file of one
``content`` column) or as a tree of ``.py`` files (one document each), in order."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import List, Sequence


def cut(texts: Sequence[str], doc_lines: int) -> List[str]:
    """Each text cut into documents of at most ``doc_lines`` lines (all of it when 0)."""
    if doc_lines <= 0:
        return list(texts)
    parts = (t.splitlines(keepends=True) for t in texts)
    return [
        "".join(lines[i : i + doc_lines])
        for lines in parts
        for i in range(0, len(lines), doc_lines)
    ]


def write_jsonl(path: Path, texts: Sequence[str]) -> Path:
    """One line ``{"content": text}`` per text."""
    with open(path, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"content": t}, ensure_ascii=False) + "\n")
    return path


def write_tree(root: Path, texts: Sequence[str]) -> Path:
    """One ``.py`` file per text, a hundred to a directory, named so that they sort as the
    texts do (so encode-corpus reads them in this order)."""
    for i, t in enumerate(texts):
        d = root / f"{i // 100:05d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i:07d}.py").write_bytes(t.encode("utf-8", "surrogatepass"))
    return root


# --format values of the benchmark scripts: the JSONL file's suffix, or parquet.
FORMATS = ["jsonl", "jsonl.gz", "jsonl.zst", "parquet"]


def write_file(path_stem: Path, texts: Sequence[str], fmt: str) -> Path:
    """The texts as one corpus file ``path_stem.<fmt>``: JSONL, JSONL through gzip (level 6,
    as the ``gzip`` command) or zstd (level 3, as the ``zstd`` command), or Parquet (zstd
    pages, pyarrow's defaults otherwise)."""
    path = path_stem.with_name(f"{path_stem.name}.{fmt}")
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"content": list(texts)}), path, compression="zstd")
        return path
    plain = write_jsonl(path_stem.with_name(path_stem.name + ".plain.jsonl"), texts)
    data = plain.read_bytes()
    if fmt == "jsonl":
        plain.rename(path)
        return path
    plain.unlink()
    if fmt == "jsonl.gz":
        path.write_bytes(gzip.compress(data, compresslevel=6))
    elif fmt == "jsonl.zst":
        import zstandard

        path.write_bytes(zstandard.ZstdCompressor(level=3).compress(data))
    else:
        raise ValueError(f"unknown corpus format {fmt!r}, not one of {FORMATS}")
    return path
