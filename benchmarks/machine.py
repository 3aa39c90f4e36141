"""What the benchmarks print about the machine they ran on."""

from __future__ import annotations

import logging
import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else what platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def usable_cores() -> int:
    """Cores this process may run on (its affinity), not all the machine has."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def describe() -> str:
    """One line: cores, CPU model, Python, and the load average when known."""
    load = f", load average {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else ""
    return (f"{usable_cores()} usable of {os.cpu_count()} cores, {cpu_model()}, "
            f"Python {platform.python_version()}{load}")


def core_fp32_peak(size: int = 2048, repeats: int = 5) -> float:
    """One core's float32 FLOP/s as a large sgemm reaches it: ``size``-cubed matrix
    products on one torch thread, the best of ``repeats`` by the process's CPU clock (so
    other jobs on the machine do not lower it). This is the measured peak that CPU
    utilisation is quoted against; the data-sheet figure (FMA pipes x lanes x 2 x clock)
    needs the clock, which a virtual machine's lscpu often does not report."""
    import time

    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a, b = torch.randn(size, size), torch.randn(size, size)
        a @ b  # first call: MKL's setup, page faults
        best = float("inf")
        for _ in range(repeats):
            start = time.process_time()
            a @ b
            best = min(best, time.process_time() - start)
    finally:
        torch.set_num_threads(before)
    return 2 * size**3 / best


def start_one_thread() -> None:
    """Warnings only, one torch thread, and the machine line: how every single-thread
    benchmark starts, so its figures are per core and say where they were measured."""
    import torch

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    print(f"machine: {describe()}; torch {torch.__version__}, 1 thread", flush=True)
