"""Evaluate one trained run: validation metrics, per-story bits, the unigram baseline
and samples.

Every run is evaluated on the same validation stories: the first ``evaluate.n_stories``
validation records of the story table, in table order (``evaluation_set``). Every
token export keeps table order, so document i of any variant's validation store is
the same story; the stores are checked against the stories' byte lengths. Each story
is scored once, on its own (``metrics.document_scores``), and the per-story bits are
persisted with the run, so the comparison reads them instead of scoring again.

The model is checked against the tokenizer and the stores it is evaluated on
(``backstory.evaluation.lineage``), scored in the token order of its variant, and
sampled in its variant's natural mode (``backstory.evaluation.sampling``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from backstory import params, variants
from backstory.core.errors import InputError
from backstory.data.documents import record_key
from backstory.data.token_store import TokenStore
from backstory.data.tokenizer import Tokenizer
from backstory.evaluation.lineage import LineageError, check_lineage, model_variant
from backstory.evaluation.metrics import LN2, document_scores, resolve_device, unigram_bpb
from backstory.evaluation.sampling import make_samples, samples_markdown, skipped_samples_reason
from backstory.lm import orders
from backstory.lm.checkpoint import TrainedModel, build_model
from backstory.lm.generate import SamplingConfig
from backstory.lm.machine import machine_facts

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateConfig:
    """A run's evaluation settings (defaults: ``run_defaults.evaluate`` in conf/base)."""

    batch_size: int  # windows per scoring batch
    n_stories: int  # the first n validation stories (table order), the same for every run
    curve_stories: int  # the first n of those, scored at each evaluation step of training
    n_samples: int  # stories sampled for the samples report
    max_new_tokens: int  # per sample, capped by the model's context
    temperature: float
    top_k: int | None
    top_p: float | None
    seed: int  # sample i uses seed + i
    device: str  # auto: cuda when available, else cpu

    def __post_init__(self) -> None:
        for name in ("batch_size", "n_stories", "n_samples", "max_new_tokens"):
            params.check_int("evaluate", name, getattr(self, name), 1)
        params.check_int("evaluate", "curve_stories", self.curve_stories, 0)
        if self.curve_stories > self.n_stories:
            raise ValueError(f"evaluate.curve_stories={self.curve_stories} must be at most "
                             f"evaluate.n_stories={self.n_stories}: the curve scores a prefix "
                             "of the evaluation stories")
        params.check_int("evaluate", "seed", self.seed, 0)
        try:
            SamplingConfig.of(asdict(self))
        except ValueError as err:
            raise ValueError(f"evaluate: {err}") from err

    @property
    def sampling(self) -> SamplingConfig:
        """How the run's samples are drawn (``n_samples`` of them, sample i with seed + i)."""
        return SamplingConfig.of(asdict(self))

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


# ------------------------------------------------------------------ the stories


@dataclass(frozen=True)
class EvaluationSet:
    """The validation stories every run is evaluated on: their ids (``shard:record``) and
    UTF-8 byte lengths, in table order, and a sha256 of ids and texts."""

    ids: tuple[str, ...]
    n_bytes: tuple[int, ...]
    sha256: str

    @property
    def n_stories(self) -> int:
        return len(self.ids)

    def identity(self) -> dict[str, Any]:
        """What metrics.json records: enough to tell two evaluation sets apart."""
        return {"split": "val", "selection": "first stories in story-table order",
                "n_stories": self.n_stories, "first": self.ids[0], "last": self.ids[-1],
                "sha256": self.sha256}


def evaluation_set(records: Iterable[Mapping[str, Any]], n_stories: int) -> EvaluationSet:
    """The first ``n_stories`` of the validation ``records`` (table order); fewer if the
    split holds fewer, with a warning."""
    ids, sizes = [], []
    digest = hashlib.sha256()
    for record in records:
        if len(ids) == n_stories:
            break
        story = str(record["story"])
        ids.append(record_key(dict(record)))
        sizes.append(len(story.encode("utf-8")))
        digest.update(json.dumps([ids[-1], story], ensure_ascii=False).encode("utf-8"))
    if not ids:
        raise InputError("the story table holds no validation stories to evaluate on")
    if len(ids) < n_stories:
        logger.warning("evaluate.n_stories=%d but the validation split holds %d stories; "
                       "evaluating on all of them", n_stories, len(ids))
    return EvaluationSet(tuple(ids), tuple(sizes), digest.hexdigest())


def check_store_holds(store: TokenStore, stories: EvaluationSet) -> None:
    """Raise InputError unless the store's first documents are ``stories``, in order."""
    n = stories.n_stories
    if store.n_docs < n or not np.array_equal(np.asarray(store.doc_bytes[:n], dtype=np.int64),
                                              np.asarray(stories.n_bytes, dtype=np.int64)):
        raise InputError(
            f"{store.path} does not begin with the {n} validation stories of the story table "
            f"(first {stories.ids[0]}, last {stories.ids[-1]}): their byte lengths differ; "
            "export the token stores again from the current story table"
        )


# ------------------------------------------------------------------ one run


