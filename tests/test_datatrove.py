"""aprx.integrations.datatrove: encode-corpus run as a datatrove pipeline (real worker
processes), merged, equals a single-machine run; a task killed mid-way is retried by datatrove
(skip_completed) and resumes without duplicating or losing documents."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("datatrove")

from datatrove.executor import LocalPipelineExecutor  # noqa: E402

import aprx  # noqa: E402
from aprx.importer import import_hf  # noqa: E402
from aprx.integrations.datatrove import AprxEncodeCorpus, merge, task_dir  # noqa: E402

try:
    import fixtures
except ImportError:  # pragma: no cover
    from tests import fixtures

TASKS = 4
#: Small shards, so a task writes many and can be killed between them.
OPTIONS: dict[str, Any] = {"shard_tokens": 20_000, "eos_policy": "between", "num_workers": 1}


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tok") / "qwen2"
    import_hf(fixtures.qwen2_tokenizer_json(), d, include_added_tokens=True)
    return d


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 JSONL files holding the whole standard library (~8M tokens, ~400 shards)."""
    d = tmp_path_factory.mktemp("corpus")
    sources = fixtures.stdlib_sources()
    for i in range(8):
        with open(d / f"part-{i}.jsonl", "w", encoding="utf-8") as f:
            for _, text in sources[i::8]:
                f.write(json.dumps({"content": text}) + "\n")
    return d


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory, tok_dir: Path, corpus: Path) -> Path:
    out = tmp_path_factory.mktemp("single") / "ds"
    aprx.encode_corpus(corpus, tok_dir, out, **OPTIONS)
    return out


def _stream(d: Path) -> tuple[np.ndarray, list[int]]:
    ds = aprx.ShardDataset(d)
    tokens = np.concatenate([np.asarray(s) for s in ds.shards])
    lengths = [len(ds.document(i)) for i in range(ds.num_documents)]
    return tokens, lengths


def _manifest(d: Path) -> dict[str, Any]:
    with open(d / "manifest.json", encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


def _assert_same(merged: dict[str, Any], merged_dir: Path, single_dir: Path) -> None:
    want = _manifest(single_dir)
    a_tokens, a_lengths = _stream(single_dir)
    b_tokens, b_lengths = _stream(merged_dir)
    assert a_tokens.tobytes() == b_tokens.tobytes()
    assert a_lengths == b_lengths
    for key in ("total_tokens", "total_documents", "inputs", "max_token_id", "eos_id"):
        assert merged[key] == want[key], key
    assert merged["config"]["inputs"] == want["config"]["inputs"]


def _executor(root: Path, tok_dir: Path, corpus: Path, **kw: Any) -> LocalPipelineExecutor:
    return LocalPipelineExecutor(
        pipeline=[AprxEncodeCorpus(corpus, tok_dir, root / "tasks", **OPTIONS)],
        tasks=TASKS,
        logging_dir=str(root / "logs"),
        **kw,
    )


def _completed(root: Path) -> set[int]:
    d = root / "logs" / "completions"
    return {int(p.name) for p in d.iterdir()} if d.is_dir() else set()


def test_import_aprx_does_not_need_datatrove() -> None:
    code = "import sys, aprx, aprx.scaleout; assert 'datatrove' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_num_workers_follows_the_executors_cpus_per_task(
    monkeypatch: pytest.MonkeyPatch, tok_dir: Path
) -> None:
    monkeypatch.setenv("DATATROVE_CPUS_PER_TASK", "3")
    assert AprxEncodeCorpus("c", tok_dir, "out")._num_workers() == 3
    assert AprxEncodeCorpus("c", tok_dir, "out", num_workers=2)._num_workers() == 2
    monkeypatch.setenv("DATATROVE_CPUS_PER_TASK", "-1")  # the local executor's value
    assert AprxEncodeCorpus("c", tok_dir, "out")._num_workers() is None


