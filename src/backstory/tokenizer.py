"""sentencepiece vocabulary training (in memory) and the ``Tokenizer`` wrapper.

Training uses llama2.c's custom-vocabulary options (character coverage 1.0, split digits,
whitespace-only pieces, byte fallback, identity normalisation, unk=0 bos=1 eos=2, no pad)
with one change: ``remove_extra_whitespaces`` is off, so encoding is lossless.

Round trip: sentencepiece writes spaces as "▁" and adds one "▁" before the text (the dummy
prefix); ``decode`` removes that one prefix again. With identity normalisation, no
whitespace collapsing and byte fallback, ``decode(encode_one(s)) == s`` for every text
that does not itself contain "▁" (U+2581), which decodes as a space. Leading, trailing and
repeated spaces and newlines survive; unseen characters go through byte pieces.

Fast path (``Tokenizer.encode_arrays``): for the models ``train_tokenizer`` makes, the ids of
a text whose words are separated by single spaces are the ids of its space-separated chunks,
each encoded on its own, back to back. Sentencepiece writes every space as "▁" and adds one
"▁" in front, so each chunk starts with "▁" whether it is first (dummy prefix) or follows a
space. BPE merges only into vocabulary pieces, and in these models "▁" appears in a piece
only as its first character or in a piece made of "▁" alone (``_chunkable`` checks both
from the model itself), so no merge crosses the "▁" that starts a chunk, and merges inside
one chunk never depend on another: encoding the chunks alone gives the same pieces. Hence a
per-``Tokenizer`` cache {chunk: ids} turns encoding into one dict lookup per chunk. Texts the
argument does not cover (empty, a leading or trailing space, two spaces in a row, a literal
"▁") take the plain sentencepiece path; tabs, newlines, digits, byte-fallback and unknown
characters stay inside a chunk and need no special case (the tests compare both paths).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import sentencepiece as spm

log = logging.getLogger(__name__)

MODEL_TYPES = ("bpe", "unigram", "word", "char")
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2

# sentencepiece's own default is 4192 bytes, below the longest TinyStories stories.
DEFAULT_MAX_SENTENCE_BYTES = 65_536


class _TrainingTexts:
    """Feeds the first ``limit`` non-empty texts to sentencepiece and counts what it left out."""

    def __init__(self, texts: Iterable[str], limit: int, max_bytes: int) -> None:
        self._texts = iter(texts)
        self._limit = limit
        self._max_bytes = max_bytes
        self.used = self.empty = self.too_long = 0
        self.more_available = False
        # sentencepiece turns exceptions raised in here into RuntimeError; keep the original.
        self.error: Exception | None = None

    def __iter__(self) -> Iterator[str]:
        for index, text in enumerate(itertools.islice(self._texts, self._limit)):
            if not isinstance(text, str):
                self.error = ValueError(f"training text {index} is {type(text).__name__}, not str")
                raise self.error
            if not text.strip():
                self.empty += 1
            elif len(text.encode("utf-8")) > self._max_bytes:
                self.too_long += 1
            else:
                self.used += 1
                yield text
        self.more_available = next(self._texts, None) is not None


def _trainer_options(
    model_type: str, vocab_size: int, max_sentence_bytes: int, num_threads: int
) -> dict[str, object]:
    return {
        "model_type": model_type,
        "vocab_size": vocab_size,
        "character_coverage": 1.0,
        "split_digits": True,
        "allow_whitespace_only_pieces": True,
        "byte_fallback": True,  # sentencepiece 0.2 accepts it for all four model types
        "normalization_rule_name": "identity",
        "remove_extra_whitespaces": False,  # keep every space: encoding stays lossless
        "unk_id": UNK_ID,
        "bos_id": BOS_ID,
        "eos_id": EOS_ID,
        "pad_id": -1,
        # Every sentence we pass is used, in order: no sampling, no shuffling.
        "input_sentence_size": 0,
        "shuffle_input_sentence": False,
        "max_sentence_length": max_sentence_bytes,
        "num_threads": num_threads,
        "minloglevel": 2,  # sentencepiece logs to stderr; we log the summary ourselves
    }


def _check_train_args(
    vocab_size: int, model_type: str, max_sentences: int, max_sentence_bytes: int, num_threads: int
) -> None:
    if model_type not in MODEL_TYPES:
        raise ValueError(f"tokenizer.model_type must be one of {MODEL_TYPES}, got {model_type!r}")
    if not isinstance(vocab_size, int) or vocab_size < 4:
        raise ValueError(f"tokenizer.vocab_size must be an int >= 4, got {vocab_size!r}")
    if max_sentences < 1:
        raise ValueError(f"tokenizer.max_sentences must be >= 1, got {max_sentences}")
    if max_sentence_bytes < 1:
        raise ValueError(f"tokenizer.max_sentence_bytes must be >= 1, got {max_sentence_bytes}")
    if num_threads < 1:
        raise ValueError(f"tokenizer.num_threads must be >= 1, got {num_threads}")


def train_tokenizer(
    texts: Iterable[str],
    *,
    vocab_size: int,
    model_type: str = "bpe",
    max_sentences: int = 200_000,
    max_sentence_bytes: int = DEFAULT_MAX_SENTENCE_BYTES,
    num_threads: int = 1,
) -> bytes:
    """Train a sentencepiece model on the first ``max_sentences`` texts; the model bytes.

    Each text is one sentence (newlines stay inside it). Texts longer than
    ``max_sentence_bytes`` UTF-8 bytes and blank texts are left out, counted and logged.
    Deterministic: same texts and arguments give the same bytes. ``num_threads`` is
    recorded in the model and, for unigram, changes the pieces, so keep it fixed.
    """
    _check_train_args(vocab_size, model_type, max_sentences, max_sentence_bytes, num_threads)
    feed = _TrainingTexts(texts, max_sentences, max_sentence_bytes)
    buffer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(feed),
            model_writer=buffer,
            **_trainer_options(model_type, vocab_size, max_sentence_bytes, num_threads),
        )
    except RuntimeError as exc:
        if feed.error is not None:
            raise feed.error from exc
        if feed.used == 0:
            raise ValueError(
                f"no usable training text for the tokenizer ({feed.empty} blank, "
                f"{feed.too_long} over tokenizer.max_sentence_bytes={max_sentence_bytes})"
            ) from exc
        if "ocabulary size" in str(exc):
            raise ValueError(
                f"tokenizer.vocab_size={vocab_size} does not fit this {model_type} model: {exc}"
            ) from exc
        raise
    _log_training(feed, max_sentences, max_sentence_bytes)
    return buffer.getvalue()


def _log_training(feed: _TrainingTexts, max_sentences: int, max_sentence_bytes: int) -> None:
    log.info("trained tokenizer on %d texts", feed.used)
    if feed.more_available:
        log.info("used only the first %d texts (tokenizer.max_sentences)", max_sentences)
    if feed.empty:
        log.warning("left out %d blank texts from tokenizer training", feed.empty)
    if feed.too_long:
        log.warning(
            "left out %d texts longer than tokenizer.max_sentence_bytes=%d from training",
            feed.too_long,
            max_sentence_bytes,
        )


def _resolve_threads(num_threads: int) -> int:
    """0 or less means every core this process may use."""
    if num_threads > 0:
        return num_threads
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# --- chunk cache ------------------------------------------------------------------------

SPACE_MARK = "\u2581"  # sentencepiece's "▁"

# About 80 bytes per entry (key, length, id position, ~1.5 ids, 4-8 table slots): 1M
# entries is ~80 MB, above the distinct chunks of a few million stories.
DEFAULT_CACHE_ENTRIES = 1_000_000

# Texts per cache round: bounds the temporary arrays (~1 MB of text per round).
_CACHE_ROUND_TEXTS = 1024

# Field numbers and enum values of sentencepiece_model.proto (ModelProto, TrainerSpec,
# NormalizerSpec); read with a small wire-format reader because protobuf is not installed.
_MODEL_TRAINER_SPEC, _MODEL_NORMALIZER_SPEC = 2, 3
_TRAINER_MODEL_TYPE, _TRAINER_SPLIT_BY_WHITESPACE, _TRAINER_WHITESPACE_AS_SUFFIX = 3, 22, 24
_NORM_NAME, _NORM_CHARSMAP, _NORM_DUMMY_PREFIX = 1, 2, 3
_NORM_REMOVE_EXTRA_WHITESPACES, _NORM_ESCAPE_WHITESPACES, _NORM_RULE_TSV = 4, 5, 6
_MODEL_TYPE_BPE = 2


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def _proto_fields(data: bytes) -> dict[int, int | bytes]:
    """Top-level fields of one protobuf message (the last occurrence of a field wins)."""
    fields: dict[int, int | bytes] = {}
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            fields[number], pos = _read_varint(data, pos)
        elif wire_type in (1, 5):  # fixed64 / fixed32: skipped, none we read
            pos += 8 if wire_type == 1 else 4
        elif wire_type == 2:
            size, pos = _read_varint(data, pos)
            fields[number] = data[pos : pos + size]
            pos += size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")
    return fields


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


def _chunkable(model_bytes: bytes, processor: spm.SentencePieceProcessor) -> bool:
    """Whether encoding single-spaced text chunk by chunk equals sentencepiece (see above)."""
    return _specs_allow_chunking(model_bytes) and _pieces_allow_chunking(processor)


def _utf8_encodable(text: str) -> bool:
    """False for a str with a lone surrogate (sentencepiece cannot take it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _raise_for_bad_text(texts: list[str], exc: Exception) -> None:
    """After sentencepiece refused a batch: a ValueError naming the first bad text."""
    for index, text in enumerate(texts):
        if not isinstance(text, str | bytes):
            raise ValueError(f"text {index} is {type(text).__name__}, not str") from exc
        if isinstance(text, str) and not _utf8_encodable(text):
            raise ValueError(f"text {index} is not valid Unicode: {text!r:.60}") from exc


def _single_spaced(text: object) -> bool:
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


def _raw_keys(raw: list[bytes]) -> tuple[list[int], list[int]]:
    """``_chunk_keys`` of whole chunks given as bytes."""
    key1 = [int.from_bytes(b[:8], "little") for b in raw]
    key2 = [int.from_bytes(b[8:15], "little") | (min(len(b), 255) << 56) for b in raw]
    return key1, key2


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


class _ChunkCache:
    """Token ids of space-free chunks, looked up by their UTF-8 bytes with numpy.

    Each cached chunk is a row: its key (the bytes of a chunk of up to 16 bytes, packed
    into two uint64, zero past the end; with the byte length, exact) and where its ids lie
    in one int32 array. A cuckoo table maps a short chunk's key to its row (two candidate
    slots, each hit checked against the whole key); longer chunks, and short ones the
    table could not place, are looked up by str in a dict. Row 0 is a sentinel that no
    chunk matches: empty table slots hold 0.

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
        try:
            ids, ends = self._ids_of_chunks(data, starts, n_bytes, num_threads)
        finally:
            self._forget_unkept_rows()
        text_ends = ends[_last_chunks(texts, starts)].tolist()
        return [ids[a:b] for a, b in zip([0, *text_ends], text_ends, strict=False)]

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
        encoded = self._sp.encode(chunks, out_type="numpy", num_threads=num_threads)
        raw = [chunk.encode("utf-8") for chunk in chunks]
        counts = np.fromiter(map(len, encoded), dtype=np.int64, count=len(chunks))
        new = range(self._n_rows, self._n_rows + len(chunks))
        end_ids = self._n_ids + int(counts.sum())
        self._reserve(new.stop, end_ids)
        self._key1[new.start : new.stop], self._key2[new.start : new.stop] = _raw_keys(raw)
        self._n_bytes[new.start : new.stop] = [len(b) for b in raw]
        self._id_start[new.start : new.stop] = self._n_ids + np.cumsum(counts) - counts
        self._id_count[new.start : new.stop] = counts
        self._ids[self._n_ids : end_ids] = np.concatenate(encoded)
        self._n_rows, self._n_ids = new.stop, end_ids
        kept = min(len(chunks), self.max_entries - len(self))
        if kept > 0:
            self._keep(new.start, new.start + kept, chunks[:kept])
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
        raw = int(self._key1[row]).to_bytes(8, "little") + int(self._key2[row]).to_bytes(
            8, "little"
        )
        return raw[: int(self._n_bytes[row])].decode("utf-8")

    def _reserve(self, n_rows: int, n_ids: int) -> None:
        for name in ("_key1", "_key2", "_n_bytes", "_id_start", "_id_count"):
            setattr(self, name, _with_capacity(getattr(self, name), n_rows))
        self._ids = _with_capacity(self._ids, n_ids)

    def _forget_unkept_rows(self) -> None:
        """Drop the rows of this round that did not fit (never indexed: only the counts)."""
        self._n_rows, self._n_ids = self._n_kept, self._n_ids_kept


class Tokenizer:
    """A loaded sentencepiece model with batch encoding and its identity (sha256).

    ``cache_entries`` bounds the chunk cache of ``encode_arrays`` (about 80 bytes per
    entry; 0 turns it off). The cache changes only the speed, never the ids.
    """

    def __init__(
        self,
        model_bytes: bytes,
        *,
        source: str = "<bytes>",
        cache_entries: int = DEFAULT_CACHE_ENTRIES,
    ) -> None:
        if not isinstance(cache_entries, int) or cache_entries < 0:
            raise ValueError(f"cache_entries must be an int >= 0, got {cache_entries!r}")
        processor = spm.SentencePieceProcessor()
        try:
            processor.LoadFromSerializedProto(model_bytes)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"{source} is not a sentencepiece model: {exc}") from exc
        if processor.bos_id() < 0 or processor.eos_id() < 0:
            raise ValueError(f"{source}: the sentencepiece model has no BOS or EOS piece")
        self._sp = processor
        self._bytes = bytes(model_bytes)
        self._sha256 = hashlib.sha256(self._bytes).hexdigest()
        self._source = source
        self._cache_entries = cache_entries
        self._cache: _ChunkCache | None = None
        if cache_entries and _chunkable(self._bytes, processor):
            self._cache = _ChunkCache(processor, cache_entries)
        else:
            log.debug("%s: chunk cache off, encode_arrays uses sentencepiece only", source)
        self._cache_lock = threading.Lock()

    def __getstate__(self) -> dict[str, object]:
        # The processor and the lock do not pickle; the cache comes back empty.
        return {"model": self._bytes, "source": self._source, "cache": self._cache_entries}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(state["model"], source=state["source"], cache_entries=state["cache"])  # type: ignore[misc]

    @classmethod
    def from_bytes(
        cls, model_bytes: bytes, *, cache_entries: int = DEFAULT_CACHE_ENTRIES
    ) -> Tokenizer:
        return cls(model_bytes, cache_entries=cache_entries)

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], *, cache_entries: int = DEFAULT_CACHE_ENTRIES
    ) -> Tokenizer:
        return cls(Path(path).read_bytes(), source=str(path), cache_entries=cache_entries)

    @property
    def model_bytes(self) -> bytes:
        return self._bytes

    @property
    def sha256(self) -> str:
        return self._sha256

    @property
    def vocab_size(self) -> int:
        return self._sp.vocab_size()

    @property
    def bos_id(self) -> int:
        return self._sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self._sp.eos_id()

    @property
    def uses_chunk_cache(self) -> bool:
        """Whether ``encode_arrays`` sends single-spaced texts through the chunk cache."""
        return self._cache is not None

    @property
    def chunk_cache_size(self) -> int:
        """Chunks cached now (0 when the cache is off)."""
        return 0 if self._cache is None else len(self._cache)

    def clear_chunk_cache(self) -> None:
        if self._cache is not None:
            with self._cache_lock:
                self._cache.clear()

    def encode(self, texts: list[str], num_threads: int = 0) -> list[list[int]]:
        """Token ids of each text (no BOS/EOS); sentencepiece uses ``num_threads`` (0: all)."""
        return [ids.tolist() for ids in self.encode_arrays(texts, num_threads)]

    def encode_arrays(self, texts: list[str], num_threads: int = 0) -> list[np.ndarray]:
        """Like ``encode`` but each result is an int32 array (no per-id Python objects).

        Single-spaced texts go through the chunk cache (same ids, see the module docstring),
        the others through sentencepiece's batch encoder on ``num_threads`` threads.
        """
        texts = list(texts)
        threads = _resolve_threads(num_threads)
        try:
            if self._cache is None:
                return self._encode_plain(texts, threads)
            out: list[np.ndarray] = []
            for start in range(0, len(texts), _CACHE_ROUND_TEXTS):
                out.extend(self._encode_round(texts[start : start + _CACHE_ROUND_TEXTS], threads))
            return out
        except (TypeError, RuntimeError) as exc:
            _raise_for_bad_text(texts, exc)
            raise

    def _encode_round(self, texts: list[str], threads: int) -> list[np.ndarray]:
        """All through the cache when every text is single-spaced, else text by text."""
        cache = self._cache
        assert cache is not None  # encode_arrays checked
        with self._cache_lock:  # the cache's arrays are shared by every caller
            encoded = cache.encode(texts, threads)
            if encoded is not None:
                return encoded
            fast = [i for i, text in enumerate(texts) if _single_spaced(text)]
            fast_ids = cache.encode([texts[i] for i in fast], threads) if fast else []
        slow = sorted(set(range(len(texts))).difference(fast))
        slow_ids = self._encode_plain([texts[i] for i in slow], threads)
        out: list[np.ndarray] = [np.empty(0, dtype=np.int32)] * len(texts)
        for indices, part in ((fast, fast_ids), (slow, slow_ids)):
            for i, ids in zip(indices, part or [], strict=True):
                out[i] = ids
        return out

    def _encode_plain(self, texts: list[str], threads: int) -> list[np.ndarray]:
        """sentencepiece's threaded batch encoder."""
        if not texts:
            return []
        return self._sp.encode(texts, out_type="numpy", num_threads=threads)

    def encode_one(self, text: str) -> list[int]:
        """Token ids of one text straight from sentencepiece (the reference encoding)."""
        return self._sp.encode(text, out_type=int)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; BOS/EOS decode to nothing, the dummy-prefix space is removed."""
        return self._sp.decode([int(i) for i in ids])

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, sha256={self.sha256[:12]})"
