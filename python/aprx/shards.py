"""Read (and, for tests and small corpora, write) aprx u32 token shard directories.

A shard directory is what ``aprx tokenize encode-corpus`` produces::

    shard-00000.bin   flat little-endian uint32 token ids
    shard-00000.idx   little-endian uint64 per document: its end offset (exclusive, in tokens)
    ...
    manifest.json     written last; ``schema == "aprx.shards/1"``

:class:`ShardDataset` memory-maps every ``.bin`` (zero-copy ``numpy.memmap``), checks every file
against the manifest and raises :class:`~aprx.errors.CorpusError` with a stable code naming the
file and the mismatch. Nothing here needs torch; the native module takes the BLAKE3 digests.

Each shard's digest is BLAKE3 (``"blake3"``: what ``b3sum`` prints). Shards written by aprx
before 0.2, which took SHA-256, carry ``"sha256"`` instead, and are verified with it.

Error codes (``C22x``):

* ``APRX-C220`` manifest missing, unreadable or not JSON
* ``APRX-C221`` manifest schema/dtype/fields invalid
* ``APRX-C222`` a shard or index file named by the manifest is missing
* ``APRX-C223`` a ``.bin`` size disagrees with the manifest's ``tokens`` (truncated shard)
* ``APRX-C224`` an ``.idx`` length disagrees with the manifest's ``documents``
* ``APRX-C225`` an ``.idx`` is not monotonic, or its last offset is not the shard's tokens
* ``APRX-C226`` manifest totals disagree with the sum over shards
* ``APRX-C227`` a shard's digest (BLAKE3, or an older manifest's SHA-256) disagrees with the
  manifest, or the manifest has none for it
* ``APRX-C228`` a document index, shard name or token range is out of range
* ``APRX-C229`` an invalid validation split
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _aprx
from ._validate import is_int
from .errors import AprxIOError, CorpusError

__all__ = [
    "ShardDataset",
    "TokenView",
    "DatasetSplit",
    "split_dataset",
    "shard_digest",
    "write_shards",
    "SHARDS_SCHEMA",
]

SHARDS_SCHEMA = "aprx.shards/1"
_TOKEN_DTYPE = np.dtype("<u4")
_INDEX_DTYPE = np.dtype("<u8")

PathLike = Union[str, "os.PathLike[str]"]
# A shard entry's digest keys, in the order they are looked for.
_DIGESTS = ("blake3", "sha256")
_U32_MAX = 2**32 - 1


def _file_digest(path: Path, algorithm: str) -> str:
    """``algorithm``'s digest of the file at ``path``, as lower-case hex."""
    if algorithm == "blake3":
        return _aprx.blake3_file(str(path))
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def shard_digest(entry: Dict[str, Any]) -> Optional[Tuple[str, str]]:
    """A manifest shard entry's digest as ``(algorithm, hex)``: its ``blake3``, else the
    ``sha256`` of a shard written before 0.2; None when it has neither."""
    for algorithm in _DIGESTS:
        value = entry.get(algorithm)
        if value:
            return algorithm, str(value).lower()
    return None


def _map_tokens(path: Path, count: int) -> np.ndarray:
    if count == 0:
        # numpy cannot memory-map an empty file.
        return np.zeros(0, dtype=_TOKEN_DTYPE)
    return np.memmap(path, dtype=_TOKEN_DTYPE, mode="r", shape=(count,))


