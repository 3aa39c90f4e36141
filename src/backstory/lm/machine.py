"""What machine a figure came from: the facts that change float results on a CPU.

The same code, data and seed give bit-identical weights on one machine, but not across
machines: torch picks its CPU kernels by the instruction set it finds (ATen's CPU
capability: DEFAULT, AVX2, AVX512, ...), and the torch build (its version and the MKL /
oneDNN it ships) sets the rest. Each published figure records these facts
(docs/reproducibility.md). The thread count is not one of them: it does not change a
training step's bits (tests/test_train.py), and ``train.num_threads: 0`` chooses it by
the machine's idle cores, so recording it would make the same run's files differ.
"""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

# Environment variables that change which kernels torch uses. Thread counts
# (OMP_NUM_THREADS, MKL_NUM_THREADS) are left out like torch's own: they move no bit, and a
# grid under ParallelRunner sets OMP_NUM_THREADS=1 (backstory.hooks.ParallelGridHooks).
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), or the platform's processor string."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_facts() -> dict[str, Any]:
    """The facts that decide a CPU (or GPU) run's float results, as plain data."""
    facts: dict[str, Any] = {
        "torch": str(torch.__version__),
        "cpu": cpu_model(),
        "cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
        "mkl": bool(torch.backends.mkl.is_available()),
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "platform": platform.platform(),
        "env": {name: os.environ[name] for name in KERNEL_ENV if name in os.environ},
    }
    if torch.cuda.is_available():
        facts["cuda"] = str(torch.version.cuda)
        facts["gpu"] = torch.cuda.get_device_name(0)
    return facts
