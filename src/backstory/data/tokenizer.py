"""sentencepiece vocabulary training (in memory) and the ``Tokenizer`` wrapper.

Training uses llama2.c's custom-vocabulary options (character coverage 1.0, split digits,
whitespace-only pieces, byte fallback, identity normalisation, unk=0 bos=1 eos=2, no pad)
with one change: ``remove_extra_whitespaces`` is off, so encoding is lossless.

Round trip: sentencepiece writes spaces as "▁" and adds one "▁" before the text (the dummy
prefix); ``decode`` removes that one prefix again. With identity normalisation, no
whitespace collapsing and byte fallback, ``decode(encode_one(s)) == s`` for every text
that does not itself contain "▁" (U+2581), which decodes as a space. Leading, trailing and
repeated spaces and newlines survive; unseen characters go through byte pieces.

Encoding speed: ``Tokenizer.encode_arrays`` sends texts through ``backstory.data.chunk_cache``,
which gives the same ids as sentencepiece, faster.

Interop: ``llama2c_tokenizer_bin`` writes the vocabulary in llama2.c's tokenizer.bin layout
(uint32 longest piece in bytes, then per id: float32 score, int32 byte length, the bytes)
and ``check_llama2c_tokenizer_bin`` checks such a file against a sentencepiece model.
tokenizer.bin holds no normalisation rules, so it cannot stand in for the model: run.c
re-implements BPE encoding from the scores alone, which is why only BPE tokenizers export.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import os
import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm

from backstory import params
from backstory.core.errors import SettingError
from backstory.data import protobuf
from backstory.data.chunk_cache import (
    CACHE_ROUND_TEXTS,
    DEFAULT_CACHE_ENTRIES,
    ChunkCache,
    chunkable,
    raise_for_bad_text,
    single_spaced,
)

log = logging.getLogger(__name__)

MODEL_TYPES = ("bpe", "unigram", "word", "char")
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
SPACE_MARK = "\u2581"  # sentencepiece's visible space
# sentencepiece's TrainerSpec.ModelType enum values, in MODEL_TYPES order
_MODEL_TYPE_CODES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}
# llama2.c writes BOS/EOS as these texts so that run.c prints them on lines of their own.
LLAMA2C_CONTROL_TEXT = {BOS_ID: "\n<s>\n", EOS_ID: "\n</s>\n"}

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
    params.check_int("tokenizer", "vocab_size", vocab_size, 4)
    params.check_int("tokenizer", "max_sentences", max_sentences, 1)
    params.check_int("tokenizer", "max_sentence_bytes", max_sentence_bytes, 1)
    params.check_int("tokenizer", "num_threads", num_threads, 1)


@dataclass(frozen=True)
class TokenizerConfig:
    """The ``tokenizer`` parameters (conf/base/parameters_ingest.yml documents each key)."""

    vocab_size: int
    model_type: str
    max_sentences: int

    def __post_init__(self) -> None:
        _check_train_args(self.vocab_size, self.model_type, self.max_sentences,
                          DEFAULT_MAX_SENTENCE_BYTES, 1)

    @classmethod
    def from_params(cls, settings: Any) -> TokenizerConfig:
        return params.build(cls, settings, "tokenizer")

    def train(self, texts: Iterable[str]) -> bytes:
        """A sentencepiece model of these settings trained on ``texts``: its bytes."""
        return train_tokenizer(texts, vocab_size=self.vocab_size, model_type=self.model_type,
                               max_sentences=self.max_sentences)


def train_tokenizer(
    texts: Iterable[str],
    *,
    vocab_size: int,
    model_type: str,
    max_sentences: int,
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
            raise SettingError(
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


class Tokenizer:
    """A loaded sentencepiece model with batch encoding and its identity (sha256).

    ``cache_entries`` bounds the chunk cache of ``encode_arrays`` (about 120 bytes per
    entry; 0 turns it off). The cache changes only the speed, never the ids.
    """

    def __init__(
        self,
        model_bytes: bytes,
        *,
        source: str = "<bytes>",
        cache_entries: int = DEFAULT_CACHE_ENTRIES,
    ) -> None:
        if (
            isinstance(cache_entries, bool)
            or not isinstance(cache_entries, int)
            or cache_entries < 0
        ):
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
        self._cache: ChunkCache | None = None
        if cache_entries and chunkable(self._bytes, processor):
            self._cache = ChunkCache(processor, cache_entries)
        else:
            log.debug("%s: chunk cache off, encode_arrays uses sentencepiece only", source)
        self._cache_lock = threading.Lock()

    def __getstate__(self) -> dict[str, object]:
        # The processor and the lock do not pickle; the cache comes back empty.
        return {"model": self._bytes, "source": self._source, "cache": self._cache_entries}

    def __setstate__(self, state: dict[str, object]) -> None:
        model, source, cache = state["model"], state["source"], state["cache"]
        self.__init__(model, source=source, cache_entries=cache)  # type: ignore[misc]

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
    def model_type(self) -> str:
        """The sentencepiece algorithm: one of MODEL_TYPES."""
        return model_type_of(self._bytes)

    def piece(self, token_id: int) -> str:
        """The sentencepiece piece of ``token_id`` as stored (spaces shown as U+2581)."""
        return self._sp.id_to_piece(int(token_id))

    def piece_id(self, piece: str) -> int | None:
        """The id of ``piece`` (spaces as U+2581), or None when it is not in the vocabulary."""
        i = self._sp.piece_to_id(piece)
        return None if i == self._sp.unk_id() and piece != self.piece(i) else i

    def score(self, token_id: int) -> float:
        return self._sp.get_score(int(token_id))

    def is_byte(self, token_id: int) -> bool:
        return self._sp.is_byte(int(token_id))

    def is_special(self, token_id: int) -> bool:
        """True for control pieces (BOS, EOS), the unknown piece and unused pieces."""
        i = int(token_id)
        return self._sp.is_control(i) or self._sp.is_unknown(i) or self._sp.is_unused(i)

    def token_texts(self) -> list[str | None]:
        """The text each id adds when decoded in the middle of a sequence.

        Pieces with their U+2581 marks as spaces; a byte piece of an ASCII byte as that
        character. None where an id has no text of its own: specials, and byte pieces
        of non-ASCII bytes (only a run of them makes a character).
        """
        texts: list[str | None] = []
        for i in range(self.vocab_size):
            if self.is_special(i):
                texts.append(None)
            elif self.is_byte(i):
                value = int(self.piece(i)[3:5], 16)  # "<0x41>" -> 0x41
                texts.append(chr(value) if value < 0x80 else None)
            else:
                texts.append(self.piece(i).replace(SPACE_MARK, " "))
        return texts

    @property
    def uses_chunk_cache(self) -> bool:
        """Whether ``encode_arrays`` sends single-spaced texts through the chunk cache."""
        return self._cache is not None

    @property
    def chunk_cache_size(self) -> int:
        """Chunks cached now (0 when the cache is off)."""
        return 0 if self._cache is None else len(self._cache)

    @property
    def chunk_cache_nbytes(self) -> int:
        """Approximate memory the chunk cache holds now, in bytes."""
        return 0 if self._cache is None else self._cache.nbytes

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
            for start in range(0, len(texts), CACHE_ROUND_TEXTS):
                out.extend(self._encode_round(texts[start : start + CACHE_ROUND_TEXTS], threads))
            return out
        except (TypeError, RuntimeError) as exc:
            raise_for_bad_text(texts, exc)
            raise

    def _encode_round(self, texts: list[str], threads: int) -> list[np.ndarray]:
        """All through the cache when every text is single-spaced, else text by text."""
        cache = self._cache
        assert cache is not None  # encode_arrays checked
        with self._cache_lock:  # the cache's arrays are shared by every caller
            encoded = cache.encode(texts, threads)
            if encoded is not None:
                return encoded
            fast = [i for i, text in enumerate(texts) if single_spaced(text)]
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


# --- model type and llama2.c's tokenizer.bin -------------------------------------------


def model_type_of(model_bytes: bytes) -> str:
    """The algorithm a serialized sentencepiece model uses (one of MODEL_TYPES).

    Read from ModelProto.trainer_spec (field 2) .model_type (field 3), so no protobuf
    package is needed; an absent field means sentencepiece's default, unigram.
    """
    try:
        for number, wire, value in protobuf.fields(model_bytes):
            if number == 2 and wire == 2:
                for inner, inner_wire, code in protobuf.fields(value):
                    if inner == 3 and inner_wire == 0:
                        return _MODEL_TYPE_CODES.get(code, f"unknown({code})")
                return "unigram"
    except (ValueError, IndexError) as exc:
        raise ValueError(f"cannot read the sentencepiece model's trainer spec: {exc}") from exc
    return "unigram"


def llama2c_piece_bytes(tokenizer: Tokenizer, token_id: int) -> bytes:
    """How tokenizer.bin spells ``token_id``: spaces for U+2581, llama2.c's BOS/EOS texts."""
    if token_id in LLAMA2C_CONTROL_TEXT and tokenizer.is_special(token_id):
        return LLAMA2C_CONTROL_TEXT[token_id].encode("utf-8")
    return tokenizer.piece(token_id).replace(SPACE_MARK, " ").encode("utf-8")