class TokenView:
    """A read-only concatenation of 1-D uint32 arrays, sliced without copying when possible.

    ``view[a:b]`` / :meth:`slice` returns a zero-copy view when the range lies inside one
    segment and a copy (``numpy.concatenate``) when it crosses a segment boundary.
    """

    def __init__(self, segments: Sequence[np.ndarray]) -> None:
        self.segments: List[np.ndarray] = [s for s in segments if len(s) > 0]
        lengths = np.array([len(s) for s in self.segments], dtype=np.int64)
        # starts[i] = offset of segment i in the concatenated stream; starts[-1] = total
        self._starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("TokenView supports only contiguous slices view[a:b]")
        start, stop, _ = key.indices(len(self))
        return self.slice(start, stop)

    def slice(self, start: int, stop: int) -> np.ndarray:
        """Tokens ``[start, stop)`` of the concatenated stream as a 1-D uint32 array."""
        n = len(self)
        if not (0 <= start <= stop <= n):
            raise CorpusError(
                f"token range [{start}, {stop}) is outside the stream of {n} tokens",
                code="APRX-C228",
            )
        if start == stop:
            return np.zeros(0, dtype=_TOKEN_DTYPE)
        first = int(np.searchsorted(self._starts, start, side="right")) - 1
        last = int(np.searchsorted(self._starts, stop, side="left")) - 1
        if first == last:
            base = int(self._starts[first])
            return self.segments[first][start - base : stop - base]
        parts = []
        for i in range(first, last + 1):
            base = int(self._starts[i])
            lo = max(start, base) - base
            hi = min(stop, int(self._starts[i + 1])) - base
            parts.append(self.segments[i][lo:hi])
        return np.concatenate(parts)


