"""Training settings (`TrainConfig`): validated when built, unknown keys refused."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from backstory.lm.optim import OPTIMIZERS
from backstory.lm.schedules import check_schedule

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TOKEN_ORDERS = ("forward", "backward")
# Keys that change neither the data nor the arithmetic of the updates: a run may be
# resumed under new values (e.g. on more GPUs, or logging more often).
RESUME_FREE_KEYS = frozenset(
    {"resume", "nproc_per_node", "compile", "log_interval", "eval_interval", "checkpoint_interval",
     "num_threads", "compile_mode"}
)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# Settings added after the first checkpoint format: written to dicts (checkpoints, model
# meta) only when they differ from these defaults, so a run that does not use them keeps
# its bytes and its checkpoints stay resumable.
LATER_DEFAULTS = {"optimizer": "adamw", "muon_lr": 0.02, "muon_momentum": 0.95,
                  "muon_weight_decay": 0.0, "loss_chunk": 0, "num_threads": 0,
                  "compile_mode": "default"}


@dataclass
class TrainConfig:
    """Training settings; tokens per optimizer step = batch_size * grad_accum * seq_len."""

    batch_size: int = 16  # sequences per micro-batch, summed over all processes
    grad_accum: int = 1  # micro-batches per optimizer step
    max_steps: int = 200  # optimizer steps in the whole run
    lr: float = 1e-3  # peak learning rate, reached at the end of warmup
    min_lr: float = 1e-4  # final learning rate (~ lr / 10, Chinchilla)
    schedule: str = "cosine"  # "cosine" (llama2.c) or "wsd" (warmup-stable-decay)
    warmup_steps: int = 20  # linear warmup steps
    cooldown_fraction: float = 0.2  # wsd only: share of max_steps spent decaying to min_lr
    weight_decay: float = 0.1  # AdamW decay on matrices and embeddings only
    beta1: float = 0.9
    beta2: float = 0.95  # llama2.c; shorter memory than 0.999 suits small batches
    grad_clip: float = 1.0  # max global gradient norm; 0 turns clipping off
    eval_interval: int = 50  # steps between validation losses
    eval_batches: int = 8  # micro-batches averaged per validation loss
    log_interval: int = 10  # steps between train_log rows (the only host syncs on GPU)
    checkpoint_interval: int = 50  # steps between checkpoints
    seed: int = 1337  # model init and data order
    device: str = "auto"  # auto: cuda, then mps, then cpu
    dtype: str = "auto"  # auto: bfloat16 on cuda (float16 if unsupported), float32 elsewhere
    compile: str | bool = "auto"  # auto: torch.compile on cuda only
    token_order: str = "forward"  # "backward" reverses every window (Arrows of Time)
    nproc_per_node: int = 1  # processes (GPUs) to launch; batch_size must divide by it
    resume: bool = True  # continue from run_dir's latest checkpoint when it matches
    optimizer: str = LATER_DEFAULTS["optimizer"]  # adamw | muon (Muon on hidden matrices)
    muon_lr: float = LATER_DEFAULTS["muon_lr"]  # Muon's peak lr; follows lr's schedule
    muon_momentum: float = LATER_DEFAULTS["muon_momentum"]  # Muon's Nesterov momentum
    muon_weight_decay: float = LATER_DEFAULTS["muon_weight_decay"]  # decoupled, x muon lr
    loss_chunk: int = LATER_DEFAULTS["loss_chunk"]  # >0: fused output+loss, rows at a time
    num_threads: int = LATER_DEFAULTS["num_threads"]  # CPU torch threads; 0: torch's choice
    compile_mode: str = LATER_DEFAULTS["compile_mode"]  # torch.compile mode when compiling

    def __post_init__(self) -> None:
        for name in ("batch_size", "grad_accum", "max_steps", "eval_interval", "eval_batches",
                     "log_interval", "checkpoint_interval", "nproc_per_node"):
            _require_int(name, getattr(self, name), 1)
        _require_int("warmup_steps", self.warmup_steps, 0)
        _require_int("seed", self.seed, 0)
        check_schedule(schedule=self.schedule, lr=self.lr, min_lr=self.min_lr,
                       warmup_steps=self.warmup_steps, max_steps=self.max_steps,
                       cooldown_fraction=self.cooldown_fraction)
        _require_float("weight_decay", self.weight_decay, 0.0, math.inf)
        _require_float("muon_lr", self.muon_lr, 0.0, math.inf)
        if self.muon_lr <= 0:
            raise ValueError(f"train.muon_lr={self.muon_lr!r} must be > 0")
        _require_float("muon_momentum", self.muon_momentum, 0.0, 1.0, high_open=True)
        _require_float("muon_weight_decay", self.muon_weight_decay, 0.0, math.inf)
        _require_int("loss_chunk", self.loss_chunk, 0)
        _require_int("num_threads", self.num_threads, 0)
        _require_float("grad_clip", self.grad_clip, 0.0, math.inf)
        for name in ("beta1", "beta2"):
            _require_float(name, getattr(self, name), 0.0, 1.0, high_open=True)
        self._check_choices()
        if self.batch_size % self.nproc_per_node:
            raise ValueError(
                f"train.batch_size={self.batch_size} must be divisible by "
                f"train.nproc_per_node={self.nproc_per_node}: each process takes an equal slice"
            )

    def _check_choices(self) -> None:
        if not (self.device in ("auto", "cpu", "cuda", "mps") or is_cuda_index(self.device)):
            raise ValueError(
                f"train.device={self.device!r} is unknown; use auto, cpu, cuda, cuda:N or mps"
            )
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"train.dtype={self.dtype!r} is unknown; use auto or one of "
                             f"{sorted(DTYPES)}")
        if self.compile not in ("auto", True, False) or isinstance(self.compile, int | float) \
                and not isinstance(self.compile, bool):
            raise ValueError(f"train.compile={self.compile!r} must be auto, true or false")
        if self.token_order not in TOKEN_ORDERS:
            raise ValueError(f"train.token_order={self.token_order!r} must be one of "
                             f"{TOKEN_ORDERS}")
        if not isinstance(self.resume, bool):
            raise ValueError(f"train.resume={self.resume!r} must be true or false")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"train.compile_mode={self.compile_mode!r} must be one of "
                             f"{COMPILE_MODES}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"train.optimizer={self.optimizer!r} must be one of {OPTIMIZERS}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Build from parameters; unknown keys are errors (a typo must not pass silently)."""
        if not isinstance(d, Mapping):
            raise ValueError(f"train parameters must be a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown train keys {unknown}; known keys: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """The settings; a later setting at its default is left out (``LATER_DEFAULTS``)."""
        return {k: v for k, v in asdict(self).items()
                if not (k in LATER_DEFAULTS and v == LATER_DEFAULTS[k])}


def _require_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"train.{name}={value!r} must be an integer >= {minimum}")


def _require_float(name: str, value: Any, low: float, high: float, *,
                   high_open: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and low <= value and (value < high if high_open else value <= high)
    if not ok:
        bracket = ")" if high_open else "]"
        raise ValueError(f"train.{name}={value!r} must be a number in [{low}, {high}{bracket}")


def is_cuda_index(device: Any) -> bool:
    return isinstance(device, str) and device.startswith("cuda:") and device[5:].isdigit()
