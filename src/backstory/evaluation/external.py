"""Imported ("external") models scored on the runs' own validation stories.

An external model reads text with its own tokenizer, so its token store holds the
runs' validation stories (same records, same order, same story bytes) in other tokens.
Bits per byte of the story text compare across tokenizers; nats per token do not, so
an external model is measured in bits per byte, on the evaluation stories every run is
scored on (``evaluate.n_stories``, ``backstory.evaluation.evaluate.evaluation_set``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from backstory.core.errors import InputError
from backstory.data.token_store import TokenStore
from backstory.evaluation.evaluate import (
    EvaluateConfig,
    EvaluationSet,
    check_store_holds,
    check_trained_for,
    score_stories,
    summarize_scores,
)
from backstory.evaluation.lineage import check_lineage
from backstory.evaluation.metrics import resolve_device
from backstory.lm.checkpoint import TrainedModel, build_model

logger = logging.getLogger(__name__)


def check_stories_match(store: TokenStore, reference: TokenStore, n_docs: int) -> None:
    """InputError unless ``store`` holds ``reference``'s first ``n_docs`` stories: the same
    corpus and layout, and the same story bytes document by document (any tokenizer)."""
    both = f"{store.path} and {reference.path}"
    if store.n_docs < n_docs:
        raise InputError(f"{store.path} holds {store.n_docs} documents, fewer than the "
                         f"{n_docs} stories of {reference.path} it is compared on")
    for key in ("corpus_fingerprint", "layout"):
        if store.attrs.get(key) != reference.attrs.get(key):
            raise InputError(f"{both} differ in {key} ({store.attrs.get(key)!r} vs "
                             f"{reference.attrs.get(key)!r}); encode both from one story "
                             "table in one layout")
    if not np.array_equal(store.doc_bytes[:n_docs], reference.doc_bytes[:n_docs]):
        raise InputError(f"{both} do not hold the same stories in the same order")


def evaluate_external_model(trained: TrainedModel, store: TokenStore, reference: TokenStore,
                            config: EvaluateConfig, *, variant: str, stories: EvaluationSet
                            ) -> tuple[dict[str, Any], pd.DataFrame]:
    """Metrics and per-story scores of ``trained`` (read as ``variant``) on its own
    ``store``, over the evaluation ``stories`` (which ``reference``, the store the runs of
    that variant are scored on, holds first too)."""
    check_lineage(trained.meta, store.attrs.get("tokenizer_sha256"), store.attrs,
                  store_path=str(store.path))
    token_order = check_trained_for(trained, variant)
    check_stories_match(store, reference, stories.n_stories)
    check_store_holds(store, stories)
    model = build_model(trained).to(resolve_device(config.device)).eval()
    documents = score_stories(model, store, stories, token_order=token_order,
                              batch_size=config.batch_size)
    metrics: dict[str, Any] = summarize_scores(documents)
    metrics.update(variant=variant, token_order=token_order, seq_len=trained.config.max_seq_len,
                   n_params=model.num_parameters(), vocab_size=trained.config.vocab_size,
                   eval_stories=stories.identity())
    logger.info("external %s model: %.4f bits per byte on %d validation stories", variant,
                metrics["val_bpb"], stories.n_stories)
    return metrics, documents
