"""Processes: ranks, devices and dtypes, the process group, and what a machine can train."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from backstory.core.errors import SettingError
from backstory.lm.model import ModelConfig
from backstory.lm.training.config import DTYPES, TrainConfig, is_cuda_index

logger = logging.getLogger(__name__)


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
