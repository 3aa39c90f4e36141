"""Writing token stores: documents are checked, spilled to raw files, then assembled.

Memory is bounded by one batch however large the corpus; the same documents and
attributes give the same bytes however they are batched (`token_format` holds the format).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import h5py
import numpy as np

import backstory
from backstory.core.files import file_sha256, write_file_atomically
from backstory.data.token_format import (
    COPY_BLOCK,
    FORMAT,
    FORMAT_VERSION,
    INT64,
    JSON_KEYS_ATTR,
    TOKEN_RANGE_CHUNK,
    RangeTracker,
    TokenStoreError,
    check_attrs,
    token_dtype,
)

logger = logging.getLogger(__name__)

# Cap object formats at HDF5 1.10 so files written by a newer HDF5 stay readable by
# the older libraries users commonly have.
_LIBVER = ("earliest", "v110")


@dataclass(frozen=True)
class DocBatch:
    """Encoded documents on their way into a token store.

    tokens: the token ids of the documents, concatenated (1-D integer array).
    doc_lengths: int64 (n,), the number of tokens of each document.
    story_spans: int64 (n, 2), [start, end) of each document's story-text tokens,
        relative to the document's first token.
    doc_bytes: int64 (n,), UTF-8 bytes of each document's story text.
    """

    tokens: np.ndarray
    doc_lengths: np.ndarray
    story_spans: np.ndarray
    doc_bytes: np.ndarray


@dataclass
class TokenStream:
    """What an export node returns; the token-store dataset writes it.

    Either ``batches`` (lazy, consumed once, written in this process) or ``documents``:
    an object with ``parts`` (names), ``identity()``, ``fingerprint`` and
    ``encode_part(name, num_threads)`` (``backstory.data.documents.StoryDocuments``),
    which ``backstory.data.token_export`` encodes part by part in ``workers`` processes
    (0: every core), resumably.
    """

    batches: Iterable[DocBatch] | None
    attrs: dict
    documents: Any = None
    workers: int = 0


def write_token_store(path: Path, batches: Iterable[DocBatch], *, attrs: dict) -> dict:
    """Stream `batches` into a token store at `path`; return n_docs, n_tokens and dtype.

    Memory is bounded by one batch: the batches are spilled to raw files next to `path`
    (`spill_batches`), then copied block by block into contiguous H5 datasets of their
    final size (`assemble_token_store`), and the file appears under `path` complete or not
    at all. Same batches and attrs give the same bytes, however the documents are batched.
    Dict and list attribute values are stored JSON-encoded.
    """
    path = Path(path)
    header = check_attrs(attrs, path)
    # Spill next to the target: the token stream can be larger than /tmp.
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.spill-") as spill_dir:
        part = spill_batches(batches, Path(spill_dir), "all", header.vocab_size, where=str(path))
        return assemble_token_store(path, [part], attrs=attrs)


SPILL_FILES = ("tokens", "lengths", "spans", "bytes")


@dataclass(frozen=True)
class SpillPart:
    """Encoded documents spilled to four raw files, one piece of a future token store.

    ``<folder>/<prefix>.tokens`` (token ids, the store's dtype), ``.lengths`` (int64 per
    document), ``.spans`` (int64 pairs, relative to each document) and ``.bytes`` (int64
    per document); ``sha256`` and ``sizes`` of each file let a resumed export reuse it.
    """

    folder: str
    prefix: str
    n_docs: int
    n_tokens: int
    token_min: int
    token_max: int
    sha256: dict[str, str]
    sizes: dict[str, int]

    def path(self, kind: str) -> Path:
        return Path(self.folder) / f"{self.prefix}.{kind}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], folder: Path) -> SpillPart:
        return cls(**(data | {"folder": str(folder)}))

    def intact(self) -> bool:
        """Whether the four files are there with the recorded sizes and hashes."""
        for kind in SPILL_FILES:
            path = self.path(kind)
            if not path.is_file() or path.stat().st_size != self.sizes[kind]:
                return False
            if file_sha256(path) != self.sha256[kind]:
                return False
        return True


class _Spill:
    """An append-only raw file of one dtype, hashed as it is written."""

    def __init__(self, path: Path, dtype: np.dtype) -> None:
        self.path = path
        self.dtype = dtype
        self.count = 0
        self.hasher = hashlib.sha256()
        self._file: BinaryIO = open(path, "wb")  # closed by close(), once streaming ends

    def append(self, values: np.ndarray) -> None:
        data = np.ascontiguousarray(values, dtype=self.dtype)
        view = memoryview(data).cast("B")
        self._file.write(view)
        self.hasher.update(view)
        self.count += data.size

    def close(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()


def spill_batches(
    batches: Iterable[DocBatch], folder: Path, prefix: str, vocab_size: int, *, where: str
) -> SpillPart:
    """Check each batch and append it to the four spill files of a `SpillPart`.

    Memory is bounded by one batch. Ids outside [0, vocab_size) are refused with an
    error naming ``where`` and the document; ``where`` also names bad batches.
    """
    folder = Path(folder)
    dtype = token_dtype(vocab_size)
    spills = {
        "tokens": _Spill(folder / f"{prefix}.tokens", dtype),
        "lengths": _Spill(folder / f"{prefix}.lengths", INT64),
        "spans": _Spill(folder / f"{prefix}.spans", INT64),
        "bytes": _Spill(folder / f"{prefix}.bytes", INT64),
    }
    n_docs = n_tokens = 0
    token_min, token_max = -1, -1
    try:
        for batch_index, batch in enumerate(batches):
            tokens, lengths, spans, doc_bytes = _check_batch(batch, batch_index, n_docs, where)
            _check_token_ids(tokens, lengths, vocab_size, batch_index, n_docs, where)
            if tokens.size:
                low, high = int(tokens.min()), int(tokens.max())
                token_min = low if token_min < 0 else min(token_min, low)
                token_max = max(token_max, high)
            spills["tokens"].append(tokens)
            spills["lengths"].append(lengths)
            spills["spans"].append(spans)
            spills["bytes"].append(doc_bytes)
            n_docs += lengths.size
            n_tokens += tokens.size
    finally:
        for spill in spills.values():
            spill.close()
    return SpillPart(
        str(folder), prefix, n_docs, n_tokens, token_min, token_max,
        sha256={kind: spill.hasher.hexdigest() for kind, spill in spills.items()},
        sizes={kind: spill.path.stat().st_size for kind, spill in spills.items()},
    )


def _check_batch(
    batch: DocBatch, batch_index: int, first_doc: int, path: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Check one batch's shapes and per-document numbers; return its arrays."""
    where = f"{path}: batch {batch_index} (documents from {first_doc})"
    if not isinstance(batch, DocBatch):
        raise ValueError(f"{where}: expected a DocBatch, got {type(batch).__name__}")
    tokens = _int_array(batch.tokens, "tokens", 1, where)
    lengths = _int_array(batch.doc_lengths, "doc_lengths", 1, where)
    spans = _int_array(batch.story_spans, "story_spans", 2, where)
    doc_bytes = _int_array(batch.doc_bytes, "doc_bytes", 1, where)
    n = lengths.size
    if spans.shape != (n, 2) or doc_bytes.shape != (n,):
        raise ValueError(
            f"{where}: {n} doc_lengths but story_spans {spans.shape} and doc_bytes "
            f"{doc_bytes.shape}; expected ({n}, 2) and ({n},)"
        )
    _first_bad(lengths < 0, "has a negative length", first_doc, where)
    if int(lengths.sum()) != tokens.size:
        raise ValueError(
            f"{where}: doc_lengths sum to {int(lengths.sum())} but there are {tokens.size} tokens"
        )
    bad_span = (spans[:, 0] < 0) | (spans[:, 0] > spans[:, 1]) | (spans[:, 1] > lengths)
    _first_bad(bad_span, "has a story span outside [0, length] or reversed", first_doc, where)
    _first_bad(doc_bytes < 0, "has negative doc_bytes", first_doc, where)
    return tokens, lengths, spans, doc_bytes


