"""Cross-run comparison: its settings, scoring texts and batched generation for the report.

Texts (generated or real stories, in normal reading order) are scored by writing them
as a small token store in a variant's own layout and passing that to
``metrics.document_bits``, so a text is scored exactly as the validation stories are.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from backstory import params, variants
from backstory.data.documents import encode_documents
from backstory.data.token_store import TokenStore
from backstory.data.token_writer import write_token_store
from backstory.data.tokenizer import Tokenizer
from backstory.evaluation.metrics import document_bits
from backstory.evaluation.report import Statistics
from backstory.evaluation.sampling import mode, prompt_ids, story_text
from backstory.lm.generate import SamplingConfig, generate
from backstory.lm.model import Transformer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompareConfig:
    """The report's settings (``compare`` in conf/base/parameters_compare.yml)."""

    batch_size: int  # windows per scoring batch (generated stories)
    n_boot: int  # bootstrap resamples of documents per interval
    confidence: float  # interval coverage
    seed: int  # bootstrap seed; generation batch b samples with seed + b
    convergence_tolerance: float  # converged: doubling the tokens moved the loss less (relative)
    n_stories: int  # validation records prompted per source
    generate_batch_size: int  # stories decoded together (sampled as run_defaults.evaluate says)
    instruction_template: str  # the instruction given to instruct models
    device: str  # auto: cuda when available, else cpu

    def __post_init__(self) -> None:
        for name in ("batch_size", "n_stories", "generate_batch_size"):
            params.check_int("compare", name, getattr(self, name), 1)
        self.statistics()  # checks n_boot, seed, confidence and the convergence settings

    @classmethod
    def from_params(cls, settings: Any) -> CompareConfig:
        return params.build(cls, settings, "compare")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def statistics(self) -> Statistics:
        """How the report makes its intervals and judges convergence."""
        return Statistics(n_boot=self.n_boot, confidence=self.confidence, seed=self.seed,
                          convergence_tolerance=self.convergence_tolerance)


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
    # Plain stories: no instruction, so no templates and no template seed; one batch.
    batches = encode_documents(_text_records(texts), tokenizer, variant=source, templates=None,
                               seed=0, batch_size=len(texts), num_threads=1)
    write_token_store(path, batches, attrs=attrs)
    return TokenStore(path)


def score_texts(
    model: Transformer,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    *,
    variant: str,
    batch_size: int,
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
    batch_size: int,
    sampling: SamplingConfig,
    seed: int,
) -> list[dict[str, Any]]:
    """One story per prompt in ``variant``'s mode, ``batch_size`` prompts per decode.

    Like ``sampling.generate_story`` (same prompt ids, stop ids and text in reading
    order), but batched: batch b samples with seed + b, so a story depends on its batch.
    The token budget is capped by the context left after the batch's longest prompt.
    """
    params.check_int("compare", "generate_batch_size", batch_size, 1)
    ids = [prompt_ids(tokenizer, variant, prompt) for prompt in prompts]
    out: list[dict[str, Any]] = []
    for b, start in enumerate(range(0, len(ids), batch_size)):
        batch = ids[start : start + batch_size]
        budget = min(sampling.max_new_tokens, model.config.max_seq_len - max(map(len, batch)))
        if budget < 1:
            raise ValueError(f"a prompt of {max(map(len, batch))} tokens leaves no room in the "
                             f"model's context of {model.config.max_seq_len} tokens")
        new = generate(model, batch, max_new_tokens=budget, temperature=sampling.temperature,
                       top_k=sampling.top_k, top_p=sampling.top_p,
                       stop_ids=(tokenizer.bos_id, tokenizer.eos_id), seed=seed + b)
        # sampling.story_text is the one definition of how a sample reads in normal order.
        for prompt, prompt_tokens, tokens in zip(prompts[start:], batch, new, strict=False):
            out.append({"variant": variant, "mode": mode(variant),
                        "prompt": prompt,
                        "text": story_text(tokenizer, variant, prompt_tokens, tokens),
                        "n_new_tokens": len(tokens), "stopped": len(tokens) < budget,
                        "seed": seed + b})
    return out


