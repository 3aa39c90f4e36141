"""External-model nodes: import a declared model, and score it on the runs' stories."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

import backstory
from backstory import params
from backstory.core.errors import InputError, UserError
from backstory.data.corpus.story_table import iter_records
from backstory.data.token_store import TokenStore
from backstory.data.tokenizer import Tokenizer
from backstory.evaluation.evaluate import EvaluateConfig, evaluation_set
from backstory.evaluation.external import evaluate_external_model
from backstory.lm.checkpoint import TrainedModel
from backstory.lm.interop import load_external


def import_external(declaration: dict, *, name: str) -> tuple[TrainedModel, Tokenizer]:
    """The model ``external.<name>`` declares (its files, relative to the project root),
    with the tokenizer it reads text with."""
    source, tokenizer = Path(declaration["source"]), Path(declaration["tokenizer"])
    try:
        trained, tok = load_external(source, tokenizer=tokenizer, variant=declaration["variant"])
    except UserError:
        raise
    except (OSError, ValueError, RuntimeError) as err:  # missing, foreign or refused files
        raise InputError(f"external.{name} (source {source}, tokenizer {tokenizer}): {err}"
                         ) from err
    meta = dict(trained.meta) | {"external": name}
    return TrainedModel(trained.config, trained.state_dict, meta), tok


def evaluate_external(model: TrainedModel, val_tokens: TokenStore, runs_val_tokens: TokenStore,
                      stories, evaluation: dict, *, external: dict) -> tuple[dict, pd.DataFrame]:
    """Bits per byte of an imported model on the stories every run is scored on, and its
    per-story scores."""
    config = EvaluateConfig.from_params(evaluation)
    chosen = evaluation_set(iter_records(stories, "val"), config.n_stories)
    metrics, documents = evaluate_external_model(model, val_tokens, runs_val_tokens, config,
                                                 variant=external["variant"], stories=chosen)
    return metrics | {
        "run": external,
        "lineage": {
            "imported_from": model.meta.get("imported_from"),
            "corpus_fingerprint": val_tokens.attrs["corpus_fingerprint"],
            "tokenizer_sha256": val_tokens.attrs["tokenizer_sha256"],
            "runs_tokenizer_sha256": runs_val_tokens.attrs.get("tokenizer_sha256"),
            "text_params_sha256": val_tokens.attrs.get("text_params_sha256"),
            "evaluate_params_sha256": params.sha256(evaluation),
            "package_version": backstory.__version__,
        },
    }, documents
