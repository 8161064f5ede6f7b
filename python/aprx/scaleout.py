"""Scale-out of encode-corpus: join the outputs of ``encode-corpus --num-tasks K --task-index I``
runs (one per machine or array task) into one dataset directory.

Task I encodes a contiguous slice of the sorted input files, so the tasks' documents, in task
order, are the single-machine run's documents in the same order (with EOS ``between``, every
task but the last ends with an EOS). Merging re-cuts that document stream into shards with the
same rule as a single run (a shard closes once it holds ``shard_tokens`` tokens, documents are
never split), so the merged shards, indexes and manifest (apart from ``run`` and ``task``) are
byte-identical to a single-machine run over the same inputs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence, Union

from aprx import _aprx
from aprx.errors import CorpusError

PathLike = Union[str, "os.PathLike[str]"]

#: Settings every task must share for the tasks to form one dataset.
_SHARED = ("eos_policy", "eos_id", "normalization", "content_field", "shard_tokens")


def _load(d: Path) -> dict[str, Any]:
    m = d / "manifest.json"
    if not m.is_file():
        raise CorpusError(
            f"{d}: no manifest.json: the task has not finished (re-run it with --resume)",
            "APRX-C208",
        )
    with open(m, encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


class _ShardWriter:
    """Writes documents into shards with encode-corpus's rotation rule."""

    def __init__(self, out: Path, shard_tokens: int) -> None:
        self.out, self.limit = out, shard_tokens
        self.shards: list[dict[str, Any]] = []
        self.f: Any = None
        self.ends: list[int] = []
        self.tokens = 0

    def add(self, doc: Any) -> None:
        if self.ends and self.tokens >= self.limit:
            self.close()
        if self.f is None:
            n = len(self.shards)
            self.name = f"shard-{n:05d}"
            self.f = open(self.out / f"{self.name}.bin.tmp", "wb")
            self.h = _aprx.Blake3()
        data = doc.astype("<u4", copy=False).tobytes()
        self.f.write(data)
        self.h.update(data)
        self.tokens += len(doc)
        self.ends.append(self.tokens)

    def close(self) -> None:
        if self.f is None:
            return
        import numpy as np

        self.f.close()
        idx = self.out / f"{self.name}.idx"
        np.asarray(self.ends, dtype="<u8").tofile(self.out / f"{self.name}.idx.tmp")
        os.replace(self.out / f"{self.name}.bin.tmp", self.out / f"{self.name}.bin")
        os.replace(self.out / f"{self.name}.idx.tmp", idx)
        self.shards.append(
            {
                "file": f"{self.name}.bin",
                "index": idx.name,
                "tokens": self.tokens,
                "documents": len(self.ends),
                "blake3": self.h.hexdigest(),
            }
        )
        self.f, self.ends, self.tokens = None, [], 0


def merge_manifests(tasks: Sequence[PathLike], output: PathLike) -> dict[str, Any]:
    """Joins K task output directories (any order) into ``output``; returns its manifest."""
    dirs = [Path(t) for t in tasks]
    manifests = [_load(d) for d in dirs]
    k = len(manifests)
    order = sorted(range(k), key=lambda i: manifests[i].get("task", {}).get("task_index", 0))
    seen = [manifests[i]["task"] for i in order]
    want = [{"num_tasks": k, "task_index": i} for i in range(k)]
    if seen != want:
        raise CorpusError(
            f"tasks do not form one run of {k}: got {seen} (need task_index 0..{k - 1} of "
            f"num_tasks {k})",
            "APRX-C207",
        )
    first = manifests[order[0]]
    for i in order[1:]:
        m = manifests[i]
        if m["tokenizer"]["sha256"] != first["tokenizer"]["sha256"]:
            raise CorpusError(f"{dirs[i]}: made with another tokenizer", "APRX-C207")
        for key in _SHARED:
            if m.get(key) != first.get(key):
                raise CorpusError(
                    f"{dirs[i]}: {key} is {m.get(key)!r}, task 0 has {first.get(key)!r}",
                    "APRX-C207",
                )
    out = Path(output)
    if (out / "manifest.json").exists() or any(out.glob("shard-*")):
        raise CorpusError(f"{out}: already holds a dataset", "APRX-C206")
    out.mkdir(parents=True, exist_ok=True)
    import numpy as np

    writer = _ShardWriter(out, int(first["shard_tokens"]))
    for i in order:
        for s in manifests[i]["shards"]:
            binp, idxp = dirs[i] / s["file"], dirs[i] / s["index"]
            if binp.stat().st_size != 4 * s["tokens"] or idxp.stat().st_size != 8 * s["documents"]:
                raise CorpusError(f"{binp}: size disagrees with its manifest", "APRX-C208")
            tokens = np.memmap(binp, dtype="<u4", mode="r") if s["tokens"] else np.zeros(0)
            start = 0
            for end in np.fromfile(idxp, dtype="<u8").tolist():
                writer.add(tokens[start:end])
                start = end
    writer.close()
    shards = writer.shards
    ms = [manifests[i] for i in order]
    ids = [m["max_token_id"] for m in ms if m.get("max_token_id") is not None]
    config = {k2: v for k2, v in first["config"].items() if k2 not in ("num_tasks", "task_index")}
    config["inputs"] = [x for m in ms for x in m["config"]["inputs"]]
    merged: dict[str, Any] = {
        "schema": first["schema"],
        "dtype": first["dtype"],
        "byte_order": first.get("byte_order", "little"),
        "tokenizer": first["tokenizer"],
        **{key: first.get(key) for key in _SHARED},
        "shards": shards,
        "total_tokens": sum(m["total_tokens"] for m in ms),
        "total_documents": sum(m["total_documents"] for m in ms),
        "empty_documents": sum(m.get("empty_documents", 0) for m in ms),
        "blank_lines": sum(m.get("blank_lines", 0) for m in ms),
        "max_token_id": max(ids) if ids else None,
        "inputs": [x for m in ms for x in m["inputs"]],
        "skipped_count": sum(m["skipped_count"] for m in ms),
        "skipped": [x for m in ms for x in m["skipped"]],
        "task": {"merged_from": k},
        "config": config,
        "run": {
            "elapsed_s": sum(m["run"]["elapsed_s"] for m in ms),
            "tokens_per_s": None,
            "num_workers": sum(m["run"]["num_workers"] for m in ms),
            "resumed": any(m["run"]["resumed"] for m in ms),
            "tasks": [str(dirs[i]) for i in order],
        },
    }
    tmp = out / "manifest.json.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(merged, f, indent=2, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, out / "manifest.json")
    return merged
