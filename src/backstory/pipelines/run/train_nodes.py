"""Train node: one run's model from its variant's token stores."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import backstory
from backstory import params, variants
from backstory.data.tokens import TokenStore
from backstory.evaluation.curve import EVAL_CURVE, EvalCurve, write_rows
from backstory.lm.checkpoint import TrainedModel
from backstory.lm.model import ModelConfig
from backstory.lm.training import TrainConfig, train

# Store attributes that say what a model was trained on.
STORE_LINEAGE = ("layout", "tokenizer_sha256", "corpus_fingerprint", "vocab_size",
                 "text_params_sha256")


def train_model(
    train_tokens: TokenStore,
    val_tokens: TokenStore,
    training_run: Path,
    live: Path,
    model: dict,
    train_params: dict,
    curve_stories: int,
    eval_batch_size: int,
    *,
    run: dict,
) -> TrainedModel:
    """Train run ``run`` (its identity: run, variant, preset, seed, context) on its tokens.

    Checkpoints go to the run folder, DVCLive's curves, parameters and summary to the
    ``live`` folder; the model records what it was made from.
    At each evaluation step the first ``curve_stories`` validation stories are scored
    (``evaluation.curve``; 0: none), with ``eval_batch_size`` windows per batch.
    """
    spec = variants.get(run["variant"])
    config = TrainConfig.from_params(train_params)
    if config.token_order != spec.token_order:
        raise ValueError(f"run {run['run']}: train.token_order={config.token_order!r} but the "
                         f"{spec.name} variant reads in {spec.token_order!r} order")
    stores_variant = train_tokens.attrs["variant"]
    if stores_variant != spec.token_source:
        raise ValueError(f"run {run['run']}: {train_tokens.path} holds {stores_variant!r} "
                         f"documents; the {spec.name} variant trains on {spec.token_source!r}'s")
    lineage = {key: train_tokens.attrs.get(key) for key in STORE_LINEAGE} | {
        "variant": spec.name,
        "tokens_variant": stores_variant,
        "run": run,
        "package_version": backstory.__version__,
        "model_params_sha256": params.sha256(model),
    }
    on_eval = None
    curve = Path(training_run) / EVAL_CURVE
    if curve_stories > 0:
        on_eval = EvalCurve(str(val_tokens.path), curve_stories, eval_batch_size,
                            spec.token_order, str(curve))
    elif not curve.exists():
        Path(training_run).mkdir(parents=True, exist_ok=True)
        write_rows(curve, [])  # no curve asked for: an empty one, so readers find it
    trained = train(
        ModelConfig(vocab_size=train_tokens.vocab_size, **model), config, train_tokens,
        val_tokens, training_run, lineage=lineage, on_eval=on_eval, live_dir=live,
    )
    meta = dict(trained.meta)
    meta["params_sha256"] = params.sha256({"model": model, "train": train_params})
    return dataclasses.replace(trained, meta=meta)