def _int_array(values: Any, name: str, ndim: int, where: str) -> np.ndarray:
    """`values` as an integer array of `ndim` dimensions (int64 unless it is `tokens`)."""
    array = np.asarray(values)
    if array.ndim != ndim:
        raise ValueError(f"{where}: {name} must be {ndim}-D, got shape {array.shape}")
    if array.dtype.kind not in "iu":
        # np.array([]) is float64; an empty array carries no values to misread.
        if array.size:
            raise ValueError(f"{where}: {name} must hold integers, got dtype {array.dtype}")
        array = array.astype(np.int64)
    return array if name == "tokens" else array.astype(np.int64, copy=False)


def _first_bad(bad: np.ndarray, what: str, first_doc: int, where: str) -> None:
    """Raise naming the first document flagged in `bad`, if any."""
    if bad.any():
        doc = first_doc + int(np.argmax(bad))
        raise ValueError(f"{where}: document {doc} {what}")


def _check_token_ids(
    tokens: np.ndarray,
    lengths: np.ndarray,
    vocab_size: int,
    batch_index: int,
    first_doc: int,
    path: str,
) -> None:
    """Reject ids outside [0, vocab_size), naming the document that holds the first one."""
    if tokens.size == 0:
        return
    if int(tokens.min()) >= 0 and int(tokens.max()) < vocab_size:
        return
    bad = (tokens < 0) | (tokens >= vocab_size)
    position = int(np.argmax(bad))
    doc = first_doc + int(np.searchsorted(np.cumsum(lengths), position, side="right"))
    raise ValueError(
        f"{path}: document {doc} (batch {batch_index}) holds token id {int(tokens[position])} "
        f"outside [0, vocab_size={vocab_size})"
    )


