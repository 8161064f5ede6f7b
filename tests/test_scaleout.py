"""Scale-out of encode-corpus: K tasks over contiguous input slices, joined by
merge-manifests, give the single-machine token stream and document boundaries."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import aprx
from aprx.errors import CorpusError
from aprx.importer import import_hf
from aprx.scaleout import merge_manifests

try:
    import fixtures
except ImportError:  # pragma: no cover
    from tests import fixtures


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tok") / "qwen2"
    import_hf(fixtures.qwen2_tokenizer_json(), d, include_added_tokens=True)
    return d


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    sources = fixtures.stdlib_sources()[:240]
    for i in range(8):
        with open(d / f"part-{i}.jsonl", "w", encoding="utf-8") as f:
            for _, text in sources[i * 30 : (i + 1) * 30]:
                f.write(json.dumps({"content": text}) + "\n")
    return d


def _stream(d: Path) -> tuple[np.ndarray, list[int]]:
    ds = aprx.ShardDataset(d)
    tokens = np.concatenate([np.asarray(s) for s in ds.shards])
    lengths = [len(ds.document(i)) for i in range(ds.num_documents)]
    return tokens, lengths


@pytest.mark.parametrize("policy", ["between", "after", "none"])
def test_merged_tasks_equal_the_single_machine_run(
    tmp_path: Path, tok_dir: Path, corpus: Path, policy: str
) -> None:
    single = aprx.encode_corpus(
        corpus, tok_dir, tmp_path / "single", eos_policy=policy, shard_tokens=50_000
    )
    k = 3
    task_dirs = []
    for i in range(k):
        d = tmp_path / f"task-{i}"
        aprx.encode_corpus(
            corpus, tok_dir, d, eos_policy=policy, shard_tokens=50_000, num_tasks=k, task_index=i
        )
        task_dirs.append(d)
    # any order of arguments
    merged = merge_manifests(list(reversed(task_dirs)), tmp_path / "merged")
    a_tokens, a_lengths = _stream(tmp_path / "single")
    b_tokens, b_lengths = _stream(tmp_path / "merged")
    assert np.array_equal(a_tokens, b_tokens)
    assert a_lengths == b_lengths
    assert merged["total_tokens"] == single["total_tokens"]
    assert merged["total_documents"] == single["total_documents"]
    assert merged["inputs"] == single["inputs"]
    assert merged["max_token_id"] == single["max_token_id"]
    # Re-cut with the single run's rule: the very same shard files.
    assert merged["shards"] == single["shards"]
    for s in single["shards"]:
        for key in ("file", "index"):
            a = (tmp_path / "single" / s[key]).read_bytes()
            assert a == (tmp_path / "merged" / s[key]).read_bytes()
    drop = ("run", "task", "config")
    assert {k: v for k, v in merged.items() if k not in drop} == {
        k: v for k, v in single.items() if k not in drop
    }


def test_merge_refuses_incomplete_or_mismatched_tasks(
    tmp_path: Path, tok_dir: Path, corpus: Path
) -> None:
    a = tmp_path / "a"
    aprx.encode_corpus(corpus, tok_dir, a, num_tasks=2, task_index=0)
    with pytest.raises(CorpusError) as e:
        merge_manifests([a, tmp_path / "missing"], tmp_path / "m1")
    assert e.value.code == "APRX-C208"
    b = tmp_path / "b"
    aprx.encode_corpus(corpus, tok_dir, b, num_tasks=2, task_index=1, eos_policy="after")
    with pytest.raises(CorpusError) as e:
        merge_manifests([a, b], tmp_path / "m2")
    assert e.value.code == "APRX-C207" and "eos_policy" in str(e.value)
    with pytest.raises(CorpusError) as e:
        merge_manifests([a, a], tmp_path / "m3")
    assert e.value.code == "APRX-C207"
