"""How a CPU training process uses its host: torch threads and the C allocator.

Threads: on a quiet 2-core machine two torch threads train the CPU preset about 1.6x
faster than one, but when other work holds a core the two threads wait for each other at
every operation and a step can take 3-6x longer than with one thread
(docs/benchmarks.md). ``train.num_threads: 0`` therefore counts the cores that are idle
when training starts (``/proc/stat`` over a short window) and uses that many, at least
one, shared out among the processes of a distributed run. The thread count does not
change the arithmetic of a step on CPU (tests/test_train.py checks 1 and 2 threads give
bit-identical weights), so this choice moves speed only, never results.

Every training step allocates and frees the same large activations, which glibc serves
with fresh mmaps and returns on free, so each step faults its pages in again (13% of a CPU
step; docs/benchmarks.md). ``keep_freed_memory`` raises the mmap and trim thresholds so
freed blocks stay in the heap and are reused. Results are unchanged (same arithmetic).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import time
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


IDLE_WINDOW_S = 0.3  # how long idle cores are sampled: long enough to average a scheduler tick


def idle_cores(window_s: float = IDLE_WINDOW_S) -> float | None:
    """Cores left idle by every process on the machine over ``window_s``; None where
    ``/proc/stat`` cannot be read (not Linux)."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = [int(x) for x in handle.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return idle, sum(fields[:8])  # guest time is already counted in user time

    try:
        idle0, total0 = sample()
        time.sleep(window_s)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (idle1 - idle0) / (total1 - total0) * (os.cpu_count() or 1)


def choose_threads(setting: int, processes: int = 1) -> int:
    """The torch threads a training process uses: ``setting`` when > 0; for 0 the
    ``OMP_NUM_THREADS`` the user set, else one per idle core split among ``processes``
    (at least one), else torch's own choice where idleness cannot be measured."""
    if setting > 0:
        return setting
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    idle = idle_cores()
    if idle is None:
        return torch.get_num_threads()
    return max(1, int(idle + 0.5) // max(1, processes))


@contextlib.contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch CPU threads, then restore the setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
