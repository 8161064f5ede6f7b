"""The benchmark corpora on disk: documents cut into parts of a few lines, written as one JSONL
file (a ``content`` field each) or as a tree of ``.py`` files (one document each), in order."""

from __future__ import annotations

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
