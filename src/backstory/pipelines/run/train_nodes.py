"""Train nodes: one run's model from its variant's token stores, from scratch or by
fine-tuning another run's model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import backstory
from backstory import params, variants
from backstory.core.errors import InputError
from backstory.data.token_store import TokenStore
from backstory.evaluation.curve import EVAL_CURVE, EvalCurve, write_rows
from backstory.lm.checkpoint import TrainedModel
from backstory.lm.finetune import FinetuneConfig, InitialModel
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
    finetune: dict | None = None,
    init_model: TrainedModel | None = None,
    *,
    run: dict,
    init_run: str | None = None,
) -> TrainedModel:
    """Train run ``run`` (its identity: run, variant, preset, seed, context) on its tokens,
    from scratch or, given ``finetune`` settings, from ``init_model``, the model of run
    ``init_run``.

    Checkpoints go to the run folder, DVCLive's curves, parameters and summary to the
    ``live`` folder; the model records what it was made from. A fine-tuned run's lineage
    records the initial model (run, weights sha256, fine-tuning settings), so a retrained
    initial model makes it start afresh rather than resume.
    At each evaluation step the first ``curve_stories`` validation stories are scored
    (``evaluation.curve``; 0: none), with ``eval_batch_size`` windows per batch.
    """
    settings = {"model": model, "train": train_params}
    init = None
    if init_model is not None:
        recorded = (init_model.meta.get("lineage") or {}).get("tokenizer_sha256")
        if recorded != train_tokens.attrs.get("tokenizer_sha256"):
            raise InputError(
                f"run {run['run']}: the model of run {init_run} was trained with tokenizer "
                f"sha256 {recorded}, but {train_tokens.path} was encoded with "
                f"{train_tokens.attrs.get('tokenizer_sha256')}; retrain {init_run} on this "
                "tokenizer"
            )
        init = InitialModel(init_run, init_model, FinetuneConfig.from_params(finetune))
        settings["finetune"] = finetune
    spec = variants.get(run["variant"])
    config = TrainConfig.from_params(settings["train"])
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
        "model_params_sha256": params.sha256(settings["model"]),
    }
    on_eval = None
    curve = Path(training_run) / EVAL_CURVE
    if curve_stories > 0:
        on_eval = EvalCurve(str(val_tokens.path), curve_stories, eval_batch_size,
                            spec.token_order, str(curve), config.permutation_seed)
    elif not curve.exists():
        Path(training_run).mkdir(parents=True, exist_ok=True)
        write_rows(curve, [])  # no curve asked for: an empty one, so readers find it
    trained = train(
        ModelConfig(vocab_size=train_tokens.vocab_size, **settings["model"]), config,
        train_tokens, val_tokens, training_run, lineage=lineage, init=init, on_eval=on_eval,
        live_dir=live,
    )
    meta = dict(trained.meta)
    meta["params_sha256"] = params.sha256(settings)
    return dataclasses.replace(trained, meta=meta)
