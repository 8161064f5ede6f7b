"""The benchmark corpora on disk: documents cut into parts of a few lines, written as one JSONL
file (a ``content`` field each; plain, gzip- or zstd-compressed, or as a Parquet file of one
``content`` column) or as a tree of ``.py`` files (one document each), in order."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Iterator, List, Sequence


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


def jsonl_lines(texts: Sequence[str]) -> Iterator[str]:
    """One line ``{"content": text}`` per text."""
    return (json.dumps({"content": t}, ensure_ascii=False) + "\n" for t in texts)


def write_jsonl(path: Path, texts: Sequence[str]) -> Path:
    """The texts as one JSONL file, written line by line."""
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(jsonl_lines(texts))
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


# Rows per Parquet row group: as Hugging Face `datasets` writes them (its default batch).
PARQUET_ROWS = 1000


def write_file(path_stem: Path, texts: Sequence[str], fmt: str) -> Path:
    """The texts as one corpus file ``path_stem.<fmt>``: JSONL, JSONL through gzip (level 6,
    as the ``gzip`` command) or zstd (level 3, as the ``zstd`` command), or Parquet (zstd
    pages, ``PARQUET_ROWS`` rows per row group, pyarrow's defaults otherwise)."""
    path = path_stem.with_name(f"{path_stem.name}.{fmt}")
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({"content": list(texts)})
        pq.write_table(table, path, compression="zstd", row_group_size=PARQUET_ROWS)
    elif fmt == "jsonl":
        write_jsonl(path, texts)
    elif fmt == "jsonl.gz":
        path.write_bytes(gzip.compress("".join(jsonl_lines(texts)).encode(), compresslevel=6))
    elif fmt == "jsonl.zst":
        import zstandard

        path.write_bytes(
            zstandard.ZstdCompressor(level=3).compress("".join(jsonl_lines(texts)).encode())
        )
    else:
        raise ValueError(f"unknown corpus format {fmt!r}, not one of {FORMATS}")
    return path


def write_files(root: Path, texts: Sequence[str], fmt: str, files: int) -> Path:
    """The texts cut into ``files`` corpus files of ``fmt`` (``write_file``), in order, in the
    new directory ``root`` (``part-000.<fmt>``, ...), as a corpus of many files; ``root``."""
    root.mkdir()
    per = -(-len(texts) // files)
    for i in range(files):
        write_file(root / f"part-{i:03d}", texts[i * per : (i + 1) * per], fmt)
    return root
