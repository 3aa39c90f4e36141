"""How a CPU training process uses its host: torch threads and the C allocator.

Every training step allocates and frees the same large activations (the CPU preset's
logits alone are 32 MiB). glibc serves blocks above its mmap threshold (128 KiB, rising
to at most 32 MiB) with fresh mmap calls and returns them on free, so each step faults
in and zeroes every page of them again: about 40,000 page faults and 13% of the CPU
time of a step of the CPU preset (``benchmarks/bench_train_vs_llama2c.py``,
docs/benchmarks.md). ``keep_freed_memory`` raises the mmap and trim thresholds so freed
blocks stay in the heap and are reused; the process keeps its peak memory, which a
training loop reaches on its first step anyway. Results are unchanged (same arithmetic).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
from collections.abc import Iterator

import torch

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 1 << 30  # blocks up to 1 GiB come from the reusable heap
_TRIM_THRESHOLD = (1 << 31) - 1  # never hand the heap's top back to the system
_kept = False


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed blocks for reuse (once per process); False where no glibc."""
    global _kept
    if _kept:
        return True
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return False
    _kept = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and \
        bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    if _kept:
        logger.info("glibc malloc keeps freed blocks for reuse (no per-step page faults)")
    return _kept


@contextlib.contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch CPU threads (0: leave the setting alone), then restore it."""
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n > 0:
            torch.set_num_threads(before)
