"""The training loop: AdamW, LR schedules, mixed precision, exact resume, DDP.

Launch: ``train(model_config, TrainConfig(...), train_store, val_store, run_dir)``.
With ``nproc_per_node > 1`` it starts that many worker processes itself (torch's elastic
launcher, rendezvous on 127.0.0.1); under ``torchrun`` (RANK / WORLD_SIZE set) each
process calls ``train`` and runs as its rank.

Data order does not depend on the number of processes: micro-batch k of the run is
``train_store.random_windows(k, batch_size, seq_len, seed)``, a pure function, and each
rank takes its slice of its rows. The micro-batch counter is the sampler position saved
in checkpoints. The loop itself draws no random numbers (dropout 0, the default), so a
resumed run repeats the uninterrupted one exactly; with dropout > 0 each rank's RNG
(seeded seed + rank) is saved per rank and restored when the world size is unchanged.

Outputs in ``run_dir``: ``checkpoints/step_XXXXXXXX/`` (see ``backstory.lm.checkpoint``),
``train_log.csv`` (step, loss, lr) and ``val_log.csv`` (step, val_loss), which are
bit-identical between runs of the same settings on the same machine, and ``speed_log.csv``
(step, tokens_per_s, mfu, elapsed_s): the wall-clock figures, kept apart so that
everything else in ``run_dir`` is deterministic (DVC ignores it through ``.dvcignore``).
On resume, the time spent so far is read back from its last row at or before the step.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch.distributed.elastic.multiprocessing.errors import record
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from backstory.lm.checkpoint import (
    WEIGHTS_FILE,
    TrainedModel,
    capture_rng_state,
    checkpoints_dir,
    cpu_state_dict,
    discard_checkpoints_after,
    latest_checkpoint,
    load_checkpoint,
    read_state,
    remove_checkpoints,
    restore_rng_state,
    save_checkpoint,
)
from backstory.lm.model import ModelConfig, Transformer
from backstory.lm.schedules import check_schedule, lr_at
from backstory.data.tokens import TokenStore

logger = logging.getLogger(__name__)

TRAIN_LOG = "train_log.csv"
VAL_LOG = "val_log.csv"
SPEED_LOG = "speed_log.csv"
TRAIN_COLUMNS = ("step", "loss", "lr")
VAL_COLUMNS = ("step", "val_loss")
SPEED_COLUMNS = ("step", "tokens_per_s", "mfu", "elapsed_s")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TOKEN_ORDERS = ("forward", "backward")
# Keys that change neither the data nor the arithmetic of the updates: a run may be
# resumed under new values (e.g. on more GPUs, or logging more often).
RESUME_FREE_KEYS = frozenset(
    {"resume", "nproc_per_node", "compile", "log_interval", "eval_interval", "checkpoint_interval"}
)
# Dense bf16/fp16 tensor-core peaks (FLOP/s) by device-name fragment, most specific first.
PEAK_FLOPS = (
    ("H200", 989e12),
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("A100", 312e12),
)
# Store attributes that identify the data a run trained on (checked on resume).
_DATA_KEYS = ("variant", "layout", "vocab_size", "tokenizer_sha256", "corpus_fingerprint",
              "n_tokens", "n_docs")


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
        if not (self.device in ("auto", "cpu", "cuda", "mps") or _is_cuda_index(self.device)):
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
        return asdict(self)


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


def _is_cuda_index(device: Any) -> bool:
    return isinstance(device, str) and device.startswith("cuda:") and device[5:].isdigit()


# --- public entry point ----------------------------------------------------------------


def train(
    model_config: ModelConfig,
    config: TrainConfig,
    train_store: TokenStore,
    val_store: TokenStore,
    run_dir: Path,
    *,
    lineage: dict | None = None,
    progress: bool = True,
) -> TrainedModel:
    """Train (or resume, or return the finished run in ``run_dir``) and return the model."""
    run_dir = Path(run_dir)
    lineage = _json_normal(lineage or {}, "lineage")
    _check_inputs(model_config, config, train_store, val_store)
    job = _Job(model_config, config, train_store, val_store, run_dir, lineage)
    if _env_world_size() > 1:
        return _run_process(job, progress)
    finished = _finished_run(job)
    if finished is not None:
        return finished
    if config.nproc_per_node > 1:
        _launch_workers(job, progress)
        return _trained_from_checkpoint(job)
    return _run_process(job, progress)


@dataclass
class _Job:
    """Everything a process needs to train (picklable parts travel to workers as dicts)."""

    model_config: ModelConfig
    config: TrainConfig
    train_store: TokenStore
    val_store: TokenStore
    run_dir: Path
    lineage: dict

    def data_identity(self) -> dict:
        return {"train": _store_identity(self.train_store), "val": _store_identity(self.val_store)}


def _check_inputs(model_config: ModelConfig, config: TrainConfig, train_store: TokenStore,
                  val_store: TokenStore) -> None:
    for role, store in (("training", train_store), ("validation", val_store)):
        if int(store.vocab_size) > model_config.vocab_size:
            raise ValueError(
                f"{role} tokens {store.path} use a vocabulary of {store.vocab_size} ids but "
                f"model.vocab_size is {model_config.vocab_size}; set it to the store's"
            )
    if config.nproc_per_node > 1 and _env_world_size() == 1:
        _check_launchable(config)


def _check_launchable(config: TrainConfig) -> None:
    """Fail in the caller, not in n workers, when the processes cannot get their devices."""
    n = config.nproc_per_node
    device = _resolve_device(config.device, _Rank(0, n))
    _resolve_dtype(config.dtype, device)
    if device.type == "cuda" and torch.cuda.device_count() < n:
        raise ValueError(
            f"train.nproc_per_node={n} but only {torch.cuda.device_count()} CUDA device(s) "
            "are visible; lower it (one process per GPU)"
        )


def _store_identity(store: TokenStore) -> dict:
    attrs = getattr(store, "attrs", {}) or {}
    return _json_normal({k: attrs[k] for k in _DATA_KEYS if k in attrs}, f"{store.path} attrs")


def _json_normal(value: Any, what: str) -> Any:
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


# --- resume bookkeeping ------------------------------------------------------------------


def _check_same_run(job: _Job, state: dict, path: Path) -> None:
    """Raise ValueError if the checkpoint at ``path`` belongs to a different run."""
    differences = []
    if state.get("model_config") != _json_normal(job.model_config.to_dict(), "model config"):
        differences.append("model config")
    saved = state.get("train_config", {})
    now = job.config.to_dict()
    changed = sorted(k for k in now.keys() | saved.keys()
                     if k not in RESUME_FREE_KEYS and saved.get(k) != now.get(k))
    if changed:
        differences.append(f"train settings {changed}")
    if state.get("lineage") != job.lineage:
        differences.append("lineage")
    if state.get("data") != job.data_identity():
        differences.append("token stores")
    if differences:
        raise ValueError(
            f"{job.run_dir} holds checkpoint {path.name} of a different run ("
            f"{', '.join(differences)} differ). Delete {job.run_dir} or set "
            "train.resume=false to start over, or restore the settings to continue it."
        )


def _finished_run(job: _Job) -> TrainedModel | None:
    """The model of a complete matching run in ``run_dir``, or None."""
    if not job.config.resume:
        return None
    path = latest_checkpoint(job.run_dir)
    if path is None:
        return None
    state = read_state(path)
    _check_same_run(job, state, path)
    if int(state["step"]) < job.config.max_steps:
        return None
    logger.info("Run in %s already finished at step %d; loading it", job.run_dir, state["step"])
    return _trained_at(path, state)


def _trained_at(path: Path, state: dict) -> TrainedModel:
    return TrainedModel(
        config=ModelConfig.from_dict(state["model_config"]),
        state_dict=load_file(str(path / WEIGHTS_FILE), device="cpu"),
        meta=state["meta"],
    )


def _trained_from_checkpoint(job: _Job) -> TrainedModel:
    path = latest_checkpoint(job.run_dir)
    state = None if path is None else read_state(path)
    if state is None or int(state["step"]) != job.config.max_steps:
        raise RuntimeError(
            f"training workers exited without a final checkpoint in {job.run_dir} "
            f"(latest: {path})"
        )
    return _trained_at(path, state)


# --- processes -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rank:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_world_size() -> int:
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 1
    return int(os.environ["WORLD_SIZE"])


def _run_process(job: _Job, progress: bool) -> TrainedModel:
    """Train as this process's rank (rank 0 of 1 without a launcher)."""
    world = _env_world_size()
    rank_ = _Rank()
    if world > 1:
        rank_ = _Rank(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", 0)))
    device = _resolve_device(job.config.device, rank_)
    if rank_.distributed:
        rank_ = _join_group(rank_, device)
    try:
        if rank_.distributed:
            finished = _finished_run(job)
            if finished is not None:
                return finished
        session = _Session.start(job, rank_, device)
        trained = session.fit(progress)
        if rank_.distributed:
            dist.barrier()  # rank 0's final checkpoint is on disk for everyone
            return _trained_from_checkpoint(job)
        return trained
    finally:
        if rank_.owns_group:
            dist.destroy_process_group()


def _join_group(rank_: _Rank, device: torch.device) -> _Rank:
    if dist.is_initialized():
        return rank_
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    return _Rank(rank_.rank, rank_.world_size, rank_.local_rank, owns_group=True)


def _resolve_device(name: str, rank_: _Rank) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif torch.backends.mps.is_available() and not rank_.distributed:
            name = "mps"
        else:
            name = "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r} but CUDA is not available; use auto or cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("train.device='mps' but MPS is not available; use auto or cpu")
    if _is_cuda_index(name) and rank_.distributed:
        raise ValueError(f"train.device={name!r} pins one GPU, but each of the "
                         f"{rank_.world_size} processes needs its own; use cuda or auto")
    if name == "mps" and rank_.distributed:
        raise ValueError("train.device='mps' cannot run several processes; use nproc_per_node=1")
    if name == "cuda":
        return torch.device("cuda", rank_.local_rank)
    return torch.device(name)


def _resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name == "float16" and device.type != "cuda":
        raise ValueError(f"train.dtype='float16' needs CUDA (device is {device}); use bfloat16")
    return DTYPES[name]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch_workers(job: _Job, progress: bool) -> None:
    """Run ``nproc_per_node`` copies of ``_worker`` and wait for all of them."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    n = job.config.nproc_per_node
    launch = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=n,
        run_id=f"backstory-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{_free_port()}",
        max_restarts=0,  # a crash is reported, not retried: resume is the user's call
        monitor_interval=0.5,
        start_method="spawn",
    )
    logger.info("Launching %d training processes", n)
    elastic_launch(launch, _worker)(
        job.model_config.to_dict(), job.config.to_dict(), str(job.train_store.path),
        str(job.val_store.path), str(job.run_dir), job.lineage, progress,
    )


@record
def _worker(model_config: dict, train_config: dict, train_path: str, val_path: str,
            run_dir: str, lineage: dict, progress: bool) -> None:
    """One launched process: reopen the stores and train as the rank the launcher set."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if "OMP_NUM_THREADS" not in os.environ:
        # Processes share the cores; oversubscribed threads slow every one of them.
        local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    train(ModelConfig.from_dict(model_config), TrainConfig.from_dict(train_config),
          TokenStore(Path(train_path)), TokenStore(Path(val_path)), Path(run_dir),
          lineage=lineage, progress=progress)


# --- one process's training session -----------------------------------------------------


@dataclass
class _Session:
    """The model, optimizer and position of one process's training run."""

    job: _Job
    rank: _Rank
    device: torch.device
    dtype: torch.dtype
    raw_model: Transformer
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    model: torch.nn.Module = field(init=False)  # what the step calls: compiled, DDP-wrapped
    eval_model: torch.nn.Module = field(init=False)  # compiled, never DDP-wrapped
    step: int = 0  # optimizer steps done
    micro_batch: int = 0  # sampler position: micro-batches consumed, all ranks together
    elapsed_before: float = 0.0  # seconds spent by earlier processes (rank 0 only)
    clock_start: float = 0.0
    lr: float = 0.0
    train_loss: float | None = None
    val_loss: float | None = None
    last_meta: dict = field(default_factory=dict)
    loader: _Prefetcher = field(init=False)

    @classmethod
    def start(cls, job: _Job, rank_: _Rank, device: torch.device) -> _Session:
        """Build model and optimizer, restore the latest checkpoint if resuming, wrap."""
        cfg = job.config
        if cfg.batch_size % rank_.world_size:
            raise ValueError(
                f"train.batch_size={cfg.batch_size} must be divisible by the "
                f"{rank_.world_size} training processes"
            )
        dtype = _resolve_dtype(cfg.dtype, device)
        if device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 matmuls for fp32 leftovers
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        raw = Transformer(job.model_config).to(device)
        optimizer = raw.configure_optimizer(lr=cfg.lr, weight_decay=cfg.weight_decay,
                                            betas=(cfg.beta1, cfg.beta2),
                                            device_type=device.type)
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        _seed_everything(cfg.seed + rank_.rank)
        session = cls(job, rank_, device, dtype, raw, optimizer, scaler)
        session._prepare_run_dir()
        session._wrap(_resolve_compile(cfg.compile, device))
        session._log_start()
        return session

    # -- setup

    def _prepare_run_dir(self) -> None:
        job = self.job
        path = latest_checkpoint(job.run_dir) if job.config.resume else None
        if path is not None:
            self._resume(path)
        if self.rank.main:
            job.run_dir.mkdir(parents=True, exist_ok=True)
            if not job.config.resume and checkpoints_dir(job.run_dir).exists():
                logger.warning("train.resume=false: deleting the checkpoints in %s",
                               job.run_dir)
                remove_checkpoints(job.run_dir)
            discard_checkpoints_after(job.run_dir, self.step)
            # Read before the restart, which drops the rows after the resumed step.
            self.elapsed_before = _elapsed_at(job.run_dir / SPEED_LOG, self.step)
            _start_log(job.run_dir / TRAIN_LOG, TRAIN_COLUMNS, self.step)
            _start_log(job.run_dir / VAL_LOG, VAL_COLUMNS, self.step)
            _start_log(job.run_dir / SPEED_LOG, SPEED_COLUMNS, self.step)
        if self.rank.distributed:
            dist.barrier()

    def _resume(self, path: Path) -> None:
        state = read_state(path)
        _check_same_run(self.job, state, path)
        checkpoint = load_checkpoint(path)
        self.raw_model.load_state_dict(checkpoint.model_state, strict=True)
        self.optimizer.load_state_dict(checkpoint.optimizer_state)
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.micro_batch = int(state["micro_batch"])
        self.train_loss, self.val_loss = state.get("train_loss"), state.get("val_loss")
        self._restore_rng(state["rng"])
        logger.info("Resumed %s from %s (step %d, micro-batch %d)", self.job.run_dir, path.name,
                    self.step, self.micro_batch)

    def _restore_rng(self, saved: list[dict]) -> None:
        if len(saved) == self.rank.world_size:
            restore_rng_state(saved[self.rank.rank])
            return
        # Another world size: the loop draws no random numbers unless dropout > 0, so
        # only a dropout run loses exactness here.
        logger.warning("Checkpoint has RNG states of %d processes, this run has %d: reseeding",
                       len(saved), self.rank.world_size)
        seq = np.random.SeedSequence([self.job.config.seed, self.rank.rank, self.step])
        _seed_everything(int(seq.generate_state(1)[0]))

    def _wrap(self, compile_model: bool) -> None:
        model: torch.nn.Module = self.raw_model
        if compile_model:
            model = torch.compile(model)
        self.eval_model = model
        if self.rank.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=ids)
        self.model = model

    @property
    def tokens_per_step(self) -> int:
        cfg = self.job.config
        return cfg.batch_size * cfg.grad_accum * self.job.model_config.max_seq_len

    def _log_start(self) -> None:
        cfg = self.job.config
        logger.info(
            "Training %s parameters on %s (%s, %d process(es)); %d tokens per step = "
            "batch %d (%d per process) x seq %d x accum %d; run dir %s",
            f"{self.raw_model.num_parameters():,}", self.device, _dtype_name(self.dtype),
            self.rank.world_size, self.tokens_per_step, cfg.batch_size,
            cfg.batch_size // self.rank.world_size, self.job.model_config.max_seq_len,
            cfg.grad_accum, self.job.run_dir,
        )

    # -- the loop

    def fit(self, progress: bool) -> TrainedModel:
        """Train from the current step to max_steps; return the final model."""
        cfg = self.job.config
        self.clock_start = time.perf_counter()
        meter = _Meter(self.step)
        bar = tqdm(total=cfg.max_steps, initial=self.step, unit="step", desc="train",
                   disable=not (progress and self.rank.main))
        self.model.train()
        # On CPU a reader thread would only take cores from the model's own threads.
        self.loader = _Prefetcher(partial(self._host_batch, self.job.train_store),
                                  background=self.device.type != "cpu")
        try:
            while self.step < cfg.max_steps:
                loss = self._train_step()
                self.step += 1
                bar.update(1)
                if self._due(cfg.log_interval):
                    self._log_train(loss, meter, bar)
                if self._due(cfg.eval_interval):
                    self._log_val()
                    meter.restart(self.step)  # keep eval time out of tokens/s
                if self._due(cfg.checkpoint_interval):
                    self._checkpoint()
                    meter.restart(self.step)
        finally:
            self.loader.close()
            bar.close()
        self._log_end()
        return TrainedModel(self.job.model_config, cpu_state_dict(self.raw_model),
                            self.last_meta)

    def _due(self, interval: int) -> bool:
        return self.step % interval == 0 or self.step == self.job.config.max_steps

    def _train_step(self) -> torch.Tensor:
        """One optimizer step over grad_accum micro-batches; the mean loss, on device."""
        cfg = self.job.config
        self.lr = lr_at(self.step, schedule=cfg.schedule, lr=cfg.lr, min_lr=cfg.min_lr,
                        warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps,
                        cooldown_fraction=cfg.cooldown_fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        total = torch.zeros((), device=self.device)
        for i in range(cfg.grad_accum):
            inputs, targets = _split(self.loader.get(self.micro_batch), self.device)
            # DDP all-reduces gradients only on the last micro-step of the step.
            with self._sync(i == cfg.grad_accum - 1):
                with self._autocast():
                    _, loss = self.model(inputs, targets)
                loss = loss / cfg.grad_accum
                self.scaler.scale(loss).backward()
            total += loss.detach()
            self.micro_batch += 1
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return total

    def _batch(self, store: TokenStore, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's rows of global micro-batch ``index``: (inputs, targets) on device."""
        return _split(self._host_batch(store, index), self.device)

    def _host_batch(self, store: TokenStore, index: int) -> torch.Tensor:
        """This rank's rows of global micro-batch ``index`` in host memory (pinned on CUDA)."""
        cfg = self.job.config
        windows = store.random_windows(batch_index=index, batch_size=cfg.batch_size,
                                       seq_len=self.job.model_config.max_seq_len, seed=cfg.seed)
        per_rank = cfg.batch_size // self.rank.world_size
        rows = windows[self.rank.rank * per_rank:(self.rank.rank + 1) * per_rank]
        return _host_tensor(rows, cfg.token_order, pin=self.device.type == "cuda")

    def _sync(self, last_micro_step: bool) -> contextlib.AbstractContextManager:
        if isinstance(self.model, DistributedDataParallel) and not last_micro_step:
            return self.model.no_sync()
        return contextlib.nullcontext()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    # -- logs, evaluation, checkpoints

    def _log_train(self, loss: torch.Tensor, meter: _Meter, bar: tqdm) -> None:
        if self.rank.distributed:
            dist.all_reduce(loss)
            loss /= self.rank.world_size
        self.train_loss = loss.item()  # the host sync of this step, on log steps only
        if not math.isfinite(self.train_loss):
            logger.warning("Training loss is %s at step %d", self.train_loss, self.step)
        tokens_per_s = meter.rate(self.step, self.tokens_per_step)
        mfu = self._mfu(tokens_per_s)
        bar.set_postfix(loss=f"{self.train_loss:.4f}", tok_s=f"{tokens_per_s:,.0f}")
        if self.rank.main:
            run_dir = self.job.run_dir
            _append_row(run_dir / TRAIN_LOG,
                        [self.step, f"{self.train_loss:.6f}", f"{self.lr:.6e}"])
            _append_row(run_dir / SPEED_LOG, [
                self.step, f"{tokens_per_s:.1f}", "" if mfu is None else f"{mfu:.4f}",
                f"{self._elapsed():.3f}",
            ])

    def _mfu(self, tokens_per_s: float) -> float | None:
        peak = _peak_flops(self.device, self.dtype)
        if peak is None:
            return None
        flops = self.raw_model.flops_per_token(self.job.model_config.max_seq_len)
        return flops * tokens_per_s / (peak * self.rank.world_size)

    def _log_val(self) -> None:
        self.val_loss = self._evaluate()
        if self.rank.main:
            _append_row(self.job.run_dir / VAL_LOG, [self.step, f"{self.val_loss:.6f}"])

    @torch.no_grad()
    def _evaluate(self) -> float:
        """Mean loss over the same eval_batches validation micro-batches every time."""
        cfg = self.job.config
        self.eval_model.eval()
        total = torch.zeros((), device=self.device)
        for index in range(cfg.eval_batches):
            inputs, targets = self._batch(self.job.val_store, index)
            with self._autocast():
                _, loss = self.eval_model(inputs, targets)
            total += loss.float()
        if self.rank.distributed:
            dist.all_reduce(total)  # equal rows per rank: the mean of means is the mean
            total /= self.rank.world_size
        self.eval_model.train()
        return total.item() / cfg.eval_batches

    def _checkpoint(self) -> None:
        """Rank 0 writes the checkpoint; every rank contributes its RNG state."""
        rng_states = [capture_rng_state()]
        if self.rank.distributed:
            gathered: list[Any] = [None] * self.rank.world_size
            dist.all_gather_object(gathered, rng_states[0])
            rng_states = gathered
        self.last_meta = self._meta()
        if self.rank.main:
            save_checkpoint(self.job.run_dir, step=self.step,
                            model_state=cpu_state_dict(self.raw_model),
                            optimizer_state=self.optimizer.state_dict(),
                            state=self._state(rng_states))
        if self.rank.distributed:
            dist.barrier()

    def _elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.clock_start

    def _meta(self) -> dict[str, Any]:
        return {
            "steps": self.step,
            "tokens_seen": self.step * self.tokens_per_step,
            "train_loss": self.train_loss,
            "val_loss": self.val_loss,
            "train_config": self.job.config.to_dict(),
            "lineage": self.job.lineage,
            "data": self.job.data_identity(),
            "device": _device_name(self.device),
            "dtype": _dtype_name(self.dtype),
            "world_size": self.rank.world_size,
            "n_params": self.raw_model.num_parameters(),
        }

    def _state(self, rng_states: list[dict]) -> dict[str, Any]:
        return {
            "format": "backstory-checkpoint",
            "format_version": 1,
            "micro_batch": self.micro_batch,
            "model_config": _json_normal(self.job.model_config.to_dict(), "model config"),
            "train_config": self.job.config.to_dict(),
            "lineage": self.job.lineage,
            "data": self.job.data_identity(),
            "rng": rng_states,
            "world_size": self.rank.world_size,
            "scaler": self.scaler.state_dict(),
            "train_loss": self.train_loss,
            "val_loss": self.val_loss,
            "meta": self.last_meta,
        }

    def _log_end(self) -> None:
        if self.rank.main:
            run_dir = self.job.run_dir
            logger.info(
                "Finished at step %d (train loss %s, val loss %s) in %.1f s; checkpoints in %s, "
                "logs %s, %s and %s", self.step, _fmt(self.train_loss), _fmt(self.val_loss),
                self._elapsed(), run_dir / "checkpoints", run_dir / TRAIN_LOG, run_dir / VAL_LOG,
                run_dir / SPEED_LOG,
            )


# --- small helpers -----------------------------------------------------------------------


class _Meter:
    """Tokens per second between two log steps."""

    def __init__(self, step: int) -> None:
        self.restart(step)

    def restart(self, step: int) -> None:
        self.start, self.step = time.perf_counter(), step

    def rate(self, step: int, tokens_per_step: int) -> float:
        now = time.perf_counter()
        rate = (step - self.step) * tokens_per_step / max(now - self.start, 1e-9)
        self.start, self.step = now, step
        return rate


class _Prefetcher:
    """Hands out training micro-batches by index; with ``background``, micro-batch k + 1
    is read on a worker thread while step k runs, so the accelerator never waits on the
    host's window gather. The batches are the same either way (pure functions of k).
    """

    def __init__(self, read: Callable[[int], torch.Tensor], *, background: bool) -> None:
        self._read = read
        self._pool = ThreadPoolExecutor(1, "backstory-batches") if background else None
        self._next: tuple[int, Future] | None = None

    def get(self, index: int) -> torch.Tensor:
        if self._pool is None:
            return self._read(index)
        if self._next is not None and self._next[0] == index:
            batch = self._next[1].result()
        else:
            batch = self._read(index)
        self._next = (index + 1, self._pool.submit(self._read, index + 1))
        return batch

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _host_tensor(rows: np.ndarray, token_order: str, *, pin: bool) -> torch.Tensor:
    """Windows (b, seq_len + 1) as an int64 tensor, reversed in time for ``backward``."""
    if token_order == "backward":
        rows = rows[:, ::-1]  # reverse in token space, before the input/target shift
    batch = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64))
    return batch.pin_memory() if pin else batch


