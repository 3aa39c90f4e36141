"""What one training job is: model, settings, data, run folder and lineage.

A checkpoint belongs to the same job when everything that changes the arithmetic of the
updates agrees (`check_same_run`); only then may it be resumed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from backstory.core.errors import InputError
from backstory.data.token_store import TokenStore
from backstory.lm.finetune import InitialModel
from backstory.lm.model import ModelConfig
from backstory.lm.schedules import stable_end
from backstory.lm.training.config import RESUME_FREE_KEYS, TrainConfig

# Store attributes that identify the data a run trained on (checked on resume).
DATA_KEYS = ("variant", "layout", "vocab_size", "tokenizer_sha256", "corpus_fingerprint",
              "n_tokens", "n_docs")
# What a wsd run does after its stable phase: its length and its cooldown. A checkpoint taken
# in the stable phase belongs to every such run whose stable phase reaches it
# (``same_rates_until``), so a longer run, or another cooldown, continues from it.
COOLDOWN_SHAPE = ("cooldown_fraction", "min_lr")  # lengths cooled down alike compare
COOLDOWN_KEYS = frozenset({"max_steps", *COOLDOWN_SHAPE})

@dataclass
class TrainJob:
    """Everything a process needs to train (picklable parts travel to workers as dicts)."""

    model_config: ModelConfig
    config: TrainConfig
    train_store: TokenStore
    val_store: TokenStore
    run_dir: Path
    lineage: dict  # with ``init`` (InitialModel.identity) when the run fine-tunes
    init: InitialModel | None = None  # the trained model the run starts from, if any

    def data_identity(self) -> dict:
        return {"train": store_identity(self.train_store), "val": store_identity(self.val_store)}


def store_identity(store: TokenStore) -> dict:
    attrs = getattr(store, "attrs", {}) or {}
    return json_normal({k: attrs[k] for k in DATA_KEYS if k in attrs}, f"{store.path} attrs")


def json_normal(value: Any, what: str) -> Any:
    """``value`` as JSON reads it back (tuples become lists, numpy scalars numbers)."""
    try:
        return json.loads(json.dumps(value, default=_json_default))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be JSON-serialisable: {err}") from err


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} {value!r} is not JSON-serialisable")


def run_differences(job: TrainJob, state: dict) -> list[str]:
    """What differs between ``job`` and the run a checkpoint's ``state`` belongs to.

    Only what changes the data or the arithmetic of the updates counts; an empty list
    means the checkpoint may be resumed.
    """
    differences = []
    if state.get("model_config") != json_normal(job.model_config.to_dict(), "model config"):
        differences.append("model config")
    saved = state.get("train_config", {})
    now = job.config.to_dict()
    changed = sorted(k for k in now.keys() | saved.keys()
                     if k not in RESUME_FREE_KEYS and saved.get(k) != now.get(k))
    if same_rates_until(saved, now, int(state.get("step", 0))):
        changed = [k for k in changed if k not in COOLDOWN_KEYS]
    if changed:
        differences.append(f"train settings {changed}")
    saved_lineage = dict(state.get("lineage") or {})
    now_lineage = dict(job.lineage)
    if saved_lineage.pop("init", None) != now_lineage.pop("init", None):
        differences.append("initial model")
    if saved_lineage != now_lineage:
        differences.append("lineage")
    if state.get("data") != job.data_identity():
        differences.append("token stores")
    return differences


def same_rates_until(saved: dict, now: dict, step: int) -> bool:
    """Whether two runs' settings gave every step before ``step`` the same learning rate
    when they differ at most in length and cooldown: both wsd, ``step`` in both stable
    phases (``min_lr`` is reached only in the cooldown)."""
    if saved.get("schedule") != "wsd" or now.get("schedule") != "wsd":
        return False
    try:
        ends = [stable_end(c["max_steps"], c["cooldown_fraction"]) for c in (saved, now)]
    except (KeyError, TypeError):
        return False
    return step <= min(ends)


def check_same_run(job: TrainJob, state: dict, path: Path) -> None:
    """Raise ValueError if the checkpoint at ``path`` belongs to a different run."""
    differences = run_differences(job, state)
    if differences:
        raise InputError(
            f"{job.run_dir} holds checkpoint {path.name} of a different run "
            f"({', '.join(differences)} differ)"
        )
