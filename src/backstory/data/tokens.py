"""The H5 token store: one file per variant and split, streamed in, memory-mapped out.

Layout (format version 1): `tokens` (uint16 or uint32, 1-D, contiguous so that numpy can
memory-map it), `doc_offsets` (int64, n_docs + 1), `story_spans` (int64, n_docs x 2,
absolute [start, end) of the story-text tokens), `doc_bytes` (int64, n_docs), plus
lineage attributes (see `REQUIRED_ATTRS` and `write_token_store`).
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
from numpy.lib.stride_tricks import sliding_window_view

import backstory
from backstory.data.files import file_sha256
from backstory.errors import UserError

logger = logging.getLogger(__name__)

FORMAT = "backstory-tokens"
FORMAT_VERSION = 2  # 2: token_ranges (the id range of each chunk) recorded and checked
READABLE_VERSIONS = (1, 2)
REQUIRED_ATTRS = (
    "variant",
    "layout",
    "vocab_size",
    "bos_id",
    "eos_id",
    "tokenizer_sha256",
    "corpus_fingerprint",
)
# Keys the writer owns; a caller passing one would silently contradict the file.
WRITER_ATTRS = ("format", "format_version", "n_docs", "n_tokens", "package_version",
                "token_range_chunk", "token_min", "token_max")
# Names the attributes whose values were JSON-encoded, so the reader can decode exactly those.
_JSON_KEYS_ATTR = "json_attrs"
DATASETS = ("tokens", "doc_offsets", "story_spans", "doc_bytes")
# Ids are range-checked per chunk of this many tokens (8 bytes recorded per chunk).
TOKEN_RANGE_CHUNK = 1 << 20
# uint16 holds ids 0..65535, i.e. a vocabulary of up to 65536 entries.
UINT16_MAX_VOCAB = 65536
# Cap object formats at HDF5 1.10 so files written by a newer HDF5 stay readable by
# the older libraries users commonly have.
_LIBVER = ("earliest", "v110")
# Elements per block when copying spill files into the H5 file: 4 Mi elements is
# 8-32 MiB per block, which bounds memory whatever the corpus size.
_COPY_BLOCK = 1 << 22
_INT64 = np.dtype("<i8")


class TokenStoreError(UserError, ValueError):
    """A token store file is missing, foreign, corrupt, inconsistent or too small."""


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


def token_dtype(vocab_size: int) -> np.dtype:
    """The little-endian unsigned dtype that stores ids of a `vocab_size` vocabulary."""
    return np.dtype("<u2") if vocab_size <= UINT16_MAX_VOCAB else np.dtype("<u4")


# ---------------------------------------------------------------------------- writer


def write_token_store(path: Path, batches: Iterable[DocBatch], *, attrs: dict) -> dict:
    """Stream `batches` into a token store at `path`; return n_docs, n_tokens and dtype.

    Memory is bounded by one batch: the batches are spilled to raw files next to `path`
    (`spill_batches`), then copied block by block into contiguous H5 datasets of their
    final size (`assemble_token_store`). The file is written as `<path>.tmp` and
    renamed, so a crash never leaves a half-written file under the real name. Same
    batches and attrs give the same bytes, however the documents are batched. Dict and
    list attribute values are stored JSON-encoded.
    """
    path = Path(path)
    header = check_attrs(attrs, path)
    # Spill next to the target: the token stream can be larger than /tmp.
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.spill-") as spill_dir:
        part = spill_batches(batches, Path(spill_dir), "all", header.vocab_size, where=str(path))
        return assemble_token_store(path, [part], attrs=attrs)


@dataclass(frozen=True)
class StoreHeader:
    """What the writer needs from the attributes: the encoded values and the id range."""

    attrs: dict[str, Any]
    json_keys: list[str]
    vocab_size: int

    @property
    def dtype(self) -> np.dtype:
        return token_dtype(self.vocab_size)


def check_attrs(attrs: dict, path: Path) -> StoreHeader:
    """Check the caller's attributes and turn them into H5-storable values."""
    if not isinstance(attrs, dict):
        raise ValueError(f"{path}: attrs must be a dict, got {type(attrs).__name__}")
    missing = [key for key in REQUIRED_ATTRS if key not in attrs]
    if missing:
        raise ValueError(f"{path}: missing required token-store attributes {missing}")
    reserved = sorted(set(attrs) & {*WRITER_ATTRS, _JSON_KEYS_ATTR})
    if reserved:
        raise ValueError(f"{path}: attributes {reserved} are set by the writer, do not pass them")
    _check_header(attrs, path)
    encoded: dict[str, Any] = {}
    json_keys: list[str] = []
    for key, value in attrs.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"{path}: attribute names must be non-empty strings, got {key!r}")
        encoded[key], is_json = _encode_value(key, value, path)
        if is_json:
            json_keys.append(key)
    return StoreHeader(encoded, json_keys, int(attrs["vocab_size"]))