def check_llama2c_encodable(tokenizer: Tokenizer) -> None:
    """Raise ValueError unless run.c encodes prompts with ``tokenizer`` as sentencepiece does.

    run.c merges adjacent pieces in order of score (sentencepiece's BPE), maps an unknown
    byte b to id b + 3 (byte fallback right after unk, BOS, EOS) and starts every prompt
    with the piece " " (the dummy prefix).
    """
    if tokenizer.model_type != "bpe":
        raise ValueError(
            f"the tokenizer is a sentencepiece {tokenizer.model_type} model; llama2.c's run.c "
            "encodes prompts by merging pieces in score order, which only reproduces BPE; "
            "train the model with tokenizer.model_type: bpe to export it"
        )
    if (tokenizer.bos_id, tokenizer.eos_id) != (BOS_ID, EOS_ID):
        raise ValueError(f"run.c needs BOS=1 and EOS=2, the tokenizer has BOS="
                         f"{tokenizer.bos_id} and EOS={tokenizer.eos_id}")
    bytes_at = [i for i in range(3, 259) if i < tokenizer.vocab_size and tokenizer.is_byte(i)]
    if len(bytes_at) != 256 or any(tokenizer.piece(i) != f"<0x{i - 3:02X}>" for i in bytes_at):
        raise ValueError("run.c maps byte b to id b + 3; the tokenizer's byte pieces are not "
                         "at ids 3..258 (train it with byte_fallback, as backstory does)")
    if tokenizer.piece_id(SPACE_MARK) is None:
        raise ValueError("run.c starts every prompt with the piece ' ', which this tokenizer "
                         "lacks (train it with allow_whitespace_only_pieces, as backstory does)")


