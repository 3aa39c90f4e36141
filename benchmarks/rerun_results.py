"""Rerun the published arrow-of-time figures: the `aot` experiment on every core.

    python benchmarks/rerun_results.py --estimate   # time a few steps per size: the expected total
    python benchmarks/rerun_results.py              # the whole experiment (about 40 min on 2 cores)
    python benchmarks/rerun_results.py --jobs 1     # the same runs in one process

It runs, in the project folder (``--root``, default this repository):

1. ``kedro run --env aot --pipeline ingest`` and ``--tags export`` (one process, every core);
2. the runs of the experiment, split over ``--jobs`` processes of one torch thread each
   (``kedro run --env aot --namespaces <runs>``), balanced by their estimated cost;
3. ``kedro run --env aot --pipeline compare``.

A run is trained by one process with one thread, whichever process that is, so the split
does not change a single byte of its results; it does differ from a run trained with
several threads (docs/reproducibility.md, "Machines"). The script prints the wall time of
each step, then the figures published in docs/results.md from compare/report.json: bits
per byte per variant and size with its interval over seeds and stories, both deltas with
theirs and whether they exclude zero, and the machine.

``--estimate`` trains nothing: it times ``--steps`` optimizer steps of each distinct model
shape of the experiment in this process with one thread (CPU time, so a shared machine
does not inflate it) and adds the evaluations' share; ingest, exports and compare are a
fixed ``--fixed-s`` (measured on a quiet 2-core machine, docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = "aot"
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SCORED_TOKENS_PER_STORY = 240  # a storyworld story's tokens, about: for the evaluation share


def load(root: Path, env: str) -> tuple[dict, object]:
    """The environment's parameters and experiment, as ``kedro run --env`` reads them."""
    from backstory import experiment
    from backstory.config_loader import ProjectConfigLoader
    from backstory.settings import CONFIG_LOADER_ARGS

    loader = ProjectConfigLoader(conf_source=str(root / "conf"), env=env, **CONFIG_LOADER_ARGS)
    parameters = loader["parameters"]
    return parameters, experiment.declared(parameters)


def step_equivalents(settings: Mapping[str, Mapping]) -> float:
    """A run's cost in training steps: its steps, plus its evaluations (a forward pass
    costs about a third of a training step of the same windows)."""
    train, evaluate = settings["train"], settings["evaluate"]
    window_tokens = train["batch_size"] * settings["model"]["max_seq_len"]
    evals = train["max_steps"] // train["eval_interval"]
    curve = evaluate["curve_stories"] * SCORED_TOKENS_PER_STORY / window_tokens
    final = evaluate["n_stories"] * SCORED_TOKENS_PER_STORY / window_tokens
    return train["max_steps"] * train["grad_accum"] + (evals * (train["eval_batches"] + curve)
                                                       + final) / 3


def shape_key(settings: Mapping[str, Mapping]) -> tuple:
    model, train = settings["model"], settings["train"]
    return (tuple(sorted(model.items())), train["batch_size"])


def step_seconds(settings: Mapping[str, Mapping], vocab_size: int, steps: int) -> float:
    """CPU seconds of one training step of this shape with one thread (after 2 warm-up)."""
    import torch

    from backstory.lm.model import ModelConfig, Transformer

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=vocab_size, **settings["model"]))
    optimizer = model.configure_optimizer(lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95),
                                          device_type="cpu")
    seq = settings["model"]["max_seq_len"]
    batch = torch.randint(3, vocab_size, (settings["train"]["batch_size"], seq + 1))
    inputs, targets = batch[:, :-1].contiguous(), batch[:, 1:].contiguous()
    for i in range(2 + steps):
        if i == 2:
            start = time.process_time()
        _, loss = model(inputs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.process_time() - start) / steps


def estimate(parameters: Mapping, experiment, steps: int) -> dict[str, dict]:
    """Per run: its settings' step cost (measured once per shape) and estimated CPU seconds."""
    from backstory.experiment import run_settings

    vocab = parameters["tokenizer"]["vocab_size"]
    measured: dict[tuple, float] = {}
    costs = {}
    for run in experiment.runs:
        settings = run_settings(parameters, run)
        key = shape_key(settings)
        if key not in measured:
            measured[key] = step_seconds(settings, vocab, steps)
            print(f"  {run.size}: {measured[key]:.3f} CPU s per step "
                  f"({settings['train']['batch_size']} x {settings['model']['max_seq_len']} "
                  "tokens, 1 thread)", flush=True)
        costs[run.namespace] = {"size": run.size, "step_s": measured[key],
                                "cpu_s": measured[key] * step_equivalents(settings)}
    return costs


def split_runs(costs: Mapping[str, float], jobs: int) -> list[list[str]]:
    """Runs over ``jobs`` processes: longest first, each to the least loaded process
    (ties to the lower process), so every run is in exactly one list."""
    loads = [0.0] * jobs
    parts: list[list[str]] = [[] for _ in range(jobs)]
    for name in sorted(costs, key=lambda n: (-costs[n], n)):
        i = loads.index(min(loads))
        parts[i].append(name)
        loads[i] += costs[name]
    return [p for p in parts if p]


