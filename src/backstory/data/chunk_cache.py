"""A cache {space-separated chunk: token ids} that makes sentencepiece BPE encoding fast.

For the models ``train_tokenizer`` makes, the ids of
a text whose words are separated by single spaces are the ids of its space-separated chunks,
each encoded on its own, back to back. Sentencepiece writes every space as "▁" and adds one
"▁" in front, so each chunk starts with "▁" whether it is first (dummy prefix) or follows a
space. BPE merges only into vocabulary pieces, and in these models "▁" appears in a piece
only as its first character or in a piece made of "▁" alone (``chunkable`` checks both
from the model itself), so no merge crosses the "▁" that starts a chunk, and merges inside
one chunk never depend on another: encoding the chunks alone gives the same pieces. Hence a
per-``Tokenizer`` cache {chunk: ids} (``ChunkCache``) encodes a chunk once; later it is a
lookup, done for a whole batch at once in numpy on the UTF-8 bytes (no Python object per
chunk). Texts the argument does not cover (empty, a leading or trailing space, two spaces in
a row, a literal "▁") take the plain sentencepiece path; tabs, newlines, digits,
byte-fallback and unknown characters stay inside a chunk and need no special case (the tests
compare both paths on storyworld stories and on generated Unicode text).
"""

from __future__ import annotations

import itertools
import logging
import sys

import numpy as np
import sentencepiece as spm

from backstory.data import protobuf

log = logging.getLogger(__name__)

SPACE_MARK = "\u2581"  # sentencepiece's "▁"

# About 120 bytes per entry (key, length, id position, ~1.5 ids, 4-8 table slots, spare
# array capacity; measured): 1M entries, ~120 MB, hold the common chunks of a corpus.
DEFAULT_CACHE_ENTRIES = 1_000_000

# Texts per cache round: bounds the temporary arrays (~1 MB of text per round).
CACHE_ROUND_TEXTS = 1024

# Field numbers and enum values of sentencepiece_model.proto (ModelProto, TrainerSpec,
# NormalizerSpec); read with a small wire-format reader because protobuf is not installed.
_MODEL_TRAINER_SPEC, _MODEL_NORMALIZER_SPEC = 2, 3
_TRAINER_MODEL_TYPE, _TRAINER_SPLIT_BY_WHITESPACE, _TRAINER_WHITESPACE_AS_SUFFIX = 3, 22, 24
_NORM_NAME, _NORM_CHARSMAP, _NORM_DUMMY_PREFIX = 1, 2, 3
_NORM_REMOVE_EXTRA_WHITESPACES, _NORM_ESCAPE_WHITESPACES, _NORM_RULE_TSV = 4, 5, 6
_MODEL_TYPE_BPE = 2


def _proto_fields(data: bytes) -> dict[int, int | bytes]:
    """Varint and length-delimited top-level fields of one message (the last one wins)."""
    return {number: value for number, wire, value in protobuf.fields(data) if wire in (0, 2)}


def _specs_allow_chunking(model_bytes: bytes) -> bool:
    """The model is BPE with the whitespace and normalisation options train_tokenizer sets."""
    try:
        model = _proto_fields(model_bytes)
        trainer = _proto_fields(bytes(model.get(_MODEL_TRAINER_SPEC, b"")))
        norm = _proto_fields(bytes(model.get(_MODEL_NORMALIZER_SPEC, b"")))
    except (ValueError, TypeError):
        return False
    # proto2 defaults apply to absent fields: model_type UNIGRAM, split_by_whitespace true,
    # add_dummy_prefix, remove_extra_whitespaces and escape_whitespaces true.
    return (
        trainer.get(_TRAINER_MODEL_TYPE, 1) == _MODEL_TYPE_BPE
        and trainer.get(_TRAINER_SPLIT_BY_WHITESPACE, 1) == 1
        and trainer.get(_TRAINER_WHITESPACE_AS_SUFFIX, 0) == 0
        and norm.get(_NORM_NAME) == b"identity"
        and not norm.get(_NORM_CHARSMAP)
        and not norm.get(_NORM_RULE_TSV)
        and norm.get(_NORM_DUMMY_PREFIX, 1) == 1
        and norm.get(_NORM_REMOVE_EXTRA_WHITESPACES, 1) == 0
        and norm.get(_NORM_ESCAPE_WHITESPACES, 1) == 1
    )