def assemble_token_store(path: Path, parts: Sequence[SpillPart], *, attrs: dict) -> dict:
    """Write the token store at `path` from spilled parts, in order; its summary.

    Document offsets and story spans become absolute; the id range of every chunk of
    `TOKEN_RANGE_CHUNK` tokens is recorded (`token_ranges`, `token_min`, `token_max`)
    so a reader can check ids against `vocab_size` without reading the tokens. The file
    appears under `path` complete or not at all (`write_file_atomically`).
    """
    path = Path(path)
    header = check_attrs(attrs, path)
    n_docs = sum(part.n_docs for part in parts)
    n_tokens = sum(part.n_tokens for part in parts)
    file_attrs = dict(header.attrs)
    file_attrs.update(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        n_docs=n_docs,
        n_tokens=n_tokens,
        package_version=backstory.__version__,
        token_range_chunk=TOKEN_RANGE_CHUNK,
    )
    if header.json_keys:
        file_attrs[JSON_KEYS_ATTR] = json.dumps(sorted(header.json_keys))
    write_file_atomically(
        path, lambda tmp: _write_h5(tmp, parts, file_attrs, header.dtype, n_docs, n_tokens))
    logger.info("Wrote token store %s: %d documents, %d %s tokens", path, n_docs, n_tokens,
                header.dtype)
    return {"n_docs": n_docs, "n_tokens": n_tokens, "dtype": header.dtype.name}


def _write_h5(tmp: Path, parts: Sequence[SpillPart], attrs: dict[str, Any], dtype: np.dtype,
              n_docs: int, n_tokens: int) -> None:
    """Create the contiguous datasets at their final size and copy the parts in."""
    # track_order and sorted attributes fix the on-disk order; h5py stores no object
    # timestamps by default, so the bytes depend on the content only.
    tracker = RangeTracker(TOKEN_RANGE_CHUNK)
    with h5py.File(tmp, "w", libver=_LIBVER, track_order=True) as f:
        tokens = f.create_dataset("tokens", shape=(n_tokens,), dtype=dtype)
        offsets = f.create_dataset("doc_offsets", shape=(n_docs + 1,), dtype=INT64)
        spans = f.create_dataset("story_spans", shape=(n_docs, 2), dtype=INT64)
        doc_bytes = f.create_dataset("doc_bytes", shape=(n_docs,), dtype=INT64)
        offsets[0] = 0
        token_row = doc_row = 0
        for part in parts:
            for block in _blocks(part.path("tokens"), dtype, COPY_BLOCK):
                tokens[token_row : token_row + block.size] = block
                tracker.update(block)
                token_row += block.size
            doc_row = _copy_documents(part, offsets, spans, doc_bytes, doc_row,
                                      int(offsets[doc_row]))
        if token_row != n_tokens or doc_row != n_docs:
            raise TokenStoreError(f"{tmp}: the spilled parts hold other counts than recorded")
        ranges = tracker.finish()
        f.create_dataset("token_ranges", data=ranges, dtype=INT64)
        attrs = dict(attrs)
        attrs["token_min"] = np.int64(ranges[:, 0].min() if ranges.size else -1)
        attrs["token_max"] = np.int64(ranges[:, 1].max() if ranges.size else -1)
        for key in sorted(attrs):
            f.attrs[key] = attrs[key]


def _copy_documents(part: SpillPart, offsets: h5py.Dataset, spans: h5py.Dataset,
                    doc_bytes: h5py.Dataset, first: int, base: int) -> int:
    """Copy one part's per-document arrays from row `first`, shifted by token `base`."""
    row = first
    for lengths, rel_spans, nbytes in zip(
        _blocks(part.path("lengths"), INT64, COPY_BLOCK),
        _blocks(part.path("spans"), INT64, 2 * COPY_BLOCK),
        _blocks(part.path("bytes"), INT64, COPY_BLOCK),
        strict=True,
    ):
        ends = base + np.cumsum(lengths, dtype=np.int64)
        starts = ends - lengths
        offsets[row + 1 : row + 1 + lengths.size] = ends
        spans[row : row + lengths.size] = rel_spans.reshape(-1, 2) + starts[:, None]
        doc_bytes[row : row + lengths.size] = nbytes
        row += lengths.size
        base = int(ends[-1])
    return row


def _blocks(path: Path, dtype: np.dtype, block: int) -> Iterator[np.ndarray]:
    """The values of a raw file, at most `block` at a time."""
    with open(path, "rb") as f:
        while True:
            values = np.fromfile(f, dtype=dtype, count=block)
            if not values.size:
                return
            yield values