def test_step_refuses_options_it_sets_itself(tok_dir: Path, corpus: Path) -> None:
    for key in ("num_tasks", "task_index", "resume", "overwrite"):
        with pytest.raises(TypeError, match=key):
            AprxEncodeCorpus(corpus, tok_dir, "out", **{key: 1})
    with pytest.raises(TypeError, match="path"):
        AprxEncodeCorpus(corpus, aprx.Tokenizer.from_file(tok_dir), "out")  # type: ignore[arg-type]


def test_pipeline_merged_equals_single_machine_run(
    tmp_path: Path, tok_dir: Path, corpus: Path, single: Path
) -> None:
    _executor(tmp_path, tok_dir, corpus, workers=2).run()
    assert _completed(tmp_path) == set(range(TASKS))
    stats = json.loads((tmp_path / "logs" / "stats.json").read_text())
    step_stats = stats[0]["stats"]
    assert step_stats["documents"]["total"] == _manifest(single)["total_documents"]
    assert step_stats["tokens"]["total"] == _manifest(single)["total_tokens"]
    merged = merge(tmp_path / "tasks", TASKS, tmp_path / "merged")
    _assert_same(merged, tmp_path / "merged", single)


_KILLED_TASK = textwrap.dedent(
    """
    import json, sys
    from datatrove.executor import LocalPipelineExecutor
    from aprx.integrations.datatrove import AprxEncodeCorpus

    corpus, tok, root, logs, rank, tasks, options = sys.argv[1:8]
    LocalPipelineExecutor(
        pipeline=[AprxEncodeCorpus(corpus, tok, root, **json.loads(options))],
        tasks=int(tasks), workers=1, local_tasks=1, local_rank_offset=int(rank),
        logging_dir=logs,
    ).run()
    """
)


def test_killed_task_is_retried_and_resumes(
    tmp_path: Path, tok_dir: Path, corpus: Path, single: Path
) -> None:
    killed = TASKS - 1
    # Every task but one completes...
    _executor(tmp_path, tok_dir, corpus, workers=2, local_tasks=TASKS - 1).run()
    assert _completed(tmp_path) == set(range(TASKS - 1))
    done_before = {
        r: (task_dir(tmp_path / "tasks", r) / "manifest.json").stat().st_mtime_ns
        for r in range(TASKS - 1)
    }
    # ...and the last one, run by datatrove in its own process (group), is SIGKILLed once it
    # has recorded progress and written at least one shard.
    out = task_dir(tmp_path / "tasks", killed)
    args = [
        corpus,
        tok_dir,
        tmp_path / "tasks",
        tmp_path / "logs",
        killed,
        TASKS,
        json.dumps(OPTIONS),
    ]
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_TASK, *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not ((out / "progress.json").exists() and any(out.glob("shard-*.bin"))):
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the task wrote no shard"
            time.sleep(0.005)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, "the task finished before it could be killed"
    assert not (out / "manifest.json").exists()
    shards_at_kill = len(list(out.glob("shard-*.bin")))
    assert shards_at_kill >= 1
    assert _completed(tmp_path) == set(range(TASKS - 1))
    with pytest.raises(aprx.CorpusError):
        merge(tmp_path / "tasks", TASKS, tmp_path / "too-early")

    # Re-running the whole pipeline retries only the unfinished task, which resumes.
    _executor(tmp_path, tok_dir, corpus, workers=2, skip_completed=True).run()
    assert _completed(tmp_path) == set(range(TASKS))
    for r, mtime in done_before.items():
        assert (task_dir(tmp_path / "tasks", r) / "manifest.json").stat().st_mtime_ns == mtime
    resumed = _manifest(out)
    assert resumed["run"]["resumed"] is True
    assert len(resumed["shards"]) > shards_at_kill
    merged = merge(tmp_path / "tasks", TASKS, tmp_path / "merged")
    _assert_same(merged, tmp_path / "merged", single)
