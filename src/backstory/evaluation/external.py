"""Imported ("external") models scored on the runs' own validation stories.

An external model reads text with its own tokenizer, so its token store holds the
runs' validation stories (same records, same order, same story bytes) in other tokens.
Bits per byte of the story text compare across tokenizers; nats per token do not, so
an external model is measured in bits per byte, on the same leading stories as the
runs of its variant (``covered_documents`` of the runs' store).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from backstory.data.tokens import TokenStore
from backstory.errors import InputError
from backstory.evaluation.evaluate import EvaluateConfig, check_trained_for
from backstory.evaluation.lineage import check_lineage
from backstory.evaluation.metrics import covered_documents, evaluate_loss, resolve_device
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
                            config: EvaluateConfig, *, variant: str) -> dict[str, Any]:
    """Loss and bits per byte of ``trained`` (read as ``variant``) on its own ``store``,
    over the stories a run of that variant is evaluated on (``reference``, the runs'
    store, and ``config.max_tokens`` of it)."""
    check_lineage(trained.meta, store.attrs.get("tokenizer_sha256"), store.attrs,
                  store_path=str(store.path))
    token_order = check_trained_for(trained, variant)
    n_docs = covered_documents(reference, config.max_tokens)
    check_stories_match(store, reference, n_docs)
    model = build_model(trained).to(resolve_device(config.device)).eval()
    # Exactly the first n_docs documents of the external model's own tokens.
    metrics: dict[str, Any] = evaluate_loss(
        model, store, seq_len=trained.config.max_seq_len, batch_size=config.batch_size,
        max_tokens=int(store.doc_offsets[n_docs]), token_order=token_order)
    metrics.update(variant=variant, token_order=token_order, seq_len=trained.config.max_seq_len,
                   n_params=model.num_parameters(), vocab_size=trained.config.vocab_size)
    logger.info("external %s model: %.4f bits per byte on %d validation stories", variant,
                metrics["val_bpb"], n_docs)
    return metrics