def _pieces_allow_chunking(processor: spm.SentencePieceProcessor) -> bool:
    """No piece BPE can merge into holds "▁" after its first character (bar "▁"-only ones)."""
    for piece_id in range(processor.vocab_size()):
        if processor.is_control(piece_id) or processor.is_unknown(piece_id):
            continue
        if processor.is_byte(piece_id):
            continue
        piece = processor.id_to_piece(piece_id)
        if SPACE_MARK in piece[1:] and piece.strip(SPACE_MARK):
            return False
    return True


def chunkable(model_bytes: bytes, processor: spm.SentencePieceProcessor) -> bool:
    """Whether encoding single-spaced text chunk by chunk equals sentencepiece (see above)."""
    return _specs_allow_chunking(model_bytes) and _pieces_allow_chunking(processor)


def _utf8_encodable(text: str) -> bool:
    """False for a str with a lone surrogate (sentencepiece cannot take it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def raise_for_bad_text(texts: list[str], exc: Exception) -> None:
    """After sentencepiece refused a batch: a ValueError naming the first bad text."""
    for index, text in enumerate(texts):
        if not isinstance(text, str | bytes):
            raise ValueError(f"text {index} is {type(text).__name__}, not str") from exc
        if isinstance(text, str) and not _utf8_encodable(text):
            raise ValueError(f"text {index} is not valid Unicode: {text!r:.60}") from exc


def single_spaced(text: object) -> bool:
    """A non-empty str whose spaces each sit between two non-space characters, without "▁"."""
    return (
        type(text) is str
        and text != ""
        and text[0] != " "
        and text[-1] != " "
        and "  " not in text
        and SPACE_MARK not in text
        and (text.isascii() or _utf8_encodable(text))
    )


def _with_capacity(array: np.ndarray, needed: int) -> np.ndarray:
    """``array`` or a copy at least ``needed`` long (doubling, so appends stay amortised O(1))."""
    if needed <= array.size:
        return array
    grown = np.zeros(max(needed, 2 * array.size, 1024), dtype=array.dtype)
    grown[: array.size] = array
    return grown


# Chunks of up to this many UTF-8 bytes (all but ~0.1% of TinyStories chunks) are found
# by numpy through their bytes; longer ones through a dict.
_SHORT_CHUNK_BYTES = 15
# Table slots per cached chunk, at least: cuckoo placement then almost never fails.
_TABLE_LOAD = 4
_MIN_TABLE_SLOTS = 1 << 12
_MAX_KICKS = 64  # cuckoo evictions before a chunk goes to the dict instead
# _BYTE_MASKS[n] keeps the low n bytes of a uint64 (n = 0 .. 8).
_BYTE_MASKS = np.array([(1 << (8 * n)) - 1 for n in range(9)], dtype=np.uint64)


def _chunk_bounds(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Start and length in bytes of each space-separated chunk of UTF-8 ``data``."""
    # 0x20 never occurs inside a multi-byte UTF-8 sequence, so bytes split like chars.
    spaces = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 32)
    starts = np.empty(spaces.size + 1, dtype=np.int64)
    starts[0] = 0
    starts[1:] = spaces + 1
    n_bytes = np.empty_like(starts)
    n_bytes[:-1] = spaces - starts[:-1]
    n_bytes[-1] = len(data) - starts[-1]
    return starts, n_bytes


