"""Cross-run comparison: its settings, the shared validation stories, scoring texts and
batched generation for the report.

Texts (generated or real stories, in normal reading order) are scored by writing them
as a small token store in a variant's own layout and passing that to
``metrics.document_bits``, so a text is scored exactly as the validation stories are.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from backstory import params, variants
from backstory.data.documents import encode_documents
from backstory.data.tokenizer import Tokenizer
from backstory.data.tokens import TokenStore, write_token_store
from backstory.evaluation.metrics import document_bits
from backstory.evaluation.sampling import prompt_ids, story_text
from backstory.lm.generate import check_sampling, generate
from backstory.lm.model import Transformer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompareConfig:
    """The report's settings (``compare`` in conf/base/parameters_compare.yml)."""

    max_tokens: int | None  # validation documents: the first whole ones up to this many tokens
    batch_size: int  # windows per scoring batch
    n_boot: int  # bootstrap resamples of documents per interval
    confidence: float  # interval coverage
    seed: int  # bootstrap seed; generation batch b samples with seed + b
    n_stories: int  # validation records prompted per source
    generate_batch_size: int  # stories decoded together
    max_new_tokens: int  # per generated story (capped by the model's context)
    temperature: float
    top_k: int | None
    top_p: float | None
    instruction_template: str  # the instruction given to instruct models
    device: str  # auto: cuda when available, else cpu

    def __post_init__(self) -> None:
        for name in ("batch_size", "n_stories", "generate_batch_size", "max_new_tokens"):
            params.check_int("compare", name, getattr(self, name), 1)
        params.check_int("compare", "n_boot", self.n_boot, 10)
        params.check_int("compare", "seed", self.seed, 0)
        params.check_int("compare", "max_tokens", self.max_tokens, 1, optional=True)
        if not isinstance(self.confidence, int | float) or not 0 < self.confidence < 1:
            raise ValueError(f"compare.confidence={self.confidence!r} must be in (0, 1)")
        try:
            check_sampling(self.temperature, self.top_k, self.top_p)
        except ValueError as err:
            raise ValueError(f"compare: {err}") from err

    @classmethod
    def from_params(cls, settings: Any) -> CompareConfig:
        return params.build(cls, settings, "compare")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class CompareError(ValueError):
    """Inputs to the comparison that do not fit together (different stories, sizes, ...)."""


# --------------------------------------------------------------- validation documents


def check_same_stories(stores: Mapping[str, TokenStore], n_docs: int) -> None:
    """Raise CompareError unless the stores hold the same first ``n_docs`` stories.

    Stores are keyed by the variant whose documents they hold; all but those of a variant
    with a tokenizer of its own (``Variant.own_tokenizer``) share one tokenizer."""
    items = list(stores.items())
    if not items:
        raise CompareError("no token stores to compare")
    name0, store0 = next(((n, s) for n, s in items if not _own_tokenizer(n)), items[0])
    for name, store in items:
        if store.n_docs < n_docs:
            raise CompareError(f"{store.path} ({name}) holds {store.n_docs} documents, "
                               f"fewer than the {n_docs} compared")
        keys = ("corpus_fingerprint",) if _own_tokenizer(name) else (
            "tokenizer_sha256", "corpus_fingerprint")
        for key in keys:
            if store.attrs.get(key) != store0.attrs.get(key):
                raise CompareError(
                    f"{store.path} ({name}) and {store0.path} ({name0}) differ in {key}; "
                    "rerun the variants on one corpus and tokenizer"
                )
        if not np.array_equal(store.doc_bytes[:n_docs], store0.doc_bytes[:n_docs]):
            raise CompareError(f"{store.path} ({name}) does not hold the same stories in the "
                               f"same order as {store0.path} ({name0})")


def _own_tokenizer(name: str) -> bool:
    return name in variants.REGISTRY and variants.get(name).own_tokenizer


