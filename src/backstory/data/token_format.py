"""The H5 token store's format: its constants, attributes and id ranges, and the checks
that a file is a token store (`read_header`).

Layout (format version 1): `tokens` (uint16 or uint32, 1-D, contiguous so that numpy can
memory-map it), `doc_offsets` (int64, n_docs + 1), `story_spans` (int64, n_docs x 2,
absolute [start, end) of the story-text tokens), `doc_bytes` (int64, n_docs), plus
lineage attributes (see `REQUIRED_ATTRS` and `token_writer.write_token_store`). Version 2
adds `token_ranges`. `token_writer` writes stores, `token_store.TokenStore` reads them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from backstory.core.errors import UserError

FORMAT = "backstory-tokens"
FORMAT_VERSION = 2  # 2: token_ranges (the id range of each chunk) recorded and checked
READABLE_VERSIONS = (1, 2)
REQUIRED_ATTRS = ("variant", "layout", "vocab_size", "bos_id", "eos_id", "tokenizer_sha256",
                  "corpus_fingerprint")
# Keys the writer owns; a caller passing one would silently contradict the file.
WRITER_ATTRS = ("format", "format_version", "n_docs", "n_tokens", "package_version",
                "token_range_chunk", "token_min", "token_max")
# Names the attributes whose values were JSON-encoded, so the reader can decode exactly those.
JSON_KEYS_ATTR = "json_attrs"
DATASETS = ("tokens", "doc_offsets", "story_spans", "doc_bytes")
# Ids are range-checked per chunk of this many tokens (8 bytes recorded per chunk).
TOKEN_RANGE_CHUNK = 1 << 20
# uint16 holds ids 0..65535, i.e. a vocabulary of up to 65536 entries.
UINT16_MAX_VOCAB = 65536
# Elements per block when copying or scanning tokens: 4 Mi elements is 8-32 MiB per
# block, which bounds memory whatever the corpus size.
COPY_BLOCK = 1 << 22
INT64 = np.dtype("<i8")


class TokenStoreError(UserError, ValueError):
    """A token store file is missing, foreign, corrupt, inconsistent or too small."""


def token_dtype(vocab_size: int) -> np.dtype:
    """The little-endian unsigned dtype that stores ids of a `vocab_size` vocabulary."""
    return np.dtype("<u2") if vocab_size <= UINT16_MAX_VOCAB else np.dtype("<u4")


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
    reserved = sorted(set(attrs) & {*WRITER_ATTRS, JSON_KEYS_ATTR})
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
    if not is_int(vocab_size) or not 1 <= vocab_size <= 2**32:
        raise ValueError(f"{path}: vocab_size must be an integer in [1, 2**32], got {vocab_size!r}")
    for key in ("bos_id", "eos_id"):
        # -1 is how sentencepiece reports a special id the tokenizer does not have.
        if not is_int(attrs[key]) or not -1 <= attrs[key] < vocab_size:
            raise ValueError(
                f"{path}: {key} must be an integer in [-1, vocab_size={vocab_size}), "
                f"got {attrs[key]!r}"
            )


def is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _encode_value(key: str, value: Any, path: Path) -> tuple[Any, bool]:
    """Map one attribute to an H5 scalar; dicts, lists and tuples become JSON text."""
    if isinstance(value, str | bool | np.bool_):
        return (bool(value) if not isinstance(value, str) else value), False
    if is_int(value):
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


class RangeTracker:
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
        return np.array(self.ranges, dtype=INT64).reshape(-1, 2)


@dataclass(frozen=True)
class Header:
    """What the reader takes from the H5 file before mapping the tokens."""

    attrs: dict[str, Any]
    doc_offsets: np.ndarray
    story_spans: np.ndarray
    doc_bytes: np.ndarray
    token_offset: int | None
    token_dtype: np.dtype
    token_ranges: np.ndarray | None  # None for version-1 stores, which did not record them


def read_header(path: Path) -> Header:
    """Open `path`, check that it is a token store of a readable version, and load its
    small arrays."""
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


def _read_open_store(f: h5py.File, path: Path) -> Header:
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
    return Header(attrs, offsets, spans, doc_bytes, offset, tokens.dtype, ranges)


def _read_token_ranges(f: h5py.File, attrs: dict[str, Any], path: Path) -> np.ndarray:
    """The recorded id range of each chunk, checked against vocab_size and the attributes."""
    chunk = attrs["token_range_chunk"]
    if not is_int(chunk) or chunk < 1:
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
    tracker = RangeTracker(chunk)
    for start in range(0, tokens.size, COPY_BLOCK):
        tracker.update(np.asarray(tokens[start : start + COPY_BLOCK]))
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
    json_keys = json.loads(f.attrs.get(JSON_KEYS_ATTR, "[]"))
    attrs = {key: _python_value(f.attrs[key]) for key in f.attrs if key != JSON_KEYS_ATTR}
    for key in json_keys:
        attrs[key] = json.loads(attrs[key])
    writer_attrs = WRITER_ATTRS if version >= 2 else WRITER_ATTRS[:5]
    missing = [key for key in (*REQUIRED_ATTRS, *writer_attrs) if key not in attrs]
    if missing:
        raise TokenStoreError(f"{path}: token store lacks attributes {missing}")
    for key in ("vocab_size", "bos_id", "eos_id", "n_docs", "n_tokens"):
        if not is_int(attrs[key]):
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

