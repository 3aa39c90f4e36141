"""Training settings (`TrainConfig`): validated when built, unknown keys refused."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

from backstory import params
from backstory.core.errors import SettingError
from backstory.lm.optim import OPTIMIZERS
from backstory.lm.orders import IMPLIED_PERMUTATION_SEED
from backstory.lm.schedules import check_schedule
from backstory.variants import TOKEN_ORDERS

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Keys that change neither the data nor the arithmetic of the updates: a run may be
# resumed under new values (e.g. on more GPUs, or logging more often).
RESUME_FREE_KEYS = frozenset(
    {"resume", "nproc_per_node", "compile", "log_interval", "eval_interval", "checkpoint_interval",
     "num_threads", "compile_mode"}
)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# Settings added after the first checkpoint format, with the value every run made before
# each of them existed used: a checkpoint or model meta without them is read with these
# (new runs take theirs from run_defaults.train in conf/base, like every other setting).
# They are written to dicts only when they differ from these, so a run that does not use
# them keeps its bytes and its older checkpoints stay resumable.
RUNS_BEFORE_SETTINGS = {"optimizer": "adamw", "muon_lr": 0.02, "muon_momentum": 0.95,
                  "muon_weight_decay": 0.0, "loss_chunk": 0, "num_threads": 0,
                  "compile_mode": "default", "permutation_seed": IMPLIED_PERMUTATION_SEED}


@dataclass
class TrainConfig:
    """Training settings; tokens per optimizer step = batch_size * grad_accum * seq_len.

    No field has a default: the project's defaults are ``run_defaults.train`` in
    conf/base/parameters_runs.yml, and a run's seed and token order come from the
    experiment (``backstory.experiment``).
    """

    batch_size: int  # sequences per micro-batch, summed over all processes
    grad_accum: int  # micro-batches per optimizer step
    max_steps: int  # optimizer steps in the whole run
    lr: float  # peak learning rate, reached at the end of warmup
    min_lr: float  # final learning rate (~ lr / 10, Chinchilla)
    schedule: str  # "cosine" (llama2.c) or "wsd" (warmup-stable-decay)
    warmup_steps: int  # linear warmup steps
    cooldown_fraction: float  # wsd only: share of max_steps spent decaying to min_lr
    weight_decay: float  # AdamW decay on matrices and embeddings only
    beta1: float
    beta2: float  # llama2.c; shorter memory than 0.999 suits small batches
    grad_clip: float  # max global gradient norm; 0 turns clipping off
    eval_interval: int  # steps between validation losses
    eval_batches: int  # micro-batches averaged per validation loss
    log_interval: int  # steps between training-curve rows (the only host syncs on GPU)
    checkpoint_interval: int  # steps between checkpoints
    seed: int  # model init and data order
    device: str  # auto: cuda, then mps, then cpu
    dtype: str  # auto: bfloat16 on cuda (float16 if unsupported), float32 elsewhere
    compile: str | bool  # auto: torch.compile on cuda only
    token_order: str  # "backward" reverses every window, "permuted" permutes its positions
    permutation_seed: int  # the one fixed permutation of a "permuted" run (backstory.lm.orders)
    nproc_per_node: int  # processes (GPUs) to launch; batch_size must divide by it
    resume: bool  # continue from run_dir's latest checkpoint when it matches
    optimizer: str  # adamw | muon (Muon on the blocks' matrices, AdamW on the rest)
    muon_lr: float  # Muon's peak lr; follows lr's schedule
    muon_momentum: float  # Muon's Nesterov momentum
    muon_weight_decay: float  # decoupled, times the Muon lr
    loss_chunk: int  # >0: fused output layer + loss, this many positions at a time
    num_threads: int  # CPU torch threads; 0: torch's choice
    compile_mode: str  # torch.compile mode when compiling

    def __post_init__(self) -> None:
        try:
            self._validate()
        except SettingError:
            raise
        except ValueError as err:  # the checks (and check_schedule) name the setting
            raise SettingError(str(err)) from err

    def _validate(self) -> None:
        for name in ("batch_size", "grad_accum", "max_steps", "eval_interval", "eval_batches",
                     "log_interval", "checkpoint_interval", "nproc_per_node"):
            params.check_int("train", name, getattr(self, name), 1)
        params.check_int("train", "warmup_steps", self.warmup_steps, 0)
        params.check_int("train", "seed", self.seed, 0)
        params.check_int("train", "permutation_seed", self.permutation_seed, 0)
        check_schedule(schedule=self.schedule, lr=self.lr, min_lr=self.min_lr,
                       warmup_steps=self.warmup_steps, max_steps=self.max_steps,
                       cooldown_fraction=self.cooldown_fraction)
        params.check_number("train", "weight_decay", self.weight_decay, 0.0)
        params.check_number("train", "muon_lr", self.muon_lr, 0.0, low_open=True)
        params.check_number("train", "muon_momentum", self.muon_momentum, 0.0, 1.0, high_open=True)
        params.check_number("train", "muon_weight_decay", self.muon_weight_decay, 0.0)
        params.check_int("train", "loss_chunk", self.loss_chunk, 0)
        params.check_int("train", "num_threads", self.num_threads, 0)
        params.check_number("train", "grad_clip", self.grad_clip, 0.0)
        for name in ("beta1", "beta2"):
            params.check_number("train", name, getattr(self, name), 0.0, 1.0, high_open=True)
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
    def from_params(cls, settings: Mapping[str, Any]) -> TrainConfig:
        """Build from parameters; unknown and missing keys are errors naming the key."""
        return params.build(cls, settings, "train")

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> TrainConfig:
        """Build from a dict ``to_dict`` wrote (a checkpoint, a worker's arguments): a later
        setting it leaves out has the value runs made before it used (``RUNS_BEFORE_SETTINGS``)."""
        return params.build(cls, {**RUNS_BEFORE_SETTINGS, **record}, "train")

    def to_dict(self) -> dict[str, Any]:
        """The settings; a later setting at its old value is left out (``RUNS_BEFORE_SETTINGS``)."""
        return {k: v for k, v in asdict(self).items()
                if not (k in RUNS_BEFORE_SETTINGS and v == RUNS_BEFORE_SETTINGS[k])}


def is_cuda_index(device: Any) -> bool:
    return isinstance(device, str) and device.startswith("cuda:") and device[5:].isdigit()