def kedro(root: Path, env: str, args: Sequence[str], extra_env: Mapping[str, str] | None = None,
          ) -> subprocess.Popen:
    environ = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", **(extra_env or {})}
    return subprocess.Popen([sys.executable, "-m", "kedro", "run", "--env", env, *args],
                            cwd=root, env=environ)


def wait(*procs: subprocess.Popen) -> None:
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"a kedro run failed (exit codes {codes}); see its output above")


def rerun(root: Path, env: str, jobs: int, costs: Mapping[str, float]) -> dict[str, float]:
    """Run the experiment as the module docstring says; the wall seconds of each step."""
    times = {}
    start = time.perf_counter()
    wait(kedro(root, env, ["--pipeline", "ingest"]))
    wait(kedro(root, env, ["--tags", "export"]))
    times["ingest and exports"] = time.perf_counter() - start
    mark = time.perf_counter()
    parts = split_runs(costs, jobs)
    for i, part in enumerate(parts):
        print(f"process {i + 1}: {len(part)} runs, ~{sum(costs[n] for n in part) / 60:.1f} CPU "
              "min estimated", flush=True)
    wait(*(kedro(root, env, ["--namespaces", ",".join(part)], ONE_THREAD) for part in parts))
    times["runs"] = time.perf_counter() - mark
    mark = time.perf_counter()
    wait(kedro(root, env, ["--pipeline", "compare"]))
    times["compare"] = time.perf_counter() - mark
    times["total"] = time.perf_counter() - start
    return times


def figures(report: Mapping) -> list[str]:
    """The published figures of a compare report, as lines."""
    lines = []
    for size in report["arrow_of_time"]["sizes"]:
        params = size["n_params"]
        lines.append(f"{size['size']} (context {size['seq_len']}, parameters {params}):")
        for variant, level in size["levels"].items():
            bpb = level["bpb"]
            lines.append(f"  {variant:9s} {bpb['estimate']:.4f} bits per byte "
                         f"[{bpb['low']:.4f}, {bpb['high']:.4f}] ({bpb['method']}, "
                         f"per seed {', '.join(f'{v:.4f}' for v in bpb['per_seed'])})")
        for d in size["deltas"]:
            lines.append(f"  {d['variant']} vs {d['partner']} ({d['unit']}): "
                         f"{100 * d['delta']:+.2f}% [{100 * d['low']:+.2f}%, "
                         f"{100 * d['high']:+.2f}%], excludes 0: "
                         f"{'yes' if d['excludes_zero'] else 'no'} ({d['method']})")
    training = report["training_curves"]
    for size in training["sizes"]:
        lines.append(f"{size['size']}: {size['n_converged']} of {size['n_runs']} runs converged")
    for machine in report["machines"]:
        facts = machine["facts"]
        lines.append(f"machine: {facts.get('cpu')}, torch {facts.get('torch')}, "
                     f"{facts.get('cpu_capability')} "
                     f"({len(machine['runs'])} runs evaluated there)")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO, help="the project folder")
    parser.add_argument("--env", default=ENV, help="the Kedro environment (default: aot)")
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)),
                        help="processes that train runs at once (default: usable cores)")
    parser.add_argument("--estimate", action="store_true", help="estimate the time only")
    parser.add_argument("--steps", type=int, default=6, help="steps timed per model shape")
    parser.add_argument("--fixed-s", type=float, default=300.0,
                        help="seconds for ingest, exports and compare in the estimate")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from machine import describe

    print(f"machine: {describe()}", flush=True)
    root = args.root.resolve()
    parameters, experiment = load(root, args.env)
    print(f"{args.env}: {len(experiment.runs)} runs, sizes "
          f"{', '.join(dict.fromkeys(r.size for r in experiment.runs))}", flush=True)
    costs = estimate(parameters, experiment, args.steps)
    cpu = {name: c["cpu_s"] for name, c in costs.items()}
    parts = split_runs(cpu, max(1, args.jobs))
    longest = max(sum(cpu[n] for n in part) for part in parts)
    print(f"estimated: {sum(cpu.values()) / 60:.1f} CPU min of runs; with {len(parts)} "
          f"process(es) {longest / 60:.1f} min, plus ~{args.fixed_s / 60:.0f} min for ingest, "
          f"exports and compare: ~{(longest + args.fixed_s) / 60:.0f} min", flush=True)
    if args.estimate:
        return 0
    times = rerun(root, args.env, max(1, args.jobs), cpu)
    print("wall time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items()))
    from backstory.tools.locate import Project

    path = Project.load(root, args.env).path("compare.report")
    print(f"figures ({path}):")
    print("\n".join(figures(json.loads(path.read_text()))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