def _chunk_keys(
    data: bytes, starts: np.ndarray, n_bytes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each chunk's key: two little-endian uint64, bytes 0-7 and bytes 8-14 (zero past the
    chunk's end) with the byte length (capped at 255) in the top byte of the second.

    Equal keys mean equal chunks for chunks of up to 15 bytes; longer chunks get a length
    byte above 15, so their (cut) keys never equal a short chunk's.
    """
    padded = data + bytes(16)
    # Item i of this view is the 16 bytes from offset i: one 16-byte copy per chunk.
    windows = np.ndarray((len(data),), dtype="V16", buffer=padded, strides=(1,))[starts]
    words = windows.view("<u8").reshape(-1, 2)  # (n_chunks, 2)
    low = np.minimum(n_bytes, 8)
    high = np.minimum(n_bytes, _SHORT_CHUNK_BYTES) - low
    length = np.minimum(n_bytes, 255).astype(np.uint64) << np.uint64(56)
    return words[:, 0] & _BYTE_MASKS[low], (words[:, 1] & _BYTE_MASKS[high]) | length


# splitmix64-style mixing: every key bit reaches every bit of the slot hash.
_MIX_KEY1, _MIX_KEY2 = 0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F
_MIX_A, _MIX_B = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_U64 = (1 << 64) - 1


def _slots(key1: np.ndarray, key2: np.ndarray, table_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The two table slots of each key: top and bottom bits of a mixed 64-bit hash."""
    h = key1 * np.uint64(_MIX_KEY1) ^ key2 * np.uint64(_MIX_KEY2)  # wraps modulo 2**64
    h ^= h >> np.uint64(30)
    h *= np.uint64(_MIX_A)
    h ^= h >> np.uint64(27)
    h *= np.uint64(_MIX_B)
    h ^= h >> np.uint64(31)
    bits = table_size.bit_length() - 1
    first = h >> np.uint64(64 - bits)
    second = h & np.uint64(table_size - 1)
    return first.astype(np.int64), second.astype(np.int64)


def _slot_pair(key1: int, key2: int, table_size: int) -> tuple[int, int]:
    """``_slots`` of one key in Python ints (numpy scalars cost ~1 us per operation)."""
    h = (key1 * _MIX_KEY1 & _U64) ^ (key2 * _MIX_KEY2 & _U64)
    h ^= h >> 30
    h = h * _MIX_A & _U64
    h ^= h >> 27
    h = h * _MIX_B & _U64
    h ^= h >> 31
    return h >> (64 - (table_size.bit_length() - 1)), h & (table_size - 1)


def _last_chunks(texts: list[str], starts: np.ndarray) -> np.ndarray:
    """Index of the last chunk of each text, for texts joined by one space."""
    sizes = np.fromiter(
        (len(t) if t.isascii() else len(t.encode("utf-8")) for t in texts),
        dtype=np.int64,
        count=len(texts),
    )
    next_text = np.cumsum(sizes + 1)  # byte offset where the next text starts
    return np.searchsorted(starts, next_text) - 1


class ChunkCache:
    """Token ids of space-free chunks, looked up by their UTF-8 bytes with numpy.

    Each cached chunk is a row: its key (``_chunk_keys``: the bytes and length of a chunk
    of up to 15 bytes, exactly) and where its ids lie in one int32 array. A cuckoo table
    maps a short chunk's key to its row (two candidate slots, each hit checked against the
    whole key); longer chunks, and short ones the table could not place, are looked up by
    str in a dict. Row 0 is a sentinel that no chunk matches: empty table slots hold 0.

    Bounded: once it holds ``max_entries`` chunks it stops adding; chunks first seen after
    that are encoded for the round that needs them and forgotten, so the earliest (for
    Zipf-distributed words, the most frequent) chunks stay. Not thread-safe by itself.
    """

    def __init__(self, processor: spm.SentencePieceProcessor, max_entries: int) -> None:
        self._sp = processor
        self.max_entries = max_entries
        self.clear()

    def __len__(self) -> int:
        return self._n_kept - 1

    @property
    def nbytes(self) -> int:
        """Memory held: the arrays (with their spare capacity), the table and the dict."""
        arrays = (self._key1, self._key2, self._n_bytes, self._id_start, self._id_count)
        in_dict = sum(sys.getsizeof(chunk) + 28 for chunk in self._by_text)  # str + int
        held = (self._ids, self._table, *arrays)
        return sum(a.nbytes for a in held) + sys.getsizeof(self._by_text) + in_dict

    def clear(self) -> None:
        # row -> the chunk's key (_chunk_keys); row 0, all zero, matches no chunk.
        self._key1 = np.zeros(1, dtype=np.uint64)
        self._key2 = np.zeros(1, dtype=np.uint64)
        self._n_bytes = np.zeros(1, dtype=np.int64)  # row -> UTF-8 length
        self._id_start = np.zeros(1, dtype=np.int64)  # row -> first index in _ids
        self._id_count = np.zeros(1, dtype=np.int64)  # row -> number of ids
        self._ids = np.zeros(0, dtype=np.int32)  # every row's ids, back to back
        self._n_rows = self._n_kept = 1  # rows in use / rows that outlive this round
        self._n_ids = self._n_ids_kept = 0
        self._table = np.zeros(_MIN_TABLE_SLOTS, dtype=np.int32)  # slot -> row (0: empty)
        self._by_text: dict[str, int] = {}  # long or unplaced chunk -> row

    def encode(self, texts: list[str], num_threads: int) -> list[np.ndarray] | None:
        """Ids of ``texts`` (int32 views of one array); None unless all are single-spaced."""
        try:
            data = " ".join(texts).encode("utf-8")
        except (TypeError, UnicodeEncodeError):  # not str, or a lone surrogate
            return None
        if not data or SPACE_MARK.encode("utf-8") in data:
            return None
        starts, n_bytes = _chunk_bounds(data)
        # An empty text, or a leading, trailing or double space, makes an empty chunk.
        if n_bytes.min() == 0:
            return None
        try:
            ids, ends = self._ids_of_chunks(data, starts, n_bytes, num_threads)
        finally:
            self._forget_unkept_rows()
        text_ends = ends[_last_chunks(texts, starts)].tolist()
        return [ids[a:b] for a, b in itertools.pairwise([0, *text_ends])]

    def _ids_of_chunks(
        self, data: bytes, starts: np.ndarray, n_bytes: np.ndarray, num_threads: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """All chunks' ids back to back, and where each chunk's ids end."""
        key1, key2 = _chunk_keys(data, starts, n_bytes)
        rows = self._find(key1, key2)  # (n_chunks,), -1: not in the table
        missing = np.flatnonzero(rows < 0)
        if missing.size:
            rows[missing] = self._resolve(data, starts[missing], n_bytes[missing], num_threads)
        counts = self._id_count[rows]  # (n_chunks,)
        ends = np.cumsum(counts)  # (n_chunks,) end of each chunk's ids in the output
        # Output position p of chunk k reads _ids[start_k + p - (ends_k - counts_k)].
        offsets = np.repeat(self._id_start[rows] - (ends - counts), counts)  # (n_ids,)
        return self._ids[offsets + np.arange(offsets.size)], ends

    def _find(self, key1: np.ndarray, key2: np.ndarray) -> np.ndarray:
        """Row of each chunk the table holds, -1 for the others."""
        first, second = _slots(key1, key2, self._table.size)
        rows = self._table[first].astype(np.int64)
        found = self._matches(rows, key1, key2)
        rows = np.where(found, rows, self._table[second])
        found |= self._matches(rows, key1, key2)
        rows[~found] = -1
        return rows

    def _matches(self, rows: np.ndarray, key1: np.ndarray, key2: np.ndarray) -> np.ndarray:
        return (self._key1[rows] == key1) & (self._key2[rows] == key2)

    def _resolve(
        self, data: bytes, starts: np.ndarray, n_bytes: np.ndarray, num_threads: int
    ) -> np.ndarray:
        """Rows of chunks the table lacks: from the dict, else encoded and added."""
        chunks = [
            data[start : start + size].decode("utf-8")
            for start, size in zip(starts.tolist(), n_bytes.tolist(), strict=True)
        ]
        rows = {chunk: self._by_text.get(chunk, 0) for chunk in chunks}  # 0: not cached
        new = [chunk for chunk, row in rows.items() if row == 0]
        if new:
            rows.update(zip(new, self._add(new, num_threads), strict=True))
        return np.fromiter(map(rows.__getitem__, chunks), dtype=np.int64, count=len(chunks))

    def _add(self, chunks: list[str], num_threads: int) -> range:
        """Encode ``chunks`` with sentencepiece into new rows; keep the ones that fit."""
        # Lists, not arrays: sentencepiece spends ~5 us making each small numpy array.
        new = self._append(chunks, self._sp.encode(chunks, out_type=int, num_threads=num_threads))
        kept = min(len(chunks), self.max_entries - len(self))
        if kept > 0:
            self._keep(new.start, new.start + kept, chunks[:kept])
        return new

    def _append(self, chunks: list[str], encoded: list[list[int]]) -> range:
        """Rows for ``chunks`` and their ids; found only once ``_keep`` indexes them."""
        # The chunks joined by spaces go through the texts' key maker, so the keys agree.
        data = " ".join(chunks).encode("utf-8")
        starts, n_bytes = _chunk_bounds(data)
        counts = np.fromiter(map(len, encoded), dtype=np.int64, count=len(chunks))
        new = range(self._n_rows, self._n_rows + len(chunks))
        end_ids = self._n_ids + int(counts.sum())
        self._reserve(new.stop, end_ids)
        rows = slice(new.start, new.stop)
        self._key1[rows], self._key2[rows] = _chunk_keys(data, starts, n_bytes)
        self._n_bytes[rows] = n_bytes
        self._id_start[rows] = self._n_ids + np.cumsum(counts) - counts
        self._id_count[rows] = counts
        flat = itertools.chain.from_iterable(encoded)
        self._ids[self._n_ids : end_ids] = np.fromiter(flat, np.int32, end_ids - self._n_ids)
        self._n_rows, self._n_ids = new.stop, end_ids
        return new

    def _keep(self, first: int, stop: int, chunks: list[str]) -> None:
        """Index rows ``first`` .. ``stop`` - 1 (of ``chunks``) so later rounds find them."""
        self._n_kept = stop
        self._n_ids_kept = int(self._id_start[stop]) if stop < self._n_rows else self._n_ids
        rows = np.arange(first, stop)
        short = self._n_bytes[rows] <= _SHORT_CHUNK_BYTES
        for row, chunk, is_short in zip(rows.tolist(), chunks, short.tolist(), strict=True):
            if not is_short:
                self._by_text[chunk] = row
        if self._table.size < _TABLE_LOAD * len(self):
            self._rebuild_table()
        else:
            self._place(rows[short])

    def _rebuild_table(self) -> None:
        """A table of at least _TABLE_LOAD slots per kept row, every short row placed again."""
        size = _MIN_TABLE_SLOTS
        while size < _TABLE_LOAD * len(self):
            size *= 2
        self._table = np.zeros(size, dtype=np.int32)
        self._by_text = {
            chunk: row
            for chunk, row in self._by_text.items()
            if self._n_bytes[row] > _SHORT_CHUNK_BYTES
        }
        rows = np.arange(1, self._n_kept)
        self._place(rows[self._n_bytes[rows] <= _SHORT_CHUNK_BYTES])

    def _place(self, rows: np.ndarray) -> None:
        """Put short rows in the table: free first slots at once, then cuckoo one by one."""
        first = _slots(self._key1[rows], self._key2[rows], self._table.size)[0]
        free = self._table[first] == 0
        # Two rows after one free slot: one write wins; the read-back says which.
        self._table[first[free]] = rows[free]
        placed = np.zeros(rows.size, dtype=bool)
        placed[free] = self._table[first[free]] == rows[free]
        for row in rows[~placed].tolist():
            self._cuckoo(row)

    def _cuckoo(self, row: int) -> None:
        """Place ``row``, moving occupants to their other slot; the dict takes the last one."""
        slot = self._row_slots(row)[1]  # its first slot is taken
        for _ in range(_MAX_KICKS):
            row, self._table[slot] = int(self._table[slot]), row
            if row == 0:
                return
            first, second = self._row_slots(row)
            slot = second if slot == first else first
        self._by_text[self._row_text(row)] = row

    def _row_slots(self, row: int) -> tuple[int, int]:
        return _slot_pair(int(self._key1[row]), int(self._key2[row]), self._table.size)

    def _row_text(self, row: int) -> str:
        """The chunk of a short row, rebuilt from its key."""
        key = int(self._key1[row]) | int(self._key2[row]) << 64
        return key.to_bytes(16, "little")[: int(self._n_bytes[row])].decode("utf-8")

    def _reserve(self, n_rows: int, n_ids: int) -> None:
        for name in ("_key1", "_key2", "_n_bytes", "_id_start", "_id_count"):
            setattr(self, name, _with_capacity(getattr(self, name), n_rows))
        self._ids = _with_capacity(self._ids, n_ids)

    def _forget_unkept_rows(self) -> None:
        """Drop the rows of this round that did not fit (never indexed: only the counts)."""
        self._n_rows, self._n_ids = self._n_kept, self._n_ids_kept