class ShardDataset:
    """A memory-mapped, validated view of an aprx shard directory.

    ``len(ds)`` is the total number of tokens. Opening validates every shard against the
    manifest (file sizes, index lengths, last offsets, totals); pass ``verify_digests=True``
    (or call :meth:`verify_digests` later) to also hash every ``.bin`` (``verify_sha256`` is
    the older name of both).
    """

    def __init__(
        self, path: PathLike, *, verify_digests: bool = False, verify_sha256: bool = False
    ) -> None:
        self.path = Path(path)
        manifest_path = self.path / "manifest.json"
        if not manifest_path.is_file():
            raise CorpusError(
                f"{manifest_path}: shard manifest not found (is {self.path} a complete "
                "`aprx tokenize encode-corpus` output? the manifest is written last)",
                code="APRX-C220",
            )
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            # ValueError covers UnicodeDecodeError and JSONDecodeError, and also a number of
            # more than 4300 digits, which json.loads refuses with a plain ValueError;
            # RecursionError is JSON nested too deep to parse.
            raise CorpusError(
                f"{manifest_path}: cannot read shard manifest: {exc}", code="APRX-C220"
            ) from exc
        self.manifest: Dict[str, Any] = manifest
        self._check_manifest_fields(manifest_path, manifest)

        self.shard_names: List[str] = []
        self.shards: List[np.ndarray] = []
        self.doc_ends: List[np.ndarray] = []  # per shard, uint64 end offsets (in memory)
        total_tokens = 0
        total_docs = 0
        for entry in manifest["shards"]:
            bin_path = self.path / entry["file"]
            idx_path = self.path / entry["index"]
            tokens = int(entry["tokens"])
            docs = int(entry["documents"])
            for p in (bin_path, idx_path):
                if not p.is_file():
                    raise CorpusError(
                        f"{p}: listed in {manifest_path} but missing", code="APRX-C222"
                    )
            size = bin_path.stat().st_size
            if size != tokens * _TOKEN_DTYPE.itemsize:
                raise CorpusError(
                    f"{bin_path}: {size} bytes on disk but the manifest says {tokens} tokens "
                    f"({tokens * _TOKEN_DTYPE.itemsize} bytes); the shard is truncated or "
                    "does not belong to this manifest",
                    code="APRX-C223",
                )
            isize = idx_path.stat().st_size
            if isize != docs * _INDEX_DTYPE.itemsize:
                raise CorpusError(
                    f"{idx_path}: {isize} bytes on disk = {isize / _INDEX_DTYPE.itemsize:g} "
                    f"offsets, but the manifest says {docs} documents",
                    code="APRX-C224",
                )
            ends = np.fromfile(idx_path, dtype=_INDEX_DTYPE) if docs else np.zeros(0, np.uint64)
            if docs:
                if int(ends[-1]) != tokens:
                    raise CorpusError(
                        f"{idx_path}: last document ends at token {int(ends[-1])} but "
                        f"{bin_path.name} holds {tokens} tokens",
                        code="APRX-C225",
                    )
                if len(ends) > 1 and bool(np.any(ends[1:] < ends[:-1])):
                    bad = int(np.argmax(ends[1:] < ends[:-1])) + 1
                    raise CorpusError(
                        f"{idx_path}: document offsets decrease at document {bad} "
                        f"({int(ends[bad - 1])} -> {int(ends[bad])})",
                        code="APRX-C225",
                    )
            elif tokens:
                raise CorpusError(
                    f"{idx_path}: no documents but {bin_path.name} holds {tokens} tokens",
                    code="APRX-C225",
                )
            self.shard_names.append(str(entry["file"]))
            self.shards.append(_map_tokens(bin_path, tokens))
            self.doc_ends.append(ends)
            total_tokens += tokens
            total_docs += docs

        for key, actual in (("total_tokens", total_tokens), ("total_documents", total_docs)):
            if key in manifest and manifest[key] != actual:
                raise CorpusError(
                    f"{manifest_path}: {key} is {manifest[key]} but its shards sum to {actual}",
                    code="APRX-C226",
                )
        self._total_tokens = total_tokens
        self._doc_counts = np.array([len(e) for e in self.doc_ends], dtype=np.int64)
        self._doc_starts = np.concatenate([[0], np.cumsum(self._doc_counts)]).astype(np.int64)
        self._stream = TokenView(self.shards)
        self._shard_token_starts = np.concatenate(
            [[0], np.cumsum([len(s) for s in self.shards])]
        ).astype(np.int64)
        if verify_digests or verify_sha256:
            self.verify_digests()

    @staticmethod
    def _check_manifest_fields(manifest_path: Path, manifest: Any) -> None:
        def bad(msg: str) -> CorpusError:
            return CorpusError(f"{manifest_path}: {msg}", code="APRX-C221")

        if not isinstance(manifest, dict):
            raise bad("the manifest is not a JSON object")
        schema = manifest.get("schema")
        if schema != SHARDS_SCHEMA:
            raise bad(f"schema is {schema!r}, expected {SHARDS_SCHEMA!r}")
        dtype = manifest.get("dtype", "uint32")
        if dtype != "uint32":
            raise bad(f"dtype is {dtype!r}; only 'uint32' shards are supported")
        shards = manifest.get("shards")
        if not isinstance(shards, list):
            raise bad("'shards' is missing or not a list")
        for i, entry in enumerate(shards):
            if not isinstance(entry, dict):
                raise bad(f"shards[{i}] is not an object")
            for key in ("file", "index", "tokens", "documents"):
                if key not in entry:
                    raise bad(f"shards[{i}] has no {key!r}")
            for key in ("file", "index"):
                name = entry[key]
                if (
                    not isinstance(name, str)
                    or "/" in name
                    or "\\" in name
                    or name in ("", "..", ".")
                ):
                    raise bad(f"shards[{i}].{key} = {name!r} is not a plain file name")
            for key in ("tokens", "documents"):
                v = entry[key]
                if not is_int(v, 0):
                    raise bad(f"shards[{i}].{key} = {v!r} is not a non-negative integer")
            for key in _DIGESTS:
                v = entry.get(key)
                if v is not None and not isinstance(v, str):
                    raise bad(f"shards[{i}].{key} = {v!r} is not a string")
        # A file listed twice would be read twice, and its data counted twice.
        seen: Dict[str, str] = {}
        for i, entry in enumerate(shards):
            for key in ("file", "index"):
                name = entry[key]
                if name in seen:
                    raise bad(
                        f"shards[{i}].{key} = {name!r} is already listed as {seen[name]}; "
                        "every shard file may appear once"
                    )
                seen[name] = f"shards[{i}].{key}"

        def check_int(where: str, v: Any, optional: bool, lo: int = 0, hi: int = -1) -> None:
            if v is None and optional:
                return
            if not is_int(v, lo):
                what = "a non-negative integer" if lo == 0 else f"an integer >= {lo}"
                raise bad(f"{where} = {v!r} is not {what}")
            if hi >= 0 and v > hi:
                raise bad(f"{where} = {v} does not fit in uint32 (at most {hi})")

        for key in ("total_tokens", "total_documents"):
            if key in manifest:
                check_int(key, manifest[key], optional=False)
        # max_token_id is -1 for a dataset with no tokens (write_shards)
        check_int("max_token_id", manifest.get("max_token_id"), True, lo=-1, hi=_U32_MAX)
        check_int("eos_id", manifest.get("eos_id"), optional=True, hi=_U32_MAX)
        eos_policy = manifest.get("eos_policy")
        if eos_policy is not None and not isinstance(eos_policy, str):
            raise bad(f"eos_policy = {eos_policy!r} is not a string")
        tok = manifest.get("tokenizer")
        if tok is not None:
            if not isinstance(tok, dict):
                raise bad(f"tokenizer = {tok!r} is not an object")
            check_int("tokenizer.vocab_size", tok.get("vocab_size"), optional=True)
            for key in ("sha256", "path"):
                v = tok.get(key)
                if v is not None and not isinstance(v, str):
                    raise bad(f"tokenizer.{key} = {v!r} is not a string")

    # -- basic properties -------------------------------------------------------------------

    def __len__(self) -> int:
        return self._total_tokens

    def __repr__(self) -> str:
        return (
            f"ShardDataset({str(self.path)!r}, shards={len(self.shards)}, "
            f"tokens={len(self)}, documents={self.num_documents})"
        )

    @property
    def num_tokens(self) -> int:
        return self._total_tokens

    @property
    def num_documents(self) -> int:
        return int(self._doc_starts[-1])

    @property
    def max_token_id(self) -> Optional[int]:
        """The manifest's ``max_token_id`` (``None`` if absent); see :meth:`scan_max_token_id`."""
        v = self.manifest.get("max_token_id")
        return None if v is None else int(v)

    @property
    def eos_id(self) -> Optional[int]:
        v = self.manifest.get("eos_id")
        return None if v is None else int(v)

    @property
    def eos_policy(self) -> Optional[str]:
        return self.manifest.get("eos_policy")

    @property
    def tokenizer_sha256(self) -> Optional[str]:
        tok = self.manifest.get("tokenizer")
        return tok.get("sha256") if isinstance(tok, dict) else None

    @property
    def vocab_size(self) -> Optional[int]:
        tok = self.manifest.get("tokenizer")
        v = tok.get("vocab_size") if isinstance(tok, dict) else None
        return None if v is None else int(v)

    # -- access -----------------------------------------------------------------------------

    def stream(self) -> TokenView:
        """The concatenation of all shards, in manifest order."""
        return self._stream

    def tokens(self, start: int, stop: int) -> np.ndarray:
        """Tokens ``[start, stop)`` of the concatenated stream (a view when inside one shard)."""
        return self._stream.slice(start, stop)

    def shard_index(self, name: Union[str, int]) -> int:
        """Resolve a shard given as index, file name (``shard-00003.bin``) or stem."""
        if isinstance(name, int) or (isinstance(name, str) and name.isdigit()):
            i = int(name)
            if 0 <= i < len(self.shards):
                return i
        else:
            for i, file in enumerate(self.shard_names):
                if name == file or name == Path(file).stem:
                    return i
        raise CorpusError(
            f"{self.path}: no shard named {name!r} (have {', '.join(self.shard_names) or 'none'})",
            code="APRX-C228",
        )

    def shard_token_range(self, i: int) -> Tuple[int, int]:
        """``[start, stop)`` of shard ``i`` in the concatenated token stream."""
        return int(self._shard_token_starts[i]), int(self._shard_token_starts[i + 1])

    def document_boundaries(self) -> np.ndarray:
        """End offsets of every document in the concatenated stream (int64, ascending)."""
        parts = [
            ends.astype(np.int64) + int(self._shard_token_starts[i])
            for i, ends in enumerate(self.doc_ends)
        ]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def _locate_document(self, i: int) -> Tuple[int, int]:
        if not (-self.num_documents <= i < self.num_documents):
            raise CorpusError(
                f"document {i} out of range ({self.num_documents} documents)", code="APRX-C228"
            )
        if i < 0:
            i += self.num_documents
        shard = int(np.searchsorted(self._doc_starts, i, side="right")) - 1
        return shard, i - int(self._doc_starts[shard])

    def document(self, i: int) -> np.ndarray:
        """Document ``i`` (global, in manifest order) as a zero-copy uint32 view."""
        shard, local = self._locate_document(i)
        ends = self.doc_ends[shard]
        start = int(ends[local - 1]) if local > 0 else 0
        return self.shards[shard][start : int(ends[local])]

    def iter_documents(self) -> Iterator[np.ndarray]:
        for shard, ends in zip(self.shards, self.doc_ends, strict=True):
            start = 0
            for end in ends:
                end = int(end)
                yield shard[start:end]
                start = end

    # -- verification -----------------------------------------------------------------------

    def verify_digests(self) -> None:
        """Hash every ``.bin`` and compare with its manifest digest (``APRX-C227`` on a
        mismatch, or for a shard the manifest gives no digest)."""
        for entry in self.manifest["shards"]:
            digest = shard_digest(entry)
            if digest is None:
                raise CorpusError(
                    f"{self.path / 'manifest.json'}: shard {entry['file']} has no digest "
                    f"({' or '.join(_DIGESTS)}) to verify against",
                    code="APRX-C227",
                )
            algorithm, expected = digest
            actual = _file_digest(self.path / entry["file"], algorithm)
            if actual != expected:
                raise CorpusError(
                    f"{self.path / entry['file']}: {algorithm} {actual} but the manifest says "
                    f"{expected}",
                    code="APRX-C227",
                )

    def verify_sha256(self) -> None:
        """The older name of :meth:`verify_digests`."""
        self.verify_digests()

    def scan_max_token_id(self) -> int:
        """The largest token id actually present (reads every shard; -1 when empty)."""
        m = -1
        for shard in self.shards:
            step = 1 << 24
            for lo in range(0, len(shard), step):
                m = max(m, int(shard[lo : lo + step].max()))
        return m

    def sample(self, max_tokens: int = 1 << 20, chunks: int = 64) -> np.ndarray:
        """Up to ``max_tokens`` tokens from ``chunks`` evenly spaced places (deterministic)."""
        n = len(self)
        if n <= max_tokens:
            return np.asarray(self.tokens(0, n))
        size = max(1, max_tokens // chunks)
        starts = np.linspace(0, n - size, chunks).astype(np.int64)
        return np.concatenate([np.asarray(self.tokens(int(s), int(s) + size)) for s in starts])


def write_shards(
    path: PathLike,
    documents: Sequence[Sequence[int]],
    *,
    tokenizer_sha256: str,
    vocab_size: int,
    tokenizer_path: str = "",
    eos_id: Optional[int] = None,
    eos_policy: str = "none",
    shard_tokens: int = 1 << 26,
) -> Dict[str, Any]:
    """Write ``documents`` (lists of ids, EOS already included) as an aprx shard directory.

    A small reference writer of the ``aprx.shards/1`` contract (numpy; for tests, examples and
    small corpora: the production writer is ``aprx tokenize encode-corpus``). A document never
    straddles two shards: a new shard starts when the next document would exceed
    ``shard_tokens`` (a longer document gets a shard of its own). Returns the manifest.
    """
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    groups: List[List[np.ndarray]] = [[]]
    fill = 0
    for doc in documents:
        arr = np.asarray(doc, dtype=np.int64)
        if arr.size and (arr.min() < 0 or arr.max() > 0xFFFFFFFF):
            raise CorpusError("token ids must fit in uint32", code="APRX-C228")
        if groups[-1] and fill + arr.size > shard_tokens:
            groups.append([])
            fill = 0
        groups[-1].append(arr.astype(_TOKEN_DTYPE))
        fill += arr.size
    if not groups[-1]:
        groups.pop()
    entries = []
    max_id = -1
    for i, docs in enumerate(groups):
        name = f"shard-{i:05d}"
        flat = np.concatenate(docs) if docs else np.zeros(0, _TOKEN_DTYPE)
        ends = np.cumsum([d.size for d in docs]).astype(_INDEX_DTYPE)
        data = flat.astype(_TOKEN_DTYPE).tobytes()
        digest = _aprx.Blake3()
        digest.update(data)
        try:
            (out / f"{name}.bin").write_bytes(data)
            (out / f"{name}.idx").write_bytes(ends.tobytes())
        except OSError as exc:
            raise AprxIOError(f"{out}: cannot write shard {name}: {exc}") from exc
        if flat.size:
            max_id = max(max_id, int(flat.max()))
        entries.append(
            {
                "file": f"{name}.bin",
                "index": f"{name}.idx",
                "tokens": int(flat.size),
                "documents": len(docs),
                "blake3": digest.hexdigest(),
            }
        )
    manifest = {
        "schema": SHARDS_SCHEMA,
        "dtype": "uint32",
        "tokenizer": {"path": tokenizer_path, "sha256": tokenizer_sha256, "vocab_size": vocab_size},
        "eos_policy": eos_policy,
        "eos_id": eos_id,
        "shard_tokens": shard_tokens,
        "shards": entries,
        "total_tokens": sum(int(e["tokens"]) for e in entries),  # type: ignore[call-overload]
        "total_documents": sum(int(e["documents"]) for e in entries),  # type: ignore[call-overload]
        "max_token_id": max_id,
    }
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out / "manifest.json")
    return manifest


