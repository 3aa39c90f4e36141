"""Variant document layouts and their batched, threaded encoding.

The layout follows from the variant's registry entry (``backstory.variants``):

[BOS] + ids(story)                            words forward
[BOS] + ids(reverse_words(story))             words reversed
ids(prompt) + [BOS] + ids(story) + [EOS]      instruct

``story_spans`` mark the tokens of the story text inside each document (the BOS, prompt
and EOS are outside); ``doc_bytes`` is the UTF-8 size of the story text, which the
reversal leaves unchanged (it only reorders pieces).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import KW_ONLY, asdict, dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from backstory import params, variants
from backstory.data.text import DEFAULT_TEMPLATES, in_word_order, record_instruction
from backstory.data.token_writer import DocBatch
from backstory.data.tokenizer import Tokenizer


@dataclass(frozen=True)
class TextConfig:
    """How stories become documents (defaults: ``text.defaults`` in conf/base)."""

    seed: int  # instruction template choice is seeded per record
    batch_size: int  # stories per encode batch (threads share a batch)
    num_threads: int  # sentencepiece encode threads per process (0: all cores)
    workers: int  # export processes, one story-table partition at a time (0: all cores)
    templates: list[str] | None  # None: backstory.data.text.DEFAULT_TEMPLATES

    def __post_init__(self) -> None:
        for name, low in (("seed", 0), ("batch_size", 1), ("num_threads", 0), ("workers", 0)):
            params.check_int("text", name, getattr(self, name), low)
        if self.templates is not None and (
                not isinstance(self.templates, list | tuple)
                or not all(isinstance(x, str) for x in self.templates)):
            raise ValueError(f"text.templates must be null or a list of strings, "
                             f"got {self.templates!r}")

    @classmethod
    def from_params(cls, settings: Mapping[str, Any]) -> TextConfig:
        return params.build(cls, settings, "text")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def exporting_variant(name: str) -> variants.Variant:
    """The registered variant ``name``, which must export its own documents."""
    variant = variants.get(name)
    if variant.tokens_from is not None:
        raise ValueError(
            f"variant {name!r} trains on {variant.tokens_from!r}'s token stores and has no "
            "documents of its own to encode"
        )
    return variant


def record_key(record: dict) -> str:
    """``shard:record``, the stable name of a record (used in errors and template choice)."""
    if not isinstance(record, dict):
        return f"<{type(record).__name__}>"
    return f"{record.get('shard', '?')}:{record.get('record', '?')}"


def _str_list(value: object) -> list[str]:
    # Parquet list columns come back as numpy arrays, missing ones as None.
    return [] if value is None else [str(v) for v in value]  # type: ignore[attr-defined]


def _story(record: dict) -> str:
    story = record.get("story") if isinstance(record, dict) else None
    if not isinstance(story, str):
        raise ValueError(f"record {record_key(record)}: 'story' must be a str, got {story!r:.60}")
    if not story:
        raise ValueError(f"record {record_key(record)}: empty story")
    return story


def variant_text(record: dict, variant: str) -> str:
    """The story text a variant trains on: the story, or its word-reversed form."""
    story = _story(record)
    return in_word_order(story, exporting_variant(variant).words)


def _prompt(record: dict, templates: Sequence[str], seed: int) -> str:
    key = record_key(record)
    summary = record.get("summary")
    if summary is None:
        summary = ""
    if not isinstance(summary, str):
        raise ValueError(f"record {key}: 'summary' must be a str, got {summary!r:.60}")
    words, features = _str_list(record.get("words")), _str_list(record.get("features"))
    return record_instruction(summary, words, features, templates=templates, seed=seed, key=key)


def _instruct_parts(
    records: list[dict],
    texts: list[str],
    tokenizer: Tokenizer,
    templates: Sequence[str],
    seed: int,
    num_threads: int,
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, int]:
    """(arrays to concatenate, story ids, tokens before each story, tokens after it)."""
    n = len(records)
    prompts = [_prompt(r, templates, seed) for r in records]
    # One call for prompts and stories keeps every thread busy.
    encoded = tokenizer.encode_arrays(prompts + texts, num_threads)
    prompt_ids, story_ids = encoded[:n], encoded[n:]
    bos = np.array([tokenizer.bos_id], dtype=np.int32)
    eos = np.array([tokenizer.eos_id], dtype=np.int32)
    parts = [a for p, s in zip(prompt_ids, story_ids, strict=True) for a in (p, bos, s, eos)]
    return parts, story_ids, np.array([len(p) + 1 for p in prompt_ids], dtype=np.int64), 1


def _bos_parts(
    texts: list[str], tokenizer: Tokenizer, num_threads: int
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, int]:
    """Like _instruct_parts for the [BOS] + text layouts."""
    story_ids = tokenizer.encode_arrays(texts, num_threads)
    bos = np.array([tokenizer.bos_id], dtype=np.int32)
    parts = [a for s in story_ids for a in (bos, s)]
    return parts, story_ids, np.ones(len(texts), dtype=np.int64), 0


def _batch(
    records: list[dict],
    tokenizer: Tokenizer,
    variant: variants.Variant,
    templates: Sequence[str],
    seed: int,
    num_threads: int,
) -> DocBatch:
    stories = [_story(r) for r in records]
    texts = [in_word_order(s, variant.words) for s in stories]
    if variant.instruct:
        parts, story_ids, prefix, suffix = _instruct_parts(
            records, texts, tokenizer, templates, seed, num_threads
        )
    else:
        parts, story_ids, prefix, suffix = _bos_parts(texts, tokenizer, num_threads)
    story_len = np.array([len(s) for s in story_ids], dtype=np.int64)
    return DocBatch(
        # sentencepiece ids are int32 and never negative, so the uint32 view is exact.
        tokens=np.concatenate(parts).view(np.uint32),
        doc_lengths=prefix + story_len + suffix,
        story_spans=np.stack([prefix, prefix + story_len], axis=1),
        doc_bytes=np.array([len(s.encode("utf-8")) for s in stories], dtype=np.int64),
    )


def _checked_templates(spec: variants.Variant, templates: Sequence[str] | None,
                       batch_size: int) -> tuple[str, ...]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    chosen = tuple(DEFAULT_TEMPLATES if templates is None else templates)
    if spec.instruct and not chosen:
        raise ValueError(f"{spec.name}: text.templates is empty; give at least one template")
    return chosen


def encode_documents(
    records: Iterable[dict],
    tokenizer: Tokenizer,
    *,
    variant: str,
    templates: Sequence[str] | None,
    seed: int,
    batch_size: int,
    num_threads: int,
) -> Iterator[DocBatch]:
    """Encode records into ``variant`` documents, one DocBatch per ``batch_size`` records.

    ``templates`` (instruct only; None: DEFAULT_TEMPLATES) and ``seed`` choose each
    record's prompt; ``num_threads`` threads encode a batch (0: all cores). A project's
    values are its ``text`` settings (``TextConfig``).
    """
    spec = exporting_variant(variant)
    chosen = _checked_templates(spec, templates, batch_size)
    iterator = iter(records)
    with tqdm(desc=f"encode {variant}", unit="doc", unit_scale=True, leave=False) as bar:
        while batch := list(itertools.islice(iterator, batch_size)):
            yield _batch(batch, tokenizer, spec, chosen, seed, num_threads)
            bar.update(len(batch))


@dataclass(eq=False, repr=False)
class StoryDocuments:
    """One split of a story table as ``variant`` documents, encodable partition by partition.

    What an export hands to the token-store writer (``TokenStream.documents``):
    ``backstory.data.token_export`` encodes the ``parts`` in worker processes and
    resumes after a kill; ``batches()`` encodes them all here, one after another. Both
    give the same documents, in table order. ``stories`` is a
    ``backstory.data.corpus.story_table.StoryTable`` (anything with ``partition_names``,
    ``records`` and ``fingerprint``); the object pickles with the table and tokenizer.
    """

    stories: Any
    split: str
    tokenizer: Tokenizer
    _: KW_ONLY
    variant: str
    templates: Sequence[str] | None
    seed: int
    batch_size: int
    num_threads: int

    def __post_init__(self) -> None:
        self.templates = _checked_templates(exporting_variant(self.variant), self.templates,
                                            self.batch_size)
        self.seed, self.batch_size = int(self.seed), int(self.batch_size)
        self.num_threads = int(self.num_threads)
        self.parts: list[str] = list(self.stories.partition_names(self.split))

    @property
    def fingerprint(self) -> str:
        """The story table's corpus fingerprint."""
        return self.stories.fingerprint

    @property
    def n_records(self) -> int:
        """Records of this split (what the export will encode)."""
        return self.stories.count(self.split)

    def identity(self) -> dict:
        """Everything the encoded documents depend on (batching and threads do not count)."""
        return {"corpus_fingerprint": self.fingerprint, "split": self.split,
                "parts": self.parts, "variant": self.variant, "templates": list(self.templates),
                "seed": self.seed, "tokenizer_sha256": self.tokenizer.sha256}

    def encode_part(self, name: str, num_threads: int | None = None) -> Iterator[DocBatch]:
        """The documents of one partition."""
        return self._encode(self.stories.records(self.split, [name]), num_threads)

    def batches(self) -> Iterator[DocBatch]:
        """The documents of every partition, in order, encoded in this process."""
        return self._encode(self.stories.records(self.split), None)

    def _encode(self, records: Iterable[dict], num_threads: int | None) -> Iterator[DocBatch]:
        return encode_documents(
            records, self.tokenizer, variant=self.variant, templates=self.templates,
            seed=self.seed, batch_size=self.batch_size,
            num_threads=self.num_threads if num_threads is None else num_threads,
        )
