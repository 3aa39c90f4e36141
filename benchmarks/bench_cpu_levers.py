"""CPU speed levers against seed noise: does a lever move the trained model's bpb?

Trains the default run's recipe (conf/base's forward small run; ``--steps`` replaces
its max_steps, the schedule's shape kept) with and without each lever, on the same
seeds, with one torch thread, and prints per run the final validation bits per byte
(the pipeline's ``evaluate_loss``, as in ``time_to_quality.py``) and the CPU seconds of
training; then per lever the bpb difference to the baseline seed by seed against the
baseline's own spread over seeds, and the CPU-time ratio. A lever that changes bits is
worth keeping only when its differences sit inside that spread.

    python benchmarks/bench_cpu_levers.py                        # bf16, seeds 1337-1339
    python benchmarks/bench_cpu_levers.py --steps 150 --seeds 1337 1338   # a shorter check
    python benchmarks/bench_cpu_levers.py --levers bf16 compile --seeds 1337 1338
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from corpus import DEFAULT_CACHE, default_stores
from machine import start_one_thread
from recipes import train_curve

# Train settings per lever, over conf/base's forward small run.
LEVERS = {"fp32": {}, "bf16": {"dtype": "bfloat16"}, "compile": {"compile": True},
          "bf16+compile": {"dtype": "bfloat16", "compile": True}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levers", nargs="+", choices=sorted(set(LEVERS) - {"fp32"}),
                        default=["bf16"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1337, 1338, 1339])
    parser.add_argument("--steps", type=int, default=None, help="train.max_steps")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args()
    start_one_thread()
    stores, _ = default_stores(args.cache)
    steps = {} if args.steps is None else {"max_steps": args.steps}
    bpb: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    for seed in args.seeds:
        for label in ["fp32", *args.levers]:
            load = os.getloadavg()[0]
            with tempfile.TemporaryDirectory() as tmp:
                points = train_curve(stores["forward"], "forward",
                                     {**LEVERS[label], **steps, "num_threads": 1},
                                     run_dir=Path(tmp),
                                     eval_every=1_000_000, seed=seed)
            last = points[-1]
            bpb.setdefault(label, []).append(last.val_bpb)
            cpu.setdefault(label, []).append(last.cpu_seconds)
            print(f"seed {seed} {label}: {last.val_bpb:.4f} bpb after {last.step} steps, "
                  f"{last.cpu_seconds:.1f} CPU s (load {load:.2f})", flush=True)
    base = bpb["fp32"]
    print(f"\nfp32 (conf/base): bpb {', '.join(f'{b:.4f}' for b in base)}; seed spread "
          f"{max(base) - min(base):.4f} (sd {statistics.pstdev(base):.4f})")
    for label in args.levers:
        deltas = [b - a for a, b in zip(base, bpb[label], strict=True)]
        ratios = [a / b for a, b in zip(cpu["fp32"], cpu[label], strict=True)]
        print(f"{label} {LEVERS[label]}: bpb minus fp32 per seed "
              f"{', '.join(f'{d:+.4f}' for d in deltas)} (mean {statistics.mean(deltas):+.4f}); "
              f"CPU-time speedup per seed {', '.join(f'{r:.2f}' for r in ratios)}")


if __name__ == "__main__":
    main()
