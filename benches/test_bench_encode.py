"""pytest-benchmark cases: aprx encoding against Hugging Face ``tokenizers`` (Qwen2 vocabulary).

The sample is a small, fixed slice of the interpreter's standard library (about 256 KB of
``*.py`` files, see ``sample_texts``). The project's ``addopts`` has ``--benchmark-disable``,
so a plain ``pytest benches/`` runs each case once as an ordinary test (a few seconds, mostly
tokenizer loading) and checks the ids against ``tokenizers``. To time them::

    pytest benches/ --benchmark-enable
    pytest benches/ --benchmark-enable --benchmark-group-by=group --benchmark-columns=min,mean,ops

These measure steady state: the same tokenizer instance encodes the sample round after round,
so whatever it caches is warm. For cold, fresh-instance throughput on the whole standard
library against every peer, use ``python benches/compare.py``. The encode-corpus cases write
the sample as one JSONL file and as a tree of ``.py`` files, and time the whole run (shards,
index, manifest) into a fresh output directory each round, on 2 workers.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, List

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus_files  # noqa: E402
import fixtures  # noqa: E402

SAMPLE_BYTES = 256 * 1024
MAX_DOC_BYTES = 64 * 1024
STRIDE = 23


@pytest.fixture(scope="module")
def sample_texts() -> List[str]:
    """Every ``STRIDE``-th stdlib file under ``MAX_DOC_BYTES``, until ``SAMPLE_BYTES``."""
    out: List[str] = []
    total = 0
    for text in fixtures.stdlib_texts()[::STRIDE]:
        size = len(text.encode("utf-8"))
        if size > MAX_DOC_BYTES:
            continue
        out.append(text)
        total += size
        if total >= SAMPLE_BYTES:
            break
    assert out
    return out


@pytest.fixture(scope="module")
def joined_text(sample_texts: List[str]) -> str:
    return "\n".join(sample_texts)


@pytest.fixture(scope="module")
def tokenizer_json() -> Path:
    return fixtures.qwen2_tokenizer_json()


@pytest.fixture(scope="module")
def aprx_tok(tokenizer_json: Path) -> Any:
    import aprx

    return aprx.Tokenizer.from_file(tokenizer_json)


@pytest.fixture(scope="module")
def hf_tok(tokenizer_json: Path) -> Any:
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer.from_file(str(tokenizer_json))
    tok.encode_special_tokens = True  # added tokens in the text are text, as in encode_ordinary
    return tok


@pytest.fixture(scope="module")
def expected_joined(hf_tok: Any, joined_text: str) -> List[int]:
    return list(hf_tok.encode(joined_text, add_special_tokens=False).ids)


@pytest.fixture(scope="module")
def expected_batch(hf_tok: Any, sample_texts: List[str]) -> List[List[int]]:
    return [list(e.ids) for e in hf_tok.encode_batch(sample_texts, add_special_tokens=False)]


def _tokens(benchmark: Any, n: int) -> None:
    benchmark.extra_info["tokens"] = n


@pytest.mark.benchmark(group="encode joined sample")
def test_aprx_encode_ordinary(
    benchmark: Any, aprx_tok: Any, joined_text: str, expected_joined: List[int]
) -> None:
    ids = benchmark(aprx_tok.encode_ordinary, joined_text)
    assert ids.dtype == np.uint32
    assert ids.tolist() == expected_joined
    _tokens(benchmark, len(ids))


@pytest.mark.benchmark(group="encode joined sample")
def test_hf_encode(
    benchmark: Any, hf_tok: Any, joined_text: str, expected_joined: List[int]
) -> None:
    enc = benchmark(hf_tok.encode, joined_text, add_special_tokens=False)
    assert enc.ids == expected_joined
    _tokens(benchmark, len(enc.ids))


@pytest.mark.benchmark(group="encode batch of files")
@pytest.mark.parametrize("threads", [1, 2])
def test_aprx_encode_batch(
    benchmark: Any,
    aprx_tok: Any,
    sample_texts: List[str],
    expected_batch: List[List[int]],
    threads: int,
) -> None:
    out = benchmark(aprx_tok.encode_batch, sample_texts, ordinary=True, num_threads=threads)
    assert [a.tolist() for a in out] == expected_batch
    _tokens(benchmark, sum(len(a) for a in out))


@pytest.mark.benchmark(group="encode batch of files")
@pytest.mark.parametrize("threads", [1, 2])
def test_aprx_encode_batch_flat(
    benchmark: Any,
    aprx_tok: Any,
    sample_texts: List[str],
    expected_batch: List[List[int]],
    threads: int,
) -> None:
    ids, offsets = benchmark(
        aprx_tok.encode_batch_flat, sample_texts, ordinary=True, num_threads=threads
    )
    assert len(offsets) == len(sample_texts) + 1
    got = [ids[offsets[i] : offsets[i + 1]].tolist() for i in range(len(sample_texts))]
    assert got == expected_batch
    _tokens(benchmark, len(ids))


@pytest.mark.benchmark(group="encode batch of files")
def test_hf_encode_batch(
    benchmark: Any, hf_tok: Any, sample_texts: List[str], expected_batch: List[List[int]]
) -> None:
    # Threads: rayon's global pool (RAYON_NUM_THREADS, or all cores), fixed at first use.
    out = benchmark(hf_tok.encode_batch, sample_texts, add_special_tokens=False)
    assert [list(e.ids) for e in out] == expected_batch
    _tokens(benchmark, sum(len(e.ids) for e in out))


@pytest.fixture(scope="module")
def corpus_inputs(tmp_path_factory: Any, sample_texts: List[str]) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("corpus")
    return {
        "jsonl": corpus_files.write_jsonl(root / "docs.jsonl", sample_texts),
        "tree": corpus_files.write_tree(root / "tree", sample_texts),
    }


@pytest.mark.benchmark(group="encode-corpus, 2 workers")
@pytest.mark.parametrize("kind", ["jsonl", "tree"])
def test_aprx_encode_corpus(
    benchmark: Any,
    aprx_tok: Any,
    corpus_inputs: dict[str, Path],
    tmp_path: Path,
    kind: str,
    expected_batch: List[List[int]],
) -> None:
    from aprx.corpus import encode_corpus

    outputs = iter(tmp_path / f"out{i}" for i in range(1 << 30))

    def setup() -> Any:
        return (corpus_inputs[kind], aprx_tok, next(outputs)), {"num_workers": 2}

    m = benchmark.pedantic(encode_corpus, setup=setup, rounds=5)
    # Every document, in order, one EOS between each two (the default policy).
    assert m["total_documents"] == len(expected_batch)
    assert m["total_tokens"] == sum(map(len, expected_batch)) + len(expected_batch) - 1
    _tokens(benchmark, m["total_tokens"])
