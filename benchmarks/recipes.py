"""Train a recipe with the real loop and record validation bits per byte along the way.

A recipe is the ``model`` and ``train`` settings of the variant's small run, as
conf/base/parameters_runs.yml merges them, plus overrides. At every ``eval_every``
steps the loop's ``on_eval`` hook scores the model with ``evaluate_loss`` exactly as
the pipeline's evaluate node does, so the curve is in the unit the published metrics
use. The time that scoring takes is kept out of the recorded training time.
"""

from __future__ import annotations

import contextlib
import io
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from corpus import Stores, lm_block

from backstory.evaluation.metrics import evaluate_loss
from backstory.lm.model import ModelConfig, Transformer
from backstory.lm.training.config import TrainConfig
from backstory.lm.training.job import TrainJob
from backstory.lm.training.launch import Rank
from backstory.lm.training.loop import Session

# The fast recipe, tuned on forward seed 1337 (docs/benchmarks.md has the sweep): Muon
# on the blocks' matrices, AdamW at a 5x higher lr on the embedding and the gains, the
# residual outputs zero-initialised, 60% of the baseline's 300 steps of 16 windows (same
# schedule shape).
FAST: dict[str, Any] = {
    "optimizer": "muon", "muon_lr": 0.05, "lr": 0.01, "model.zero_init_out": True,
    "max_steps": 180, "batch_size": 16,
}


@dataclass(frozen=True)
class Point:
    step: int
    tokens: int
    seconds: float  # training wall time up to this step, scoring excluded
    val_bpb: float
    cpu_seconds: float = 0.0  # the process's CPU time (user + system), scoring excluded


def cpu_time() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def settings(variant: str, overrides: dict[str, Any] | None = None
             ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model, train) settings: the variant's conf/base blocks with ``overrides`` applied.

    An override key names a train setting, or a model setting as ``model.<key>``.
    """
    block = lm_block(variant)
    model, train = dict(block["model"]), dict(block["train"])
    for key, value in (overrides or {}).items():
        if key.startswith("model."):
            model[key.removeprefix("model.")] = value
        elif key in train:
            train[key] = value
        else:
            TrainConfig.from_params({**train, key: value})  # names the unknown key
            train[key] = value
    return model, train


def train_curve(stores: Stores, variant: str, overrides: dict[str, Any], *, run_dir: Path,
                eval_every: int, seed: int, device: str = "cpu") -> list[Point]:
    """Train one recipe from scratch; its val bpb every ``eval_every`` steps."""
    model, train = settings(variant, overrides)
    evaluate = lm_block(variant)["evaluate"]
    train.update(seed=seed, eval_interval=eval_every, eval_batches=1, resume=False,
                 checkpoint_interval=train["max_steps"], device=device)
    config = TrainConfig.from_params(train)
    model_config = ModelConfig(vocab_size=stores.train.vocab_size, **model)
    job = TrainJob(model_config, config, stores.train, stores.val, run_dir, lineage={})
    tokens_per_step = config.batch_size * config.grad_accum * model_config.max_seq_len
    points: list[Point] = []
    scoring = scoring_cpu = 0.0
    start, start_cpu = time.perf_counter(), cpu_time()

    def score(step: int, net: Transformer) -> None:
        nonlocal scoring, scoring_cpu
        began, began_cpu = time.perf_counter(), cpu_time()
        with contextlib.redirect_stderr(io.StringIO()):  # no progress bars between curves
            metrics = evaluate_loss(net, stores.val, seq_len=model_config.max_seq_len,
                                    batch_size=int(evaluate["batch_size"]),
                                    # the evaluation stories: the first n_stories documents
                                    max_tokens=int(stores.val.doc_offsets[
                                        min(int(evaluate["n_stories"]), stores.val.n_docs)]),
                                    token_order=config.token_order)
        points.append(Point(step, step * tokens_per_step, began - start - scoring,
                            float(metrics["val_bpb"]), began_cpu - start_cpu - scoring_cpu))
        scoring += time.perf_counter() - began
        scoring_cpu += cpu_time() - began_cpu

    session = Session.start(job, Rank(), torch.device(device))
    session.fit(progress=False, on_eval=score)
    return points


def tokens_to_reach(points: list[Point], target: float, attr: str = "tokens") -> float | None:
    """First tokens (or seconds) at which the curve reaches ``target``, linearly interpolated
    between the two evaluations around the crossing; None if it never does."""
    previous = None
    for point in points:
        if point.val_bpb <= target:
            if previous is None:
                return float(getattr(point, attr))
            x0, x1 = getattr(previous, attr), getattr(point, attr)
            y0, y1 = previous.val_bpb, point.val_bpb
            return float(x0 + (x1 - x0) * (y0 - target) / (y0 - y1))
        previous = point
    return None


def converged_at(points: list[Point], tolerance: float = 0.01) -> Point | None:
    """The first evaluation whose bpb the run's continuation to twice its tokens lowered
    by less than ``tolerance`` (relative): issue 18's "doubling the training tokens moves
    validation bpb by < 1%", read off one curve (the bpb at twice the tokens interpolated
    between evaluations); None while no doubling inside the curve passes. Kept simple: one
    run's own curve, so the point's learning rate is wherever that run's schedule was."""
    for point in points:
        doubled = point.tokens * 2
        later = [p for p in points if p.tokens >= doubled]
        if not later or point.tokens == 0:
            return None
        after = later[0]
        before = max((p for p in points if p.tokens < doubled), key=lambda p: p.tokens)
        share = (doubled - before.tokens) / (after.tokens - before.tokens)
        bpb_doubled = before.val_bpb + share * (after.val_bpb - before.val_bpb)
        if point.val_bpb - bpb_doubled < tolerance * point.val_bpb:
            return point
    return None
