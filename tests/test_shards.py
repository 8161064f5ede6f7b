"""ShardDataset: memory-mapped u32 shards validated against their manifest."""

from __future__ import annotations

import hashlib
import json

import blake3
import numpy as np
import pytest

from aprx import _aprx
from aprx.errors import AprxIOError, CorpusError
from aprx.shards import ShardDataset, TokenView, write_shards

SHA = "ab" * 32


def _docs(n_docs=10, seed=0, eos=0):
    rng = np.random.default_rng(seed)
    return [
        list(rng.integers(1, 500, size=int(rng.integers(1, 40)))) + [eos] for _ in range(n_docs)
    ]


@pytest.fixture()
def shard_dir(tmp_path):
    docs = _docs(25)
    write_shards(
        tmp_path / "ds",
        docs,
        tokenizer_sha256=SHA,
        vocab_size=512,
        eos_id=0,
        eos_policy="after",
        shard_tokens=150,
    )
    return tmp_path / "ds", docs


def test_roundtrip_documents_and_stream(shard_dir):
    path, docs = shard_dir
    ds = ShardDataset(path, verify_digests=True)
    assert len(ds.shards) > 2
    assert ds.num_documents == len(docs)
    assert len(ds) == sum(len(d) for d in docs)
    assert ds.eos_id == 0
    assert ds.max_token_id == max(max(d) for d in docs)
    assert ds.scan_max_token_id() == ds.max_token_id
    for i, doc in enumerate(docs):
        assert ds.document(i).tolist() == doc
        assert ds.document(i).dtype == np.uint32
    assert ds.document(-1).tolist() == docs[-1]
    assert [d.tolist() for d in ds.iter_documents()] == docs
    flat = [t for d in docs for t in d]
    assert ds.tokens(0, len(ds)).tolist() == flat
    # slices inside one shard and across shard boundaries
    for a, b in [(0, 1), (3, 170), (149, 151), (len(flat) - 5, len(flat)), (7, 7)]:
        assert ds.tokens(a, b).tolist() == flat[a:b]
    bounds = ds.document_boundaries()
    assert bounds.tolist() == np.cumsum([len(d) for d in docs]).tolist()


def test_memmap_is_zero_copy(shard_dir):
    path, _ = shard_dir
    ds = ShardDataset(path)
    assert all(isinstance(s, np.memmap) for s in ds.shards)
    view = ds.document(0)
    assert np.shares_memory(view, ds.shards[0])
    start, stop = ds.shard_token_range(1)
    assert np.shares_memory(ds.tokens(start, stop), ds.shards[1])


def test_shard_lookup(shard_dir):
    path, _ = shard_dir
    ds = ShardDataset(path)
    assert ds.shard_index("shard-00001.bin") == 1
    assert ds.shard_index("shard-00001") == 1
    assert ds.shard_index(0) == 0
    with pytest.raises(CorpusError) as exc:
        ds.shard_index("shard-99999")
    assert exc.value.code == "APRX-C228"


def test_token_view_bounds():
    v = TokenView([np.arange(3, dtype=np.uint32), np.zeros(0, np.uint32), np.arange(3, 6)])
    assert len(v) == 6
    assert v[2:5].tolist() == [2, 3, 4]
    with pytest.raises(CorpusError):
        v.slice(4, 7)


def _manifest(path):
    return json.loads((path / "manifest.json").read_text())


def _save(path, manifest):
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_missing_manifest(tmp_path):
    with pytest.raises(CorpusError) as exc:
        ShardDataset(tmp_path)
    assert exc.value.code == "APRX-C220"
    assert "manifest.json" in str(exc.value)


def test_bad_schema(shard_dir):
    path, _ = shard_dir
    m = _manifest(path)
    m["schema"] = "other/1"
    _save(path, m)
    with pytest.raises(CorpusError) as exc:
        ShardDataset(path)
    assert exc.value.code == "APRX-C221"


def test_truncated_shard_names_file(shard_dir):
    path, _ = shard_dir
    data = (path / "shard-00001.bin").read_bytes()
    (path / "shard-00001.bin").write_bytes(data[:-4])
    with pytest.raises(CorpusError) as exc:
        ShardDataset(path)
    assert exc.value.code == "APRX-C223"
    assert "shard-00001.bin" in str(exc.value)
    assert isinstance(exc.value, ValueError)


def test_missing_shard_file(shard_dir):
    path, _ = shard_dir
    (path / "shard-00002.idx").unlink()
    with pytest.raises(CorpusError) as exc:
        ShardDataset(path)
    assert exc.value.code == "APRX-C222"
    assert "shard-00002.idx" in str(exc.value)