def _check_header(attrs: dict, path: Path) -> None:
    """Validate the required attributes' types and ranges."""
    for key in ("variant", "layout", "tokenizer_sha256", "corpus_fingerprint"):
        if not isinstance(attrs[key], str) or not attrs[key]:
            raise ValueError(f"{path}: attribute {key!r} must be a non-empty string")
    vocab_size = attrs["vocab_size"]
    if not _is_int(vocab_size) or not 1 <= vocab_size <= 2**32:
        raise ValueError(f"{path}: vocab_size must be an integer in [1, 2**32], got {vocab_size!r}")
    for key in ("bos_id", "eos_id"):
        # -1 is how sentencepiece reports a special id the tokenizer does not have.
        if not _is_int(attrs[key]) or not -1 <= attrs[key] < vocab_size:
            raise ValueError(
                f"{path}: {key} must be an integer in [-1, vocab_size={vocab_size}), "
                f"got {attrs[key]!r}"
            )


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _encode_value(key: str, value: Any, path: Path) -> tuple[Any, bool]:
    """Map one attribute to an H5 scalar; dicts, lists and tuples become JSON text."""
    if isinstance(value, str | bool | np.bool_):
        return (bool(value) if not isinstance(value, str) else value), False
    if _is_int(value):
        return np.int64(value), False
    if isinstance(value, float | np.floating):
        return np.float64(value), False
    if isinstance(value, dict | list | tuple):
        try:
            return json.dumps(value, sort_keys=True, separators=(",", ":")), True
        except TypeError as exc:
            raise ValueError(f"{path}: attribute {key!r} is not JSON-serialisable: {exc}") from exc
    raise ValueError(
        f"{path}: attribute {key!r} has unsupported type {type(value).__name__}; "
        "use str, int, float, bool, dict or list"
    )


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
        "lengths": _Spill(folder / f"{prefix}.lengths", _INT64),
        "spans": _Spill(folder / f"{prefix}.spans", _INT64),
        "bytes": _Spill(folder / f"{prefix}.bytes", _INT64),
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
    so a reader can check ids against `vocab_size` without reading the tokens.
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
        file_attrs[_JSON_KEYS_ATTR] = json.dumps(sorted(header.json_keys))
    tmp = path.with_name(path.name + ".tmp")
    try:
        _write_h5(tmp, parts, file_attrs, header.dtype, n_docs, n_tokens)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.info("Wrote token store %s: %d documents, %d %s tokens", path, n_docs, n_tokens,
                header.dtype)
    return {"n_docs": n_docs, "n_tokens": n_tokens, "dtype": header.dtype.name}