def story_tokens_per_doc(store: TokenStore, n_docs: int) -> np.ndarray:
    """int64 (n_docs,): the story-text tokens of each of the first ``n_docs`` documents."""
    spans = store.story_spans[:n_docs]
    return (spans[:, 1] - spans[:, 0]).astype(np.int64)


# --------------------------------------------------------------------- scoring texts


def _text_records(texts: Sequence[str]) -> list[dict]:
    records = []
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"text {i} is empty or not a string; nothing to score")
        records.append({"story": text.strip(), "shard": "texts", "record": i})
    return records


def _texts_store(path: Path, texts: Sequence[str], tokenizer: Tokenizer, source: str
                 ) -> TokenStore:
    """Write ``texts`` as a token store in the ``source`` variant's layout and open it."""
    attrs = {
        "variant": source,
        "layout": variants.get(source).layout,
        "vocab_size": tokenizer.vocab_size,
        "bos_id": tokenizer.bos_id,
        "eos_id": tokenizer.eos_id,
        "tokenizer_sha256": tokenizer.sha256,
        "corpus_fingerprint": "scored-texts",
    }
    batches = encode_documents(_text_records(texts), tokenizer, variant=source, num_threads=1)
    write_token_store(path, batches, attrs=attrs)
    return TokenStore(path)


def score_texts(
    model: Transformer,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    *,
    variant: str,
    batch_size: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """(bits, bytes) of each text (normal reading order) under a model of ``variant``.

    Each text is laid out as the variant's documents are (a reversed model reads
    ``reverse_words(text)``) and scored in the variant's token order.
    """
    spec = variants.get(variant)
    if spec.instruct:
        raise ValueError(f"score_texts scores plain stories; {variant} documents carry an "
                         "instruction")
    if not texts:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    with tempfile.TemporaryDirectory(prefix="backstory-score-") as folder:
        store = _texts_store(Path(folder) / "texts.h5", texts, tokenizer, spec.token_source)
        try:
            bits = document_bits(model, store, seq_len=model.config.max_seq_len,
                                 batch_size=batch_size, token_order=spec.token_order)
            n_bytes = np.array(store.doc_bytes, dtype=np.int64)
        finally:
            store.close()
    return bits, n_bytes


# ------------------------------------------------------------------ batched samples


def generate_batched(
    model: Transformer,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    *,
    variant: str,
    batch_size: int = 16,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One story per prompt in ``variant``'s mode, ``batch_size`` prompts per decode.

    Like ``sampling.generate_story`` (same prompt ids, stop ids and text in reading
    order), but batched: batch b samples with seed + b, so a story depends on its batch.
    The token budget is capped by the context left after the batch's longest prompt.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"compare.generate_batch_size must be an integer >= 1, got {batch_size!r}")
    check_sampling(temperature, top_k, top_p)
    ids = [prompt_ids(tokenizer, variant, prompt) for prompt in prompts]
    out: list[dict[str, Any]] = []
    for b, start in enumerate(range(0, len(ids), batch_size)):
        batch = ids[start : start + batch_size]
        budget = min(max_new_tokens, model.config.max_seq_len - max(map(len, batch)))
        if budget < 1:
            raise ValueError(f"a prompt of {max(map(len, batch))} tokens leaves no room in the "
                             f"model's context of {model.config.max_seq_len} tokens")
        new = generate(model, batch, max_new_tokens=budget, temperature=temperature, top_k=top_k,
                       top_p=top_p, stop_ids=(tokenizer.bos_id, tokenizer.eos_id), seed=seed + b)
        # sampling.story_text is the one definition of how a sample reads in normal order.
        for prompt, prompt_tokens, tokens in zip(prompts[start:], batch, new, strict=False):
            out.append({"variant": variant, "mode": variants.get(variant).mode,
                        "prompt": prompt,
                        "text": story_text(tokenizer, variant, prompt_tokens, tokens),
                        "n_new_tokens": len(tokens), "stopped": len(tokens) < budget,
                        "seed": seed + b})
    return out


