"""encode-corpus as a datatrove pipeline step: run it under datatrove's local, Slurm-array or
Ray executors, which give each task its ``rank`` of ``world_size`` and retry unfinished ones.

Task ``rank`` encodes its contiguous slice of the sorted input files into
``output_root/task-{rank:05d}`` with ``resume=True``, so a task killed mid-way and re-run by the
executor (``skip_completed=True``) continues from its last completed shard: no document is
duplicated or lost. When every task has finished, :func:`merge` joins their outputs into one
dataset equal, token for token, to a single-machine ``aprx.encode_corpus`` run::

    from datatrove.executor import LocalPipelineExecutor
    from aprx.integrations.datatrove import AprxEncodeCorpus, merge

    LocalPipelineExecutor(
        [AprxEncodeCorpus("corpus/", "tok/", "out/tasks", shard_tokens=50_000_000)],
        tasks=16, workers=4, logging_dir="out/logs",
    ).run()
    merge("out/tasks", 16, "out/dataset")

This module needs ``datatrove`` (``pip install datatrove``); ``import aprx`` does not.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

try:
    from datatrove.pipeline.base import PipelineStep  # type: ignore[import-untyped]
except ImportError as e:  # pragma: no cover - exercised only without datatrove
    raise ImportError("aprx.integrations.datatrove needs datatrove: pip install datatrove") from e

from aprx.corpus import encode_corpus
from aprx.scaleout import merge_manifests

__all__ = ["AprxEncodeCorpus", "merge", "task_dir"]

PathLike = Union[str, "os.PathLike[str]"]

#: Options the step sets itself: the executor's rank/world size, and resume (a retried task
#: must continue, never start over or refuse).
_RESERVED = ("num_tasks", "task_index", "resume", "overwrite")


def task_dir(output_root: PathLike, rank: int) -> Path:
    """The output directory of task ``rank``: ``output_root/task-{rank:05d}``."""
    return Path(output_root) / f"task-{rank:05d}"


class AprxEncodeCorpus(PipelineStep):
    """Encodes task ``rank``'s slice of ``corpus`` into ``output_root/task-{rank:05d}``.

    ``corpus``: a path or list of paths (files or directories), as for ``aprx.encode_corpus``;
    every task must see the same paths (use absolute ones where tasks may start in other
    working directories). ``tokenizer``: an aprx tokenizer directory/file path (a path, not a
    loaded ``Tokenizer``, as the step is pickled to worker processes). ``encode_options``: any
    other keyword of ``aprx.encode_corpus`` (``shard_tokens``, ``eos_policy``, ``num_workers``,
    ...), the same for every task. ``num_workers`` defaults to the executor's CPUs per task
    where it sets one (Slurm, Ray), else to ``aprx.encode_corpus``'s own default.

    Documents flowing in from earlier steps are passed on untouched; the step reads the corpus
    files itself. Statistics: ``documents``, ``tokens`` and ``shards`` of the task.
    """

    name = "aprx encode-corpus"
    type = "🔢 - TOKENIZER"

    def __init__(
        self,
        corpus: Union[PathLike, Sequence[PathLike]],
        tokenizer: PathLike,
        output_root: PathLike,
        **encode_options: Any,
    ) -> None:
        super().__init__()
        bad = sorted(k for k in encode_options if k in _RESERVED)
        if bad:
            raise TypeError(
                f"AprxEncodeCorpus sets {', '.join(bad)} itself (from the executor's rank and "
                "world size, with resume=True)"
            )
        if not isinstance(tokenizer, (str, os.PathLike)):
            raise TypeError(
                f"tokenizer must be a path (the step is pickled to workers), not {type(tokenizer)}"
            )
        if isinstance(corpus, (str, os.PathLike)):
            self.corpus: list[str] = [os.fspath(corpus)]
        else:
            self.corpus = [os.fspath(p) for p in corpus]
        self.tokenizer = os.fspath(tokenizer)
        self.output_root = os.fspath(output_root)
        self.encode_options = dict(encode_options)
        self.encode_options.setdefault("quiet", True)

    def _num_workers(self) -> Optional[int]:
        if "num_workers" in self.encode_options:
            n: Optional[int] = self.encode_options["num_workers"]
            return n
        try:
            cpus = int(os.environ.get("DATATROVE_CPUS_PER_TASK", "-1"))
        except ValueError:
            return None
        return cpus if cpus > 0 else None

    def run(self, data: Any = None, rank: int = 0, world_size: int = 1) -> Iterator[Any]:
        options = {**self.encode_options, "num_workers": self._num_workers()}
        with self.track_time(unit="task"):
            manifest = encode_corpus(
                self.corpus,
                self.tokenizer,
                task_dir(self.output_root, rank),
                num_tasks=world_size,
                task_index=rank,
                resume=True,
                **options,
            )
        self.stat_update("documents", value=manifest["total_documents"], unit="task")
        self.stat_update("tokens", value=manifest["total_tokens"], unit="task")
        self.stat_update("shards", value=len(manifest["shards"]), unit="task")
        if data:
            yield from data


def merge(output_root: PathLike, world_size: int, output: PathLike) -> dict[str, Any]:
    """Joins the ``world_size`` task outputs under ``output_root`` into one dataset at
    ``output`` (``aprx.scaleout.merge_manifests``); returns its manifest. Every task must have
    finished (re-run the executor, which retries the unfinished ones, if one has not)."""
    return merge_manifests([task_dir(output_root, r) for r in range(world_size)], output)