DEFAULT_VAL_FRACTION = 0.01


class DatasetSplit:
    """Disjoint training and validation token streams over one :class:`ShardDataset`."""

    def __init__(
        self,
        train: TokenView,
        val: TokenView,
        description: str,
        info: Dict[str, Any],
    ) -> None:
        self.train = train
        self.val = val
        self.description = description
        self.info = info

    def to_dict(self) -> Dict[str, Any]:
        return dict(
            self.info,
            description=self.description,
            train_tokens=len(self.train),
            val_tokens=len(self.val),
        )


def split_dataset(
    ds: ShardDataset,
    *,
    val_shard: Optional[Union[str, int]] = None,
    val_fraction: Optional[float] = None,
) -> DatasetSplit:
    """Hold out a whole shard (``val_shard``) or the last ``val_fraction`` of the tokens.

    With ``val_fraction`` the split point is moved to the nearest document boundary when one
    lies within half the validation size of it, so no document is cut in two. Neither given:
    ``val_fraction = DEFAULT_VAL_FRACTION``. The two streams never overlap.
    """
    if val_shard is not None and val_fraction is not None:
        raise CorpusError("give val_shard or val_fraction, not both", code="APRX-C229")
    if val_shard is not None:
        i = ds.shard_index(val_shard)
        train = TokenView([s for j, s in enumerate(ds.shards) if j != i])
        val = TokenView([ds.shards[i]])
        return DatasetSplit(
            train,
            val,
            f"validation = shard {ds.shard_names[i]} ({len(val)} tokens), training = the "
            f"other {len(ds.shards) - 1} shards ({len(train)} tokens)",
            {"mode": "shard", "val_shard": ds.shard_names[i]},
        )
    frac = DEFAULT_VAL_FRACTION if val_fraction is None else float(val_fraction)
    if not (0.0 < frac < 1.0):
        raise CorpusError(f"val_fraction {frac} must be in (0, 1)", code="APRX-C229")
    n = len(ds)
    val_n = int(round(n * frac))
    target = n - val_n
    split = target
    bounds = ds.document_boundaries()
    if len(bounds) and val_n > 0:
        j = int(np.searchsorted(bounds, target))
        best = None
        for k in (j - 1, j):
            if 0 <= k < len(bounds) and 0 < bounds[k] < n:
                b = int(bounds[k])
                if abs(b - target) <= val_n // 2 and (
                    best is None or abs(b - target) < abs(best - target)
                ):
                    best = b
        if best is not None:
            split = best
    segs_train: List[np.ndarray] = []
    segs_val: List[np.ndarray] = []
    for i, shard in enumerate(ds.shards):
        lo, hi = ds.shard_token_range(i)
        if hi <= split:
            segs_train.append(shard)
        elif lo >= split:
            segs_val.append(shard)
        else:
            segs_train.append(shard[: split - lo])
            segs_val.append(shard[split - lo :])
    train, val = TokenView(segs_train), TokenView(segs_val)
    return DatasetSplit(
        train,
        val,
        f"validation = the last {len(val)} tokens ({len(val) / max(n, 1):.2%}, from token "
        f"{split}), training = the first {len(train)} tokens",
        {"mode": "fraction", "val_fraction": frac, "split_token": split},
    )