class _RangeTracker:
    """Min and max id of every chunk of `size` tokens of a stream fed in blocks."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.ranges: list[tuple[int, int]] = []
        self.filled = 0
        self.low = self.high = 0

    def update(self, block: np.ndarray) -> None:
        position = 0
        while position < block.size:
            take = min(self.size - self.filled, block.size - position)
            piece = block[position : position + take]
            low, high = int(piece.min()), int(piece.max())
            if self.filled:
                low, high = min(low, self.low), max(high, self.high)
            self.low, self.high = low, high
            self.filled += take
            position += take
            if self.filled == self.size:
                self.ranges.append((self.low, self.high))
                self.filled = 0

    def finish(self) -> np.ndarray:
        if self.filled:
            self.ranges.append((self.low, self.high))
            self.filled = 0
        return np.array(self.ranges, dtype=_INT64).reshape(-1, 2)


def _write_h5(tmp: Path, parts: Sequence[SpillPart], attrs: dict[str, Any], dtype: np.dtype,
              n_docs: int, n_tokens: int) -> None:
    """Create the contiguous datasets at their final size and copy the parts in."""
    # track_order and sorted attributes fix the on-disk order; h5py stores no object
    # timestamps by default, so the bytes depend on the content only.
    tracker = _RangeTracker(TOKEN_RANGE_CHUNK)
    with h5py.File(tmp, "w", libver=_LIBVER, track_order=True) as f:
        tokens = f.create_dataset("tokens", shape=(n_tokens,), dtype=dtype)
        offsets = f.create_dataset("doc_offsets", shape=(n_docs + 1,), dtype=_INT64)
        spans = f.create_dataset("story_spans", shape=(n_docs, 2), dtype=_INT64)
        doc_bytes = f.create_dataset("doc_bytes", shape=(n_docs,), dtype=_INT64)
        offsets[0] = 0
        token_row = doc_row = 0
        for part in parts:
            for block in _blocks(part.path("tokens"), dtype, _COPY_BLOCK):
                tokens[token_row : token_row + block.size] = block
                tracker.update(block)
                token_row += block.size
            doc_row = _copy_documents(part, offsets, spans, doc_bytes, doc_row,
                                      int(offsets[doc_row]))
        if token_row != n_tokens or doc_row != n_docs:
            raise TokenStoreError(f"{tmp}: the spilled parts hold other counts than recorded")
        ranges = tracker.finish()
        f.create_dataset("token_ranges", data=ranges, dtype=_INT64)
        attrs = dict(attrs)
        attrs["token_min"] = np.int64(ranges[:, 0].min() if ranges.size else -1)
        attrs["token_max"] = np.int64(ranges[:, 1].max() if ranges.size else -1)
        for key in sorted(attrs):
            f.attrs[key] = attrs[key]
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())  # durable before the rename makes it visible


def _copy_documents(part: SpillPart, offsets: h5py.Dataset, spans: h5py.Dataset,
                    doc_bytes: h5py.Dataset, first: int, base: int) -> int:
    """Copy one part's per-document arrays from row `first`, shifted by token `base`."""
    row = first
    for lengths, rel_spans, nbytes in zip(
        _blocks(part.path("lengths"), _INT64, _COPY_BLOCK),
        _blocks(part.path("spans"), _INT64, 2 * _COPY_BLOCK),
        _blocks(part.path("bytes"), _INT64, _COPY_BLOCK),
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


# ---------------------------------------------------------------------------- reader


class TokenStore:
    """A read-only token store: small arrays loaded, tokens memory-mapped.

    Picklable: the pickle holds only the path, and unpickling reopens the file, so a
    store can be sent to worker processes without copying its tokens.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        header = _read_store(self.path)
        self.attrs: dict[str, Any] = header.attrs
        self.variant: str = header.attrs["variant"]
        self.vocab_size: int = header.attrs["vocab_size"]
        self.bos_id: int = header.attrs["bos_id"]
        self.eos_id: int = header.attrs["eos_id"]
        self.n_tokens: int = header.attrs["n_tokens"]
        self.n_docs: int = header.attrs["n_docs"]
        self.doc_offsets: np.ndarray = header.doc_offsets
        self.story_spans: np.ndarray = header.story_spans
        self.doc_bytes: np.ndarray = header.doc_bytes
        self._tokens: np.ndarray | None = _map_tokens(self.path, header)
        self.token_range_chunk: int = header.attrs.get("token_range_chunk", TOKEN_RANGE_CHUNK)
        if header.token_ranges is None:  # a version-1 store: read the ids once to check them
            self.token_ranges = token_ranges_of(self._tokens, self.token_range_chunk)
            check_token_ranges(self.token_ranges, self.token_range_chunk, self.vocab_size,
                               self.path)
        else:
            self.token_ranges = header.token_ranges
        # Window views by length: building one costs about as much as a whole gather.
        self._window_views: dict[int, np.ndarray] = {}

    # -- lifecycle

    @property
    def tokens(self) -> np.ndarray:
        """The token stream: a read-only np.memmap of the contiguous dataset."""
        if self._tokens is None:
            raise TokenStoreError(f"{self.path}: token store is closed")
        return self._tokens

    def close(self) -> None:
        """Drop the memory map; the store cannot be read afterwards."""
        self._tokens = None
        self._window_views.clear()

    def __enter__(self) -> TokenStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {"path": str(self.path)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(Path(state["path"]))  # type: ignore[misc]

    def __repr__(self) -> str:
        return (
            f"TokenStore({str(self.path)!r}, variant={self.variant!r}, "
            f"n_docs={self.n_docs}, n_tokens={self.n_tokens})"
        )

    def verify_token_ranges(self) -> None:
        """Read every token and compare each chunk's id range with the recorded one.

        Opening a store checks the recorded ranges against vocab_size; this also proves
        the tokens still hold what was recorded (one pass over the file).
        """
        actual = token_ranges_of(self.tokens, self.token_range_chunk)
        differ = np.flatnonzero((actual != self.token_ranges).any(axis=1))
        if differ.size:
            index = int(differ[0])
            raise TokenStoreError(
                f"{self.path}: tokens {index * self.token_range_chunk}.."
                f"{(index + 1) * self.token_range_chunk - 1} hold ids {tuple(actual[index])}, "
                f"recorded as {tuple(self.token_ranges[index])}: the file was altered; "
                "export it again"
            )
        check_token_ranges(actual, self.token_range_chunk, self.vocab_size, self.path)

    def _check_window_ids(self, windows: np.ndarray, what: str) -> None:
        """A cheap guard on every batch handed out: ids must fit the vocabulary."""
        if windows.size and int(windows.max()) >= self.vocab_size:
            raise TokenStoreError(
                f"{self.path}: {what} holds token id {int(windows.max())} >= vocab_size "
                f"{self.vocab_size}: the file was altered after it was written; export it again"
            )

    # -- training windows

    def random_windows(
        self, batch_index: int, batch_size: int, seq_len: int, seed: int
    ) -> np.ndarray:
        """(batch_size, seq_len + 1) int64 windows at random offsets, as llama2.c draws them.

        A pure function of (seed, batch_index, batch_size, seq_len): starts are drawn
        from np.random.default_rng([seed, batch_index]) in [0, n_tokens - seq_len - 1],
        ignoring document boundaries.
        """
        _check_int("batch_index", batch_index, 0)
        _check_int("batch_size", batch_size, 1)
        _check_int("seq_len", seq_len, 1)
        _check_int("seed", seed, 0)
        self._require_tokens(seq_len + 1, seq_len)
        rng = np.random.default_rng([seed, batch_index])
        starts = rng.integers(0, self.n_tokens - seq_len, size=batch_size)
        windows = self._window_view(seq_len + 1)[starts].astype(np.int64)
        self._check_window_ids(windows, f"training batch {batch_index}")
        return windows

    def _window_view(self, length: int) -> np.ndarray:
        """(n_tokens - length + 1, length) view of every window: one gather takes a batch."""
        view = self._window_views.get(length)
        if view is None:
            view = self._window_views[length] = sliding_window_view(self.tokens, length)
        return view

    # -- evaluation windows

    def sequential_windows(
        self, seq_len: int, *, batch_size: int, limit_tokens: int | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Non-overlapping windows over the first `limit_tokens` tokens, in order.

        Yields (windows, story_mask): windows (b, seq_len + 1) int64 with b <= batch_size,
        story_mask (b, seq_len) bool, True where the target (window position t + 1) is
        story text. Window k starts at k * seq_len, so consecutive windows share one
        token and the targets tile positions 1 .. covered - 1 exactly once (position 0 is
        never a target). The last window is padded with -1 after the covered range;
        use targets = windows[:, 1:] with ignore_index=-1 and inputs =
        windows[:, :-1].clip(min=0) (padded inputs only feed padded targets).
        """
        _check_int("seq_len", seq_len, 1)
        _check_int("batch_size", batch_size, 1)
        covered = self.n_tokens
        if limit_tokens is not None:
            _check_int("limit_tokens", limit_tokens, 2)
            covered = min(limit_tokens, self.n_tokens)
        self._require_tokens(2, seq_len)
        n_windows = -(-(covered - 1) // seq_len)
        return self._window_batches(seq_len, batch_size, covered, n_windows)

    def _window_batches(
        self, seq_len: int, batch_size: int, covered: int, n_windows: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for first in range(0, n_windows, batch_size):
            rows = min(batch_size, n_windows - first)
            yield self._window_batch(first, rows, seq_len, covered)

    def _window_batch(
        self, first: int, rows: int, seq_len: int, covered: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Windows first .. first + rows - 1 and their target story mask."""
        begin = first * seq_len
        end = min(begin + rows * seq_len + 1, covered)
        # A sentinel past the end of the slice gives the padding value in one gather.
        flat = np.append(self.tokens[begin:end].astype(np.int64), -1)
        mask_flat = np.append(self._story_mask_range(begin, end), False)
        positions = begin + np.arange(rows)[:, None] * seq_len + np.arange(seq_len + 1)
        local = np.where(positions < end, positions - begin, end - begin)  # (rows, seq_len + 1)
        windows = flat[local]
        self._check_window_ids(windows, f"evaluation windows from token {begin}")
        return windows, mask_flat[local[:, 1:]]

    # -- documents

    def story_mask(self) -> np.ndarray:
        """Bool (n_tokens,): True on the story-text tokens of every document."""
        return self._story_mask_range(0, self.n_tokens)

    def document(self, i: int) -> np.ndarray:
        """The tokens of document `i` (a copy; negative indices count from the end)."""
        i = self._doc_index(i)
        return np.array(self.tokens[self.doc_offsets[i] : self.doc_offsets[i + 1]])

    def story_tokens(self, i: int) -> np.ndarray:
        """The story-text tokens of document `i` (a copy)."""
        start, end = self.story_spans[self._doc_index(i)]
        return np.array(self.tokens[start:end])

    def _doc_index(self, i: int) -> int:
        if not _is_int(i):
            raise TypeError(f"document index must be an integer, got {type(i).__name__}")
        if not -self.n_docs <= i < self.n_docs:
            raise IndexError(f"{self.path}: document {i} out of range ({self.n_docs} documents)")
        return int(i) % self.n_docs

    def _story_mask_range(self, begin: int, end: int) -> np.ndarray:
        """Bool (end - begin,): True on story-text positions in [begin, end)."""
        starts, ends = self.story_spans[:, 0], self.story_spans[:, 1]
        # Spans are ordered and disjoint (each lies inside its document), so both
        # columns are sorted and the spans touching [begin, end) are one slice.
        lo = np.searchsorted(ends, begin, side="right")
        hi = np.searchsorted(starts, end, side="left")
        size = end - begin
        opens = np.clip(starts[lo:hi], begin, end) - begin
        closes = np.clip(ends[lo:hi], begin, end) - begin
        depth = np.bincount(opens, minlength=size + 1) - np.bincount(closes, minlength=size + 1)
        return np.cumsum(depth[:size]) > 0

    def _require_tokens(self, needed: int, seq_len: int) -> None:
        if self.n_tokens < needed:
            raise TokenStoreError(
                f"{self.path}: {self.n_tokens} tokens is too few for seq_len={seq_len} "
                f"(needs at least {needed})"
            )


def _check_int(name: str, value: Any, minimum: int) -> None:
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class _Header:
    """What the reader takes from the H5 file before mapping the tokens."""

    attrs: dict[str, Any]
    doc_offsets: np.ndarray
    story_spans: np.ndarray
    doc_bytes: np.ndarray
    token_offset: int | None
    token_dtype: np.dtype
    token_ranges: np.ndarray | None  # None for version-1 stores, which did not record them


def _read_store(path: Path) -> _Header:
    """Open `path`, validate it as a version-1 token store and load its small arrays."""
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise TokenStoreError(f"{path}: token store {what}")
    if not h5py.is_hdf5(path):
        raise TokenStoreError(f"{path}: not an HDF5 file, so not a token store")
    try:
        with h5py.File(path, "r") as f:
            return _read_open_store(f, path)
    except OSError as exc:
        raise TokenStoreError(
            f"{path}: cannot read HDF5 file (truncated or corrupt?): {exc}"
        ) from exc


def _read_open_store(f: h5py.File, path: Path) -> _Header:
    attrs = _decode_attrs(f, path)
    missing = [name for name in DATASETS if not isinstance(f.get(name), h5py.Dataset)]
    if missing:
        raise TokenStoreError(f"{path}: token store lacks datasets {missing}")
    tokens = f["tokens"]
    _check_token_dataset(tokens, attrs, path)
    offsets = _load_int64(f["doc_offsets"], (attrs["n_docs"] + 1,), path)
    spans = _load_int64(f["story_spans"], (attrs["n_docs"], 2), path)
    doc_bytes = _load_int64(f["doc_bytes"], (attrs["n_docs"],), path)
    _check_documents(offsets, spans, doc_bytes, attrs["n_tokens"], path)
    offset = tokens.id.get_offset()
    if offset is not None and offset + tokens.nbytes > path.stat().st_size:
        raise TokenStoreError(f"{path}: tokens extend past the end of the file (truncated?)")
    ranges = _read_token_ranges(f, attrs, path) if attrs["format_version"] >= 2 else None
    return _Header(attrs, offsets, spans, doc_bytes, offset, tokens.dtype, ranges)


def _read_token_ranges(f: h5py.File, attrs: dict[str, Any], path: Path) -> np.ndarray:
    """The recorded id range of each chunk, checked against vocab_size and the attributes."""
    chunk = attrs["token_range_chunk"]
    if not _is_int(chunk) or chunk < 1:
        raise TokenStoreError(f"{path}: token_range_chunk is not a positive integer: {chunk!r}")
    n_chunks = -(-attrs["n_tokens"] // chunk)
    if not isinstance(f.get("token_ranges"), h5py.Dataset):
        raise TokenStoreError(f"{path}: token store lacks datasets ['token_ranges']")
    ranges = _load_int64(f["token_ranges"], (n_chunks, 2), path)
    expected = (int(ranges[:, 0].min()), int(ranges[:, 1].max())) if n_chunks else (-1, -1)
    if (attrs["token_min"], attrs["token_max"]) != expected:
        raise TokenStoreError(
            f"{path}: token_min/token_max ({attrs['token_min']}, {attrs['token_max']}) do not "
            f"match the chunk ranges {expected}: the file was altered"
        )
    check_token_ranges(ranges, chunk, attrs["vocab_size"], path)
    return ranges


def check_token_ranges(ranges: np.ndarray, chunk: int, vocab_size: int, path: Path) -> None:
    """Raise naming the first chunk whose ids fall outside [0, vocab_size)."""
    bad = (ranges[:, 0] < 0) | (ranges[:, 1] >= vocab_size) | (ranges[:, 0] > ranges[:, 1])
    if bad.any():
        index = int(np.argmax(bad))
        low, high = (int(v) for v in ranges[index])
        raise TokenStoreError(
            f"{path}: tokens {index * chunk}..{(index + 1) * chunk - 1} hold ids from {low} to "
            f"{high}, outside [0, vocab_size={vocab_size}): the store does not belong to a "
            "tokenizer of this vocabulary (or is damaged); export it again"
        )


def token_ranges_of(tokens: np.ndarray, chunk: int) -> np.ndarray:
    """(n_chunks, 2) min and max id of each chunk of ``tokens``, read in chunks."""
    tracker = _RangeTracker(chunk)
    for start in range(0, tokens.size, _COPY_BLOCK):
        tracker.update(np.asarray(tokens[start : start + _COPY_BLOCK]))
    return tracker.finish()


def _decode_attrs(f: h5py.File, path: Path) -> dict[str, Any]:
    """The file's attributes as Python values, after checking format and version."""
    if "format" not in f.attrs:
        raise TokenStoreError(
            f"{path}: not a backstory token store (no 'format' attribute; holds {sorted(f)})"
        )
    fmt = _python_value(f.attrs["format"])
    if fmt != FORMAT:
        raise TokenStoreError(f"{path}: format is {fmt!r}, expected {FORMAT!r}")
    version = _python_value(f.attrs.get("format_version"))
    if version not in READABLE_VERSIONS:
        raise TokenStoreError(
            f"{path}: format_version {version!r} is not supported "
            f"(this backstory reads versions {', '.join(map(str, READABLE_VERSIONS))})"
        )
    json_keys = json.loads(f.attrs.get(_JSON_KEYS_ATTR, "[]"))
    attrs = {key: _python_value(f.attrs[key]) for key in f.attrs if key != _JSON_KEYS_ATTR}
    for key in json_keys:
        attrs[key] = json.loads(attrs[key])
    writer_attrs = WRITER_ATTRS if version >= 2 else WRITER_ATTRS[:5]
    missing = [key for key in (*REQUIRED_ATTRS, *writer_attrs) if key not in attrs]
    if missing:
        raise TokenStoreError(f"{path}: token store lacks attributes {missing}")
    for key in ("vocab_size", "bos_id", "eos_id", "n_docs", "n_tokens"):
        if not _is_int(attrs[key]):
            raise TokenStoreError(f"{path}: attribute {key!r} is not an integer: {attrs[key]!r}")
    if attrs["n_docs"] < 0 or attrs["n_tokens"] < 0 or attrs["vocab_size"] < 1:
        raise TokenStoreError(f"{path}: negative n_docs / n_tokens or empty vocabulary")
    return attrs


def _python_value(value: Any) -> Any:
    """h5py's numpy scalars as plain Python values."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value


def _check_token_dataset(tokens: h5py.Dataset, attrs: dict[str, Any], path: Path) -> None:
    expected = token_dtype(attrs["vocab_size"])
    if tokens.shape != (attrs["n_tokens"],):
        raise TokenStoreError(
            f"{path}: tokens has shape {tokens.shape}, expected ({attrs['n_tokens']},)"
        )
    if tokens.dtype.kind != "u" or tokens.dtype.itemsize != expected.itemsize:
        raise TokenStoreError(
            f"{path}: tokens dtype {tokens.dtype} does not match vocab_size "
            f"{attrs['vocab_size']} (expected {expected})"
        )
    if tokens.chunks is not None or tokens.compression is not None:
        raise TokenStoreError(f"{path}: tokens is chunked or compressed; it must be contiguous")
    if attrs["n_tokens"] and tokens.id.get_offset() is None:
        raise TokenStoreError(f"{path}: tokens has no data stored")


def _load_int64(dataset: h5py.Dataset, shape: tuple[int, ...], path: Path) -> np.ndarray:
    if dataset.shape != shape or dataset.dtype.kind not in "iu":
        raise TokenStoreError(
            f"{path}: {dataset.name.lstrip('/')} is {dataset.dtype} {dataset.shape}, "
            f"expected integers of shape {shape}"
        )
    array = dataset[()].astype(np.int64)
    array.setflags(write=False)  # shared by every reader of this store
    return array


def _check_documents(
    offsets: np.ndarray, spans: np.ndarray, doc_bytes: np.ndarray, n_tokens: int, path: Path
) -> None:
    """Offsets run 0 .. n_tokens without going back; spans lie inside their documents."""
    if offsets[0] != 0 or offsets[-1] != n_tokens:
        raise TokenStoreError(
            f"{path}: doc_offsets run {offsets[0]} .. {offsets[-1]}, expected 0 .. {n_tokens}"
        )
    if np.any(np.diff(offsets) < 0):
        raise TokenStoreError(f"{path}: doc_offsets decrease")
    bad = (spans[:, 0] < offsets[:-1]) | (spans[:, 0] > spans[:, 1]) | (spans[:, 1] > offsets[1:])
    if bad.any():
        raise TokenStoreError(
            f"{path}: story span of document {int(np.argmax(bad))} lies outside the document"
        )
    if np.any(doc_bytes < 0):
        raise TokenStoreError(f"{path}: doc_bytes holds negative counts")


def _map_tokens(path: Path, header: _Header) -> np.ndarray:
    """Memory-map the token dataset read-only (an empty store gets an empty array)."""
    n_tokens = header.attrs["n_tokens"]
    if n_tokens == 0 or header.token_offset is None:
        empty = np.empty(0, dtype=header.token_dtype)
        empty.setflags(write=False)
        return empty
    return np.memmap(
        path, dtype=header.token_dtype, mode="r", offset=header.token_offset, shape=(n_tokens,)
    )
