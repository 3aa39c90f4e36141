"""Train node: one run's model from its variant's token stores."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import backstory
from backstory import params, variants
from backstory.data.tokens import TokenStore
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
    model: dict,
    train_params: dict,
    *,
    run: dict,
) -> TrainedModel:
    """Train run ``run`` (its identity: run, variant, preset, seed, context) on its tokens.

    Checkpoints and logs go to the run folder; the model records what it was made from.
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
    trained = train(
        ModelConfig(vocab_size=train_tokens.vocab_size, **model), config, train_tokens,
        val_tokens, training_run, lineage=lineage,
    )
    meta = dict(trained.meta)
    meta["params_sha256"] = params.sha256({"model": model, "train": train_params})
    return dataclasses.replace(trained, meta=meta)
