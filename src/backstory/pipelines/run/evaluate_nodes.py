"""Evaluate node: one run's validation metrics and samples, with their lineage."""

from __future__ import annotations

import backstory
from backstory import params
from backstory.data.tokenizer import Tokenizer
from backstory.data.tokens import TokenStore
from backstory.evaluation.evaluate import EvaluateConfig, evaluate_model
from backstory.lm.checkpoint import TrainedModel


def evaluate(
    trained: TrainedModel, val_tokens: TokenStore, train_tokens: TokenStore, tokenizer: Tokenizer,
    evaluation: dict, *, run: dict,
) -> tuple[dict, list[dict], str]:
    """Validation metrics and samples in the run's variant's natural mode."""
    metrics, samples, report = evaluate_model(
        trained, val_tokens, train_tokens, tokenizer, EvaluateConfig.from_params(evaluation),
        variant=run["variant"],
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
    return metrics, samples, report