def score_stories(model: Any, store: TokenStore, stories: EvaluationSet, *, token_order: str,
                  batch_size: int, permutation_seed: int | None = None) -> pd.DataFrame:
    """One row per evaluation story: its id, bytes and story tokens, and the model's bits
    of its story text, nats of every target and the number of targets."""
    n = stories.n_stories
    scores = document_scores(model, store, seq_len=model.config.max_seq_len,
                             batch_size=batch_size, token_order=token_order, docs=range(n),
                             permutation_seed=permutation_seed)
    spans = np.asarray(store.story_spans[:n])
    return pd.DataFrame({
        "doc": np.arange(n, dtype=np.int64), "story": list(stories.ids),
        "n_bytes": np.asarray(stories.n_bytes, dtype=np.int64),
        "story_tokens": (spans[:, 1] - spans[:, 0]).astype(np.int64),
        "bits": scores["bits"], "nats": scores["nats"], "targets": scores["targets"],
    })


class ScoreError(InputError):
    """A model's scores are not finite numbers."""


def summarize_scores(documents: pd.DataFrame) -> dict[str, float | int]:
    """Loss, perplexity and bits per byte of a run from its per-story scores.

    A story scored NaN or infinite is refused: pandas' sums skip NaN, which would score
    a diverged model (or one NaN on some stories) better than a sound one.
    """
    scores = documents[["nats", "bits"]].to_numpy(dtype=float)
    bad = ~np.isfinite(scores).all(axis=1)
    if bad.any():
        raise ScoreError(
            f"{int(bad.sum())} of {len(documents)} evaluated stories score NaN or infinite "
            f"(the first is story {int(np.argmax(bad))}): the model's outputs are not finite, "
            "so it has no loss to report. It most likely diverged in training (a learning "
            "rate too large); train it again with a lower train.lr")
    n_bytes = int(documents["n_bytes"].sum())
    if n_bytes == 0:
        raise ValueError("the evaluated stories hold no bytes")
    loss = float(documents["nats"].sum() / documents["targets"].sum())
    return {
        "val_loss": loss,
        "val_perplexity": math.exp(loss),
        "val_bpb": float(documents["bits"].sum() / n_bytes),
        "story_nats_per_token": float(documents["bits"].sum() * LN2
                                      / documents["story_tokens"].sum()),
        "n_tokens": int(documents["targets"].sum()),
        "n_story_tokens": int(documents["story_tokens"].sum()),
        "n_bytes": n_bytes,
        "n_docs": len(documents),
    }


def evaluate_model(
    trained: TrainedModel,
    val_store: TokenStore,
    train_store: TokenStore,
    tokenizer: Tokenizer,
    config: EvaluateConfig,
    *,
    variant: str,
    stories: EvaluationSet,
) -> tuple[dict[str, Any], pd.DataFrame, list[dict[str, Any]], str]:
    """Metrics, per-story scores, samples and the samples report of one trained model.

    Checks that model, tokenizer and stores share a tokenizer, that the model was
    trained for ``variant`` and that the store holds ``stories`` first; evaluates in the
    variant's token order. ``val_loss`` is nats per target token (instruction, BOS and
    EOS included), ``val_bpb`` bits per byte of the story text, both over ``stories``,
    each scored on its own.
    """
    check_lineage(trained.meta, tokenizer.sha256, val_store.attrs, store_path=str(val_store.path))
    token_order = check_trained_for(trained, variant)
    check_store_holds(val_store, stories)
    model = build_model(trained).to(resolve_device(config.device)).eval()
    documents = score_stories(model, val_store, stories, token_order=token_order,
                              batch_size=config.batch_size,
                              permutation_seed=orders.permutation_seed_of(trained.meta))
    metrics: dict[str, Any] = summarize_scores(documents)
    metrics["unigram_bpb"] = unigram_bpb(train_store, val_store, stories.n_stories)
    metrics.update(variant=variant, token_order=token_order, seq_len=model.config.max_seq_len,
                   n_params=model.num_parameters(), steps=trained.meta.get("steps"),
                   tokens_seen=trained.meta.get("tokens_seen"),
                   eval_stories=stories.identity(), machine=machine_facts())
    if "cooldowns" in trained.meta:  # a wsd run: the report's doubling test reads them
        metrics["cooldowns"] = trained.meta["cooldowns"]
    logger.info("%s: val loss %.4f, perplexity %.2f, %.4f bits per byte (unigram %.4f) on %d "
                "validation stories", variant, metrics["val_loss"], metrics["val_perplexity"],
                metrics["val_bpb"], metrics["unigram_bpb"], stories.n_stories)
    if not orders.get(variants.get(variant).token_order).writes:
        reason = skipped_samples_reason(variant)
        metrics.update(samples_skipped=config.n_samples, samples_skipped_reason=reason)
        logger.warning("%s: %d samples skipped: %s", variant, config.n_samples, reason)
        return metrics, documents, [], samples_markdown([], skipped=(config.n_samples, reason))
    samples = make_samples(model, tokenizer, val_store, variant=variant, n=config.n_samples,
                           sampling=config.sampling, seed=config.seed)
    return metrics, documents, samples, samples_markdown(samples)
