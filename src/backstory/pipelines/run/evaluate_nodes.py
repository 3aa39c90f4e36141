"""Evaluate node: one run's validation metrics, per-story bits and samples, with lineage."""

from __future__ import annotations

import pandas as pd

import backstory
from backstory import params
from backstory.data.corpus.story_table import iter_records
from backstory.data.token_store import TokenStore
from backstory.data.tokenizer import Tokenizer
from backstory.evaluation.evaluate import EvaluateConfig, evaluate_model, evaluation_set
from backstory.lm.checkpoint import TrainedModel


def evaluate(
    trained: TrainedModel, val_tokens: TokenStore, train_tokens: TokenStore, tokenizer: Tokenizer,
    stories, evaluation: dict, *, run: dict,
) -> tuple[dict, pd.DataFrame, list[dict], str]:
    """Metrics, per-story scores and samples in the run's variant's natural mode.

    Every run is scored on the same validation stories: the first ``evaluate.n_stories``
    of the story table's validation split.
    """
    config = EvaluateConfig.from_params(evaluation)
    chosen = evaluation_set(iter_records(stories, "val"), config.n_stories)
    metrics, documents, samples, report = evaluate_model(
        trained, val_tokens, train_tokens, tokenizer, config, variant=run["variant"],
        stories=chosen,
    )
    model_lineage = trained.meta.get("lineage", {})
    metrics = metrics | {
        "run": run,
        "lineage": {
            "corpus_fingerprint": val_tokens.attrs["corpus_fingerprint"],
            "tokenizer_sha256": tokenizer.sha256,
            "model_package_version": model_lineage.get("package_version"),
            "package_version": backstory.__version__,
            "train_params_sha256": trained.meta.get("params_sha256"),
            "text_params_sha256": val_tokens.attrs.get("text_params_sha256"),
            "evaluate_params_sha256": params.sha256(evaluation),
        },
    }
    return metrics, documents, samples, report
