"""One process's training session: the model, the optimizer and the loop.

Data order does not depend on the number of processes: micro-batch k of the run is
``random_windows(train_store, k, batch_size, seq_len, seed)``, a pure function, and each
rank takes its slice of its rows. The micro-batch counter is the sampler position saved
in checkpoints. The loop itself draws no random numbers (dropout 0, the default), so a
resumed run repeats the uninterrupted one exactly; with dropout > 0 each rank's RNG
(seeded seed + rank) is saved per rank and restored when the world size is unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from backstory import params
from backstory.core.errors import UserError
from backstory.data.token_store import TokenStore
from backstory.lm.checkpoint import (
    TrainedModel,
    capture_rng_state,
    checkpoints_dir,
    cpu_state_dict,
    discard_checkpoints_after,
    keep_stable,
    load_checkpoint,
    read_state,
    remove_checkpoints,
    restore_rng_state,
    resumable_checkpoint,
    save_checkpoint,
)
from backstory.lm.families import LanguageModel
from backstory.lm.finetune import training_model
from backstory.lm.machine import machine_facts
from backstory.lm.optim import MuonAdamW, build_optimizer, scheduled_lr
from backstory.lm.orders import order_windows
from backstory.lm.schedules import check_schedule, lr_at, stable_end
from backstory.lm.training.host import choose_threads, cpu_threads, keep_freed_memory
from backstory.lm.training.job import TrainJob, check_same_run, json_normal
from backstory.lm.training.launch import Rank, resolve_dtype
from backstory.lm.training.logs import Meter, RunLogs

logger = logging.getLogger(__name__)

PEAK_FLOPS = (
    ("H200", 989e12),
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("A100", 312e12),
)


@dataclass
class Session:
    """The model, optimizer and position of one process's training run."""

    job: TrainJob
    rank: Rank
    device: torch.device
    dtype: torch.dtype
    raw_model: LanguageModel
    optimizer: torch.optim.Optimizer | MuonAdamW
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
    loader: Prefetcher = field(init=False)
    logs: RunLogs = field(init=False)

    @classmethod
    def start(cls, job: TrainJob, rank_: Rank, device: torch.device,
              live_dir: Path | None = None) -> Session:
        """Build model and optimizer, restore the latest checkpoint if resuming, wrap.

        DVCLive logs go to ``live_dir`` (default: ``live/`` in the run folder)."""
        cfg = job.config
        if cfg.batch_size % rank_.world_size:
            raise ValueError(
                f"train.batch_size={cfg.batch_size} must be divisible by the "
                f"{rank_.world_size} training processes"
            )
        dtype = resolve_dtype(cfg.dtype, device)
        if device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 matmuls for fp32 leftovers
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        raw = training_model(job.model_config, job.init).to(device)  # fresh, or fine-tuned
        optimizer = build_optimizer(raw, name=cfg.optimizer, lr=cfg.lr,
                                    weight_decay=cfg.weight_decay, betas=(cfg.beta1, cfg.beta2),
                                    device_type=device.type, muon_lr=cfg.muon_lr,
                                    muon_momentum=cfg.muon_momentum,
                                    muon_weight_decay=cfg.muon_weight_decay)
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        seed_everything(cfg.seed + rank_.rank)
        session = cls(job, rank_, device, dtype, raw, optimizer, scaler)
        session.logs = RunLogs(job.run_dir, live_dir, main=rank_.main)
        session._prepare_run_dir()
        session._wrap(_resolve_compile(cfg.compile, device))
        session._log_start()
        return session

    # -- setup

    def _prepare_run_dir(self) -> None:
        job = self.job
        # Damaged checkpoints are passed over; only rank 0 sets them aside and warns.
        path = resumable_checkpoint(job.run_dir, repair=self.rank.main) \
            if job.config.resume else None
        if path is not None:
            self._resume(path)
        if self.rank.main:
            job.run_dir.mkdir(parents=True, exist_ok=True)
            if not job.config.resume and checkpoints_dir(job.run_dir).exists():
                logger.warning("train.resume=false: deleting the checkpoints in %s",
                               job.run_dir)
                remove_checkpoints(job.run_dir)
            discard_checkpoints_after(job.run_dir, self.step)
            self.elapsed_before = self.logs.start(self.step, self._log_params())
        if self.rank.distributed:
            dist.barrier()

    def _resume(self, path: Path) -> None:
        state = read_state(path)
        check_same_run(self.job, state, path)
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
        seed_everything(int(seq.generate_state(1)[0]))

    def _wrap(self, compile_model: bool) -> None:
        model: torch.nn.Module = self.raw_model
        if compile_model:
            mode = self.job.config.compile_mode
            model = torch.compile(model, mode=None if mode == "default" else mode)
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
            f"{self.raw_model.num_parameters():,}", self.device, dtype_name(self.dtype),
            self.rank.world_size, self.tokens_per_step, cfg.batch_size,
            cfg.batch_size // self.rank.world_size, self.job.model_config.max_seq_len,
            cfg.grad_accum, self.job.run_dir,
        )

    # -- the loop

    def fit(self, progress: bool, *,
            on_eval: Callable[[int, LanguageModel], None] | None = None) -> TrainedModel:
        """Train from the current step to max_steps; return the final model.

        ``on_eval(step, model)``, when given, runs on the main process right after each
        validation loss (the report scores its validation stories there); its time is
        kept out of tokens/s but not out of the elapsed time.
        """
        if self.device.type != "cpu":
            return self._fit(progress, on_eval)
        keep_freed_memory()
        threads = choose_threads(self.job.config.num_threads, self.rank.world_size)
        if self.rank.main:
            logger.info("training on %d CPU thread(s) per process (train.num_threads=%d%s)",
                        threads, self.job.config.num_threads,
                        ": one per idle core" if self.job.config.num_threads == 0 else "")
        with cpu_threads(threads):
            return self._fit(progress, on_eval)

    def _fit(self, progress: bool,
             on_eval: Callable[[int, LanguageModel], None] | None) -> TrainedModel:
        cfg = self.job.config
        check_schedule(schedule=cfg.schedule, lr=cfg.lr, min_lr=cfg.min_lr,
                       warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps,
                       cooldown_fraction=cfg.cooldown_fraction)
        self.clock_start = time.perf_counter()
        meter = Meter(self.step)
        bar = tqdm(total=cfg.max_steps, initial=self.step, unit="step", desc="train",
                   disable=not (progress and self.rank.main))
        self.model.train()
        # On CPU a reader thread would only take cores from the model's own threads.
        self.loader = Prefetcher(partial(self._host_batch, self.job.train_store),
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
                    if on_eval is not None and self.rank.main:
                        on_eval(self.step, self.raw_model)
                    meter.restart(self.step)  # keep eval time out of tokens/s
                if self._due(cfg.checkpoint_interval) or self.step == self._stable_end:
                    self._checkpoint()
                    meter.restart(self.step)
        finally:
            self.loader.close()
            bar.close()
            self.logs.close()
        self._log_end()
        return TrainedModel(self.job.model_config, cpu_state_dict(self.raw_model),
                            self.last_meta)

    @property
    def _stable_end(self) -> int | None:
        """wsd: the step whose checkpoint is kept for a longer run (``keep_stable``)."""
        cfg = self.job.config
        return stable_end(cfg.max_steps, cfg.cooldown_fraction) if cfg.schedule == "wsd" else None

    def _due(self, interval: int) -> bool:
        return self.step % interval == 0 or self.step == self.job.config.max_steps

    def _train_step(self) -> torch.Tensor:
        """One optimizer step over grad_accum micro-batches; the mean loss, on device."""
        cfg = self.job.config
        # _fit checked the schedule once: no re-checks on the hot path.
        self.lr = lr_at(self.step, schedule=cfg.schedule, lr=cfg.lr, min_lr=cfg.min_lr,
                        warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps,
                        cooldown_fraction=cfg.cooldown_fraction, validate=False)
        for group in self.optimizer.param_groups:
            group["lr"] = scheduled_lr(group, self.lr)
        total = torch.zeros((), device=self.device)
        for i in range(cfg.grad_accum):
            inputs, targets = split_batch(self.loader.get(self.micro_batch), self.device)
            # DDP all-reduces gradients only on the last micro-step of the step.
            with self._sync(i == cfg.grad_accum - 1):
                with self._autocast():
                    _, loss = self.model(inputs, targets, loss_chunk=cfg.loss_chunk)
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
        return split_batch(self._host_batch(store, index), self.device)

    def _host_batch(self, store: TokenStore, index: int) -> torch.Tensor:
        """This rank's rows of global micro-batch ``index`` in host memory (pinned on CUDA)."""
        cfg = self.job.config
        windows = random_windows(store, batch_index=index, batch_size=cfg.batch_size,
                                 seq_len=self.job.model_config.max_seq_len, seed=cfg.seed)
        per_rank = cfg.batch_size // self.rank.world_size
        rows = windows[self.rank.rank * per_rank:(self.rank.rank + 1) * per_rank]
        return host_tensor(rows, cfg.token_order, pin=self.device.type == "cuda",
                           permutation_seed=cfg.permutation_seed)

    def _sync(self, last_micro_step: bool) -> contextlib.AbstractContextManager:
        if isinstance(self.model, DistributedDataParallel) and not last_micro_step:
            return self.model.no_sync()
        return contextlib.nullcontext()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    # -- logs, evaluation, checkpoints

    def _log_train(self, loss: torch.Tensor, meter: Meter, bar: tqdm) -> None:
        if self.rank.distributed:
            dist.all_reduce(loss)
            loss /= self.rank.world_size
        self.train_loss = loss.item()  # the host sync of this step, on log steps only
        self._check_finite("training loss", self.train_loss)
        tokens_per_s = meter.rate(self.step, self.tokens_per_step)
        mfu = self._mfu(tokens_per_s)
        bar.set_postfix(loss=f"{self.train_loss:.4f}", tok_s=f"{tokens_per_s:,.0f}")
        self.logs.train(self.step, self.train_loss, self.lr, tokens_per_s, mfu, self._elapsed())

    def _mfu(self, tokens_per_s: float) -> float | None:
        peak = _peak_flops(self.device, self.dtype)
        if peak is None:
            return None
        flops = self.raw_model.flops_per_token(self.job.model_config.max_seq_len)
        return flops * tokens_per_s / (peak * self.rank.world_size)

    def _check_finite(self, what: str, value: float) -> None:
        """Stop a diverged run: its model would be all NaN, and NaN never recovers."""
        if not math.isfinite(value):
            raise self._diverged(f"the {what} is {value}")

    def _diverged(self, what: str) -> DivergedError:
        cfg = self.job.config
        return DivergedError(
            f"training diverged: {what} at step {self.step} of "
            f"{self.job.run_dir}. The likely cause is a learning rate too large for this "
            f"model (train.lr={cfg.lr:g}, learning rate now {self.lr:g}): lower train.lr (or "
            f"raise train.warmup_steps, or set train.grad_clip) and run again. No model was "
            "saved as finished, and no checkpoint holds the diverged weights"
        )

    def _log_val(self) -> None:
        self.val_loss = self._evaluate()
        self._check_finite("validation loss", self.val_loss)
        self.logs.val(self.step, self.val_loss)

    @torch.no_grad()
    def _evaluate(self) -> float:
        """Mean loss over the same eval_batches validation micro-batches every time."""
        cfg = self.job.config
        self.eval_model.eval()
        total = torch.zeros((), device=self.device)
        for index in range(cfg.eval_batches):
            inputs, targets = self._batch(self.job.val_store, index)
            with self._autocast():
                _, loss = self.eval_model(inputs, targets, loss_chunk=cfg.loss_chunk)
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
        # One host sync per checkpoint: a resumed or "finished" run never starts from NaN.
        finite = torch.stack([p.detach().isfinite().all() for p in self.raw_model.parameters()])
        if not bool(finite.all()):
            raise self._diverged("some of the model's weights are NaN or infinite")
        if self.rank.main:
            path = save_checkpoint(self.job.run_dir, step=self.step,
                                   model_state=cpu_state_dict(self.raw_model),
                                   optimizer_state=self.optimizer.state_dict(),
                                   state=self._state(rng_states))
            if self.step == self._stable_end:
                keep_stable(self.job.run_dir, path)
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
            "dtype": dtype_name(self.dtype),
            "world_size": self.rank.world_size,
            "n_params": self.raw_model.num_parameters(),
        }

    def _log_params(self) -> dict[str, Any]:
        """What DVCLive records as the run's parameters (params.yaml)."""
        return {"model": json_normal(self.job.model_config.to_dict(), "model config"),
                "train": self.job.config.to_dict(), "lineage": self.job.lineage,
                "world_size": self.rank.world_size, "machine": machine_facts()}

    def _state(self, rng_states: list[dict]) -> dict[str, Any]:
        return {
            "micro_batch": self.micro_batch,
            "model_config": json_normal(self.job.model_config.to_dict(), "model config"),
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
                "logs in %s", self.step, _fmt(self.train_loss), _fmt(self.val_loss),
                self._elapsed(), run_dir / "checkpoints", self.logs.describe(),
            )


