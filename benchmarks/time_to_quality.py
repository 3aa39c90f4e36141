"""Time to quality: wall time, CPU time and tokens to reach a fixed validation bpb.

Trains the baseline recipe (the variant's conf/base blocks as shipped) and the fast
recipe (``recipes.FAST``, or ``--fast key=value ...``) on the default run's corpus
(storyworld, 20,000 stories, built once by ``corpus.py``), one after the other, each
scored every ``--eval-every`` steps with the pipeline's validation bits per byte
(``evaluate_loss``; scoring time excluded). Prints, side by side, when each first
reaches ``--target`` bpb (interpolated between evaluations): tokens, wall seconds and
the process's CPU seconds. CPU seconds are the figure to compare on a shared machine
(wall time moves with other jobs' load); both are printed with the load average. It
prints the same three figures at convergence (``recipes.converged_at``: the first
evaluation after which doubling the tokens moved bpb by less than 1%, read off the
run's own curve), or "not converged" when the run is too short to show one.

    python benchmarks/time_to_quality.py                    # forward, target 0.75, CPU
    python benchmarks/time_to_quality.py --variant reversed --target 0.90
    python benchmarks/time_to_quality.py --fast optimizer=muon muon_lr=0.05 max_steps=200
    python benchmarks/time_to_quality.py --device cuda      # the same recipes on a GPU
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path

import torch
from bench_token_efficiency import parse_overrides
from corpus import DEFAULT_CACHE, default_stores
from machine import describe
from recipes import FAST, Point, converged_at, tokens_to_reach, train_curve


def reach(points: list[Point], target: float) -> dict[str, float | None]:
    return {attr: tokens_to_reach(points, target, attr)
            for attr in ("tokens", "seconds", "cpu_seconds")}


def cell(value: float | None, unit: str) -> str:
    if value is None:
        return "not reached"
    return f"{value / 1e6:.3f}M" if unit == "tokens" else f"{value:,.0f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=["forward", "reversed"], default="forward")
    parser.add_argument("--target", type=float, default=0.75, help="validation bits per byte")
    parser.add_argument("--fast", nargs="*", default=None)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda on a GPU machine")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    fast = FAST if args.fast is None else parse_overrides(args.fast)
    print(f"machine: {describe()}; torch {torch.__version__}, {args.threads} thread(s)")
    stores, _ = default_stores(args.cache)
    results, converged = {}, {}
    for label, overrides in (("baseline", {}), ("fast", fast)):
        load = os.getloadavg()[0]
        with tempfile.TemporaryDirectory() as tmp:
            points = train_curve(stores[args.variant], args.variant, overrides,
                                 run_dir=Path(tmp), eval_every=args.eval_every, seed=args.seed,
                                 device=args.device)
        results[label] = reach(points, args.target)
        done = converged_at(points)
        converged[label] = {attr: None if done is None else float(getattr(done, attr))
                            for attr in ("tokens", "seconds", "cpu_seconds")}
        last = points[-1]
        print(f"{label}: {overrides or 'conf/base'}; final {last.val_bpb:.4f} bpb after "
              f"{last.tokens / 1e6:.2f}M tokens, {last.seconds:,.0f} s wall, "
              f"{last.cpu_seconds:,.0f} s CPU (load average {load:.2f} at its start)",
              flush=True)
    table(f"to reach {args.target} validation bits per byte", results, args)
    table("to convergence (doubling the tokens moves bpb < 1%)", converged, args)


def table(title: str, results: dict[str, dict[str, float | None]],
          args: argparse.Namespace) -> None:
    print(f"\n{title} ({args.variant}, seed {args.seed}):")
    print(f"{'':>12} {'baseline':>14} {'fast':>14} {'fast / baseline':>16}")
    for attr in ("tokens", "seconds", "cpu_seconds"):
        base, quick = results["baseline"][attr], results["fast"][attr]
        ratio = f"{quick / base:.2f}" if base and quick else "n/a"
        print(f"{attr:>12} {cell(base, attr):>14} {cell(quick, attr):>14} {ratio:>16}")


if __name__ == "__main__":
    main()
