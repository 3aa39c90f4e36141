"""Processes: ranks, devices and dtypes, the process group, and launching workers."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

from backstory.data.tokens import TokenStore
from backstory.errors import SettingError
from backstory.lm.finetune import InitialModel
from backstory.lm.model import ModelConfig
from backstory.lm.training.config import DTYPES, TrainConfig, is_cuda_index
from backstory.lm.training.job import TrainJob

logger = logging.getLogger(__name__)

# Prefix of the rendezvous id of the workers `launch_workers` starts; torch's elastic
# agent hands it to them as TORCHELASTIC_RUN_ID.
RUN_ID_PREFIX = "backstory-"


@dataclass(frozen=True)
class Rank:
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


def env_world_size() -> int:
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 1
    return int(os.environ["WORLD_SIZE"])


def join_group(rank_: Rank, device: torch.device) -> Rank:
    if dist.is_initialized():
        return rank_
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    return Rank(rank_.rank, rank_.world_size, rank_.local_rank, owns_group=True)


def resolve_device(name: str, rank_: Rank) -> torch.device:
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
    if is_cuda_index(name) and rank_.distributed:
        raise ValueError(f"train.device={name!r} pins one GPU, but each of the "
                         f"{rank_.world_size} processes needs its own; use cuda or auto")
    if name == "mps" and rank_.distributed:
        raise ValueError("train.device='mps' cannot run several processes; use nproc_per_node=1")
    if name == "cuda":
        return torch.device("cuda", rank_.local_rank)
    return torch.device(name)


def check_machine(model_config: ModelConfig, config: TrainConfig, *, where: str) -> None:
    """Refuse, before any work, a run this machine cannot train: its ``train.device`` is
    missing, or one micro-batch certainly needs more memory than the device has."""
    try:
        device = resolve_device(config.device, Rank(world_size=config.nproc_per_node))
    except ValueError as err:
        raise SettingError(f"{where}: {err}") from err
    have = device_memory_bytes(device)
    need = training_memory_bytes(model_config, config)
    if have is not None and need > have:
        raise SettingError(
            f"{where}: training needs at least {need / 2**30:,.1f} GiB on {device.type} (model "
            f"config max_seq_len={model_config.max_seq_len:,}, train.batch_size="
            f"{config.batch_size}, dim={model_config.dim}, n_layers={model_config.n_layers}, "
            f"vocab_size={model_config.vocab_size:,}) but the device has "
            f"{have / 2**30:,.1f} GiB; lower max_seq_len (contexts) or train.batch_size (raise "
            "train.grad_accum to keep the tokens per step), or set train.loss_chunk")


def training_memory_bytes(model_config: ModelConfig, config: TrainConfig) -> int:
    """A lower bound on one process's training memory: weights, gradients and AdamW's two
    moments (16 bytes a parameter) plus what autograd keeps of one micro-batch, about
    10 dim + 3 ffn_hidden_dim float32 values a token in each layer and the logits with
    their gradient (2 vocab_size a token, unless train.loss_chunk fuses them away).
    Attention is not counted: SDPA's kernels keep it linear in the context."""
    tokens = config.batch_size // config.nproc_per_node * model_config.max_seq_len
    per_token = model_config.n_layers * (10 * model_config.dim + 3 * model_config.ffn_hidden_dim)
    if config.loss_chunk == 0:
        per_token += 2 * model_config.vocab_size
    return 16 * model_config.num_parameters + 4 * tokens * per_token


def device_memory_bytes(device: torch.device) -> int | None:
    """Total memory of ``device`` (the machine's RAM for cpu); None where unknown."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "cpu" and hasattr(os, "sysconf"):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return None


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
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


def launch_workers(job: TrainJob, progress: bool, on_eval: Any = None,
                   live_dir: Path | None = None) -> None:
    """Run ``nproc_per_node`` copies of ``_worker`` and wait for all of them."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    n = job.config.nproc_per_node
    launch = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=n,
        run_id=f"{RUN_ID_PREFIX}{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{_free_port()}",
        max_restarts=0,  # a crash is reported, not retried: resume is the user's call
        monitor_interval=0.5,
        start_method="spawn",
    )
    logger.info("Launching %d training processes", n)
    elastic_launch(launch, _worker)(
        job.model_config.to_dict(), job.config.to_dict(), str(job.train_store.path),
        str(job.val_store.path), str(job.run_dir), job.lineage, progress, job.init,
        on_eval, None if live_dir is None else str(live_dir),
    )


@record
def _worker(model_config: dict, train_config: dict, train_path: str, val_path: str,
            run_dir: str, lineage: dict, progress: bool, init: InitialModel | None,
            on_eval: Any = None, live_dir: str | None = None) -> None:
    """One launched process: reopen the stores and train as the rank the launcher set."""
    from backstory.lm.training.run import train  # the entry point imports this module

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if "OMP_NUM_THREADS" not in os.environ:
        # Processes share the cores; oversubscribed threads slow every one of them.
        local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    train(ModelConfig.from_dict(model_config), TrainConfig.from_record(train_config),
          TokenStore(Path(train_path)), TokenStore(Path(val_path)), Path(run_dir),
          lineage=lineage, progress=progress, init=init, on_eval=on_eval,
          live_dir=None if live_dir is None else Path(live_dir))


def launched_by_backstory() -> bool:
    """Whether this process is a worker `launch_workers` started (not torchrun's)."""
    return os.environ.get("TORCHELASTIC_RUN_ID", "").startswith(RUN_ID_PREFIX)


def check_launchable(config: TrainConfig) -> None:
    """Fail in the caller, not in n workers, when the processes cannot get their devices."""
    n = config.nproc_per_node
    device = resolve_device(config.device, Rank(0, n))
    resolve_dtype(config.dtype, device)
    if device.type == "cuda" and torch.cuda.device_count() < n:
        raise ValueError(
            f"train.nproc_per_node={n} but only {torch.cuda.device_count()} CUDA device(s) "
            "are visible; lower it (one process per GPU)"
        )