def _split(batch: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Move windows to ``device`` and split them into inputs and next-token targets."""
    batch = batch.to(device, non_blocking=batch.is_pinned())
    return batch[:, :-1].contiguous(), batch[:, 1:].contiguous()  # (b, seq_len) each


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _resolve_compile(setting: str | bool, device: torch.device) -> bool:
    return device.type == "cuda" if setting == "auto" else bool(setting)


def _peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """Per-GPU dense half-precision peak, or None where MFU is not reported."""
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for fragment, peak in PEAK_FLOPS if fragment in name), None)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _start_log(path: Path, columns: tuple[str, ...], through_step: int) -> None:
    """(Re)start a CSV log keeping only rows up to ``through_step`` (0: header only)."""
    kept: list[list[str]] = []
    if through_step > 0 and path.exists():
        rows = list(_read_rows(path))
        if rows and tuple(rows[0]) == columns:
            kept = [row for row in rows[1:] if row and int(row[0]) <= through_step]
        else:
            logger.warning("%s does not have the columns %s; starting it afresh", path, columns)
    tmp = path.with_name(f"{path.name}.tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(kept)
    os.replace(tmp, path)


def _elapsed_at(path: Path, step: int) -> float:
    """Seconds spent up to ``step`` per the speed log's last row at or before it (0 if none).

    The speed log is machine-specific and not versioned, so a missing or unreadable one
    only loses the earlier time from the total that the final log line reports.
    """
    if step <= 0 or not path.exists():
        return 0.0
    rows = list(_read_rows(path))
    if not rows or tuple(rows[0]) != SPEED_COLUMNS:
        logger.warning("%s does not have the columns %s; counting time from 0", path,
                       SPEED_COLUMNS)
        return 0.0
    elapsed = 0.0
    for line, row in enumerate(rows[1:], start=2):
        try:
            row_step, row_elapsed = int(row[0]), float(row[SPEED_COLUMNS.index("elapsed_s")])
        except (IndexError, ValueError):
            logger.warning("%s line %d is not a speed row; ignoring it", path, line)
            continue
        if row_step <= step:
            elapsed = row_elapsed
    return elapsed


def _read_rows(path: Path) -> Iterator[list[str]]:
    with open(path, newline="") as handle:
        yield from csv.reader(handle)


def _append_row(path: Path, values: list[Any]) -> None:
    with open(path, "a", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerow(values)