class Prefetcher:
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


def random_windows(store: TokenStore, batch_index: int, batch_size: int, seq_len: int,
                   seed: int) -> np.ndarray:
    """(batch_size, seq_len + 1) int64 windows at random offsets, as llama2.c draws them.

    A pure function of (seed, batch_index, batch_size, seq_len): starts are drawn
    from np.random.default_rng([seed, batch_index]) in [0, n_tokens - seq_len - 1],
    ignoring document boundaries.
    """
    params.check_int("", "batch_index", batch_index, 0)
    params.check_int("", "batch_size", batch_size, 1)
    params.check_int("", "seq_len", seq_len, 1)
    params.check_int("", "seed", seed, 0)
    store.require_tokens(seq_len + 1, seq_len)
    rng = np.random.default_rng([seed, batch_index])
    starts = rng.integers(0, store.n_tokens - seq_len, size=batch_size)
    return store.windows(starts, seq_len + 1, f"training batch {batch_index}")


def host_tensor(rows: np.ndarray, token_order: str, *, pin: bool,
                permutation_seed: int | None = None) -> torch.Tensor:
    """Windows (b, seq_len + 1) as an int64 tensor in ``token_order`` (reversed for
    ``backward``, permuted for ``permuted``), before the input/target shift."""
    rows = order_windows(rows, token_order, permutation_seed)
    batch = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64))
    return batch.pin_memory() if pin else batch


def split_batch(batch: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Move windows to ``device`` and split them into inputs and next-token targets."""
    batch = batch.to(device, non_blocking=batch.is_pinned())
    return batch[:, :-1].contiguous(), batch[:, 1:].contiguous()  # (b, seq_len) each


def seed_everything(seed: int) -> None:
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


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class DivergedError(UserError, RuntimeError):
    """The loss or the weights became NaN or infinite."""


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
