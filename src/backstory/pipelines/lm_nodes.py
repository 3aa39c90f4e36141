"""Variant nodes: export token streams, train, evaluate. Thin adapters over domain modules."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import pandas as pd

import backstory
from backstory import variants
from backstory.data.documents import StoryDocuments
from backstory.data.tokenizer import Tokenizer
from backstory.data.tokens import TokenStore, TokenStream
from backstory.evaluation.evaluate import EvaluateConfig, evaluate_model
from backstory.lm.checkpoint import TrainedModel
from backstory.lm.model import ModelConfig
from backstory.lm.training import TrainConfig, train

logger = logging.getLogger(__name__)


def params_sha256(params: object) -> str:
    """sha256 of parameters as canonical JSON (sorted keys), recorded as lineage."""
    text = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def export_tokens(
    stories: dict[str, Callable[[], pd.DataFrame]],
    tokenizer: Tokenizer,
    ingest_report: dict,
    text: dict,
    *,
    variant: str,
    split: str,
) -> TokenStream:
    """Describe one split of one variant as a lazy token stream (the H5 dataset writes it)."""
    documents = StoryDocuments(
        stories,
        split,
        tokenizer,
        variant=variant,
        templates=text.get("templates"),
        seed=int(text.get("seed", 0)),
        batch_size=int(text.get("batch_size", 1024)),
        num_threads=int(text.get("num_threads", 0)),
    )
    attrs = {
        "variant": variant,
        "split": split,
        "layout": variants.get(variant).layout,
        "vocab_size": tokenizer.vocab_size,
        "bos_id": tokenizer.bos_id,
        "eos_id": tokenizer.eos_id,
        "tokenizer_sha256": tokenizer.sha256,
        "corpus_fingerprint": ingest_report["corpus_fingerprint"],
        "text_params_sha256": params_sha256(text),
    }
    return TokenStream(batches=None, attrs=attrs, documents=documents)


def lineage_of(store: TokenStore) -> dict:
    """What a model trained or evaluated on this store was made from."""
    keys = ("variant", "layout", "tokenizer_sha256", "corpus_fingerprint", "vocab_size")
    lineage = {key: store.attrs[key] for key in keys}
    if "text_params_sha256" in store.attrs:  # stores written before it was recorded lack it
        lineage["text_params_sha256"] = store.attrs["text_params_sha256"]
    return lineage


def train_model(
    train_tokens: TokenStore,
    val_tokens: TokenStore,
    training_run: Path,
    model: dict,
    train_params: dict,
    *,
    variant: str,
) -> TrainedModel:
    """Train a model on one variant's training tokens; checkpoints go to the run folder."""
    model_config = ModelConfig(vocab_size=train_tokens.vocab_size, **model)
    lineage = lineage_of(train_tokens) | {
        "variant": variant,
        "tokens_variant": train_tokens.attrs["variant"],
        "package_version": backstory.__version__,
        "model_params_sha256": params_sha256(model),
    }
    trained = train(
        model_config, TrainConfig.from_dict(train_params), train_tokens, val_tokens, training_run,
        lineage=lineage,
    )
    meta = dict(trained.meta)
    meta["params_sha256"] = params_sha256({"model": model, "train": train_params})
    return dataclasses.replace(trained, meta=meta)


def evaluate(
    trained: TrainedModel, val_tokens: TokenStore, train_tokens: TokenStore, tokenizer: Tokenizer,
    evaluation: dict, *, variant: str,
) -> tuple[dict, list[dict], str]:
    """Validation metrics and samples in the variant's natural mode, with their lineage."""
    metrics, samples, report = evaluate_model(
        trained, val_tokens, train_tokens, tokenizer, EvaluateConfig.from_params(evaluation),
        variant=variant,
    )
    model_lineage = trained.meta.get("lineage", {})
    metrics = metrics | {
        "lineage": {
            "corpus_fingerprint": val_tokens.attrs["corpus_fingerprint"],
            "tokenizer_sha256": tokenizer.sha256,
            "model_package_version": model_lineage.get("package_version"),
            "package_version": backstory.__version__,
            "train_params_sha256": trained.meta.get("params_sha256"),
            "text_params_sha256": val_tokens.attrs.get("text_params_sha256"),
            "evaluate_params_sha256": params_sha256(evaluation),
        }
    }
    return metrics, samples, report
