"""Evaluate one trained run: validation metrics, the unigram baseline and samples.

The model is checked against the tokenizer and the stores it is evaluated on
(``backstory.evaluation.lineage``), scored in the token order of its variant, and
sampled in its variant's natural mode (``backstory.evaluation.sampling``).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from backstory import params, variants
from backstory.data.tokenizer import Tokenizer
from backstory.data.tokens import TokenStore
from backstory.evaluation.lineage import LineageError, check_lineage, model_variant
from backstory.evaluation.metrics import evaluate_loss, resolve_device, unigram_bpb
from backstory.evaluation.sampling import make_samples, samples_markdown, skipped_samples_reason
from backstory.lm.checkpoint import TrainedModel, build_model
from backstory.lm.generate import check_sampling
from backstory.lm.orders import permutation_seed_of

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateConfig:
    """A run's evaluation settings (defaults: ``run_defaults.evaluate`` in conf/base)."""

    batch_size: int  # windows per scoring batch
    max_tokens: int | None  # first whole validation documents up to this many tokens
    n_samples: int  # stories sampled for the samples report
    max_new_tokens: int  # per sample, capped by the model's context
    temperature: float
    top_k: int | None
    top_p: float | None
    seed: int  # sample i uses seed + i
    device: str  # auto: cuda when available, else cpu

    def __post_init__(self) -> None:
        for name in ("batch_size", "n_samples", "max_new_tokens"):
            params.check_int("evaluate", name, getattr(self, name), 1)
        params.check_int("evaluate", "max_tokens", self.max_tokens, 1, optional=True)
        params.check_int("evaluate", "seed", self.seed, 0)
        try:
            check_sampling(self.temperature, self.top_k, self.top_p)
        except ValueError as err:
            raise ValueError(f"evaluate: {err}") from err

    @classmethod
    def from_params(cls, settings: Any) -> EvaluateConfig:
        return params.build(cls, settings, "evaluate")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_trained_for(trained: TrainedModel, variant: str) -> str:
    """The token order ``variant`` reads in, after checking the model was trained for it."""
    spec = variants.get(variant)
    trained_for = model_variant(trained.meta)
    if trained_for not in (None, variant):
        raise LineageError(f"the model was trained for the {trained_for!r} variant, "
                           f"not {variant!r}")
    trained_order = trained.meta.get("train_config", {}).get("token_order", spec.token_order)
    if trained_order != spec.token_order:
        raise LineageError(f"the model was trained in {trained_order!r} token order, but the "
                           f"{variant} variant reads in {spec.token_order!r} order")
    return spec.token_order


def evaluate_model(
    trained: TrainedModel,
    val_store: TokenStore,
    train_store: TokenStore,
    tokenizer: Tokenizer,
    config: EvaluateConfig,
    *,
    variant: str,
) -> tuple[dict[str, Any], list[dict[str, Any]], str]:
    """Metrics, samples and the samples report of one trained model of ``variant``.

    Checks that model, tokenizer and stores share a tokenizer and that the model was
    trained for ``variant``; evaluates in the variant's token order.
    """
    check_lineage(trained.meta, tokenizer.sha256, val_store.attrs, store_path=str(val_store.path))
    token_order = check_trained_for(trained, variant)
    model = build_model(trained).to(resolve_device(config.device)).eval()
    seq_len = trained.config.max_seq_len
    metrics: dict[str, Any] = evaluate_loss(model, val_store, seq_len=seq_len,
                                            batch_size=config.batch_size,
                                            max_tokens=config.max_tokens,
                                            token_order=token_order,
                                            permutation_seed=permutation_seed_of(trained.meta))
    metrics["unigram_bpb"] = unigram_bpb(train_store, val_store)
    metrics.update(variant=variant, token_order=token_order, seq_len=seq_len,
                   n_params=model.num_parameters(), steps=trained.meta.get("steps"))
    logger.info("%s: val loss %.4f, perplexity %.2f, %.4f bits per byte (unigram %.4f)",
                variant, metrics["val_loss"], metrics["val_perplexity"], metrics["val_bpb"],
                metrics["unigram_bpb"])
    if not variants.get(variant).samples:
        reason = skipped_samples_reason(variant)
        metrics.update(samples_skipped=config.n_samples, samples_skipped_reason=reason)
        logger.warning("%s: %d samples skipped: %s", variant, config.n_samples, reason)
        return metrics, [], samples_markdown([], skipped=(config.n_samples, reason))
    samples = make_samples(model, tokenizer, val_store, variant=variant, n=config.n_samples,
                           max_new_tokens=config.max_new_tokens,
                           temperature=config.temperature, top_k=config.top_k,
                           top_p=config.top_p, seed=config.seed)
    return metrics, samples, samples_markdown(samples)