def test_index_length_mismatch(shard_dir):
    path, _ = shard_dir
    m = _manifest(path)
    m["shards"][0]["documents"] += 1
    _save(path, m)
    with pytest.raises(CorpusError) as exc:
        ShardDataset(path)
    assert exc.value.code == "APRX-C224"


def test_last_offset_mismatch(shard_dir):
    path, _ = shard_dir
    ends = np.fromfile(path / "shard-00000.idx", dtype="<u8")
    ends[-1] -= 1
    ends.tofile(path / "shard-00000.idx")
    with pytest.raises(CorpusError) as exc:
        ShardDataset(path)
    assert exc.value.code == "APRX-C225"


def test_non_monotonic_index(shard_dir):
    path, _ = shard_dir
    ends = np.fromfile(path / "shard-00000.idx", dtype="<u8")
    assert len(ends) >= 3
    ends[0], ends[1] = ends[1], ends[0]
    ends.tofile(path / "shard-00000.idx")
    with pytest.raises(CorpusError) as exc:
        ShardDataset(path)
    assert exc.value.code == "APRX-C225"


def test_totals_mismatch(shard_dir):
    path, _ = shard_dir
    m = _manifest(path)
    m["total_tokens"] += 1
    _save(path, m)
    with pytest.raises(CorpusError) as exc:
        ShardDataset(path)
    assert exc.value.code == "APRX-C226"
    assert "total_tokens" in str(exc.value)


def test_digest_mismatch_only_when_verifying(shard_dir):
    path, _ = shard_dir
    m = _manifest(path)
    entry = m["shards"][0]
    data = (path / entry["file"]).read_bytes()
    # The manifest's digest is the file's BLAKE3 (checked by the blake3 package).
    assert entry["blake3"] == blake3.blake3(data).hexdigest() and "sha256" not in entry
    raw = bytearray(data)
    raw[0] ^= 1
    (path / "shard-00000.bin").write_bytes(bytes(raw))
    ds = ShardDataset(path)  # sizes still agree
    for verify in (ds.verify_digests, ds.verify_sha256):  # the older name does the same
        with pytest.raises(CorpusError) as exc:
            verify()
        assert exc.value.code == "APRX-C227"
        assert "shard-00000.bin: blake3 " in str(exc.value)
    for kw in ("verify_digests", "verify_sha256"):
        with pytest.raises(CorpusError):
            ShardDataset(path, **{kw: True})


def test_older_sha256_manifests_are_verified_with_sha256(shard_dir):
    """Shards written before 0.2 carry a SHA-256: still read and verified, with it."""
    path, _ = shard_dir
    m = _manifest(path)
    for e in m["shards"]:
        del e["blake3"]
        e["sha256"] = hashlib.sha256((path / e["file"]).read_bytes()).hexdigest()
    _save(path, m)
    ShardDataset(path, verify_digests=True)
    m["shards"][1]["sha256"] = "0" * 64
    _save(path, m)
    with pytest.raises(CorpusError) as exc:
        ShardDataset(path, verify_digests=True)
    assert exc.value.code == "APRX-C227"
    assert "shard-00001.bin: sha256 " in str(exc.value)
    del m["shards"][1]["sha256"]
    _save(path, m)
    ShardDataset(path)  # sizes agree: nothing to hash
    with pytest.raises(CorpusError) as exc:
        ShardDataset(path, verify_digests=True)
    assert exc.value.code == "APRX-C227" and "has no digest" in str(exc.value)


def test_empty_shard_allowed(tmp_path):
    write_shards(tmp_path, [], tokenizer_sha256=SHA, vocab_size=10)
    ds = ShardDataset(tmp_path)
    assert len(ds) == 0 and ds.num_documents == 0
    assert list(ds.iter_documents()) == []


def test_path_traversal_rejected(shard_dir):
    path, _ = shard_dir
    m = _manifest(path)
    m["shards"][0]["file"] = "../evil.bin"
    _save(path, m)
    with pytest.raises(CorpusError) as exc:
        ShardDataset(path)
    assert exc.value.code == "APRX-C221"


def test_native_blake3_matches_the_blake3_package(tmp_path):
    """aprx's digests (the native module's) are BLAKE3's, fed whole or in pieces."""
    rng = np.random.default_rng(5)
    for n in (0, 1, 1023, 1024, 1025, 70_000, (1 << 20) + 17):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        want = blake3.blake3(data).hexdigest()
        h = _aprx.Blake3()
        for lo in range(0, n, 9_999):
            h.update(data[lo : lo + 9_999])
        assert h.hexdigest() == want, n
        p = tmp_path / f"{n}.bin"
        p.write_bytes(data)
        assert _aprx.blake3_file(p) == want, n
    with pytest.raises(AprxIOError) as exc:
        _aprx.blake3_file(tmp_path / "missing.bin")
    assert isinstance(exc.value, OSError) and "missing.bin" in str(exc.value)