def llama2c_tokenizer_bin(tokenizer: Tokenizer) -> bytes:
    """The vocabulary in llama2.c's tokenizer.bin layout (see the module docstring)."""
    check_llama2c_encodable(tokenizer)
    pieces = [llama2c_piece_bytes(tokenizer, i) for i in range(tokenizer.vocab_size)]
    out = [struct.pack("<I", max(len(p) for p in pieces))]
    for i, piece in enumerate(pieces):
        out.append(struct.pack("<fi", tokenizer.score(i), len(piece)))
        out.append(piece)
    return b"".join(out)


def read_llama2c_tokenizer_bin(data: bytes, vocab_size: int, *, source: str = "tokenizer.bin"
                               ) -> list[tuple[bytes, float]]:
    """(piece bytes, score) of each of the ``vocab_size`` ids of a tokenizer.bin.

    The file does not record its vocabulary size (run.c takes it from the model), so
    the caller gives it; the file must hold exactly that many entries.
    """
    if len(data) < 4:
        raise ValueError(f"{source} is too short to be a llama2.c tokenizer.bin")
    (longest,) = struct.unpack_from("<I", data, 0)
    pos, entries = 4, []
    for i in range(vocab_size):
        if pos + 8 > len(data):
            raise ValueError(f"{source} ends at entry {i}; the model has {vocab_size} ids")
        score, size = struct.unpack_from("<fi", data, pos)
        pos += 8
        if size < 0 or size > longest or pos + size > len(data):
            raise ValueError(f"{source}: entry {i} has a bad length {size}")
        entries.append((data[pos:pos + size], score))
        pos += size
    if pos != len(data):
        raise ValueError(f"{source} holds {len(data) - pos} bytes after its {vocab_size} "
                         "entries; it belongs to a model with a larger vocabulary")
    return entries


def check_llama2c_tokenizer_bin(tokenizer: Tokenizer, data: bytes, *,
                                source: str = "tokenizer.bin") -> None:
    """Raise ValueError unless ``data`` spells ``tokenizer``'s pieces and scores.

    Special ids are compared by score only: exporters write their own texts for them.
    """
    entries = read_llama2c_tokenizer_bin(data, tokenizer.vocab_size, source=source)
    for i, (piece, score) in enumerate(entries):
        expected = tokenizer.piece(i).replace(SPACE_MARK, " ").encode("utf-8")
        if (not tokenizer.is_special(i) and piece != expected) or score != tokenizer.score(i):
            raise ValueError(
                f"{source} does not belong to this sentencepiece model: id {i} is "
                f"{piece!r} (score {score}) there but {expected!r} (score "
                f"{tokenizer.score(i)}) in the model"
            )
