"""Time an experiment's grid on this machine, then train it with `backstory grid`.

    python benchmarks/rerun_results.py --env aot_converged --estimate  # time a few steps per size
    python benchmarks/rerun_results.py --env aot_converged             # the grid, to convergence
    python benchmarks/rerun_results.py --env aot_converged --presets micro   # one size first
    python benchmarks/rerun_results.py --env aot                       # issue 9's 150 steps

The training is ``backstory grid`` (``backstory.tools.grid``): each pass one ``kedro run
--runner ParallelRunner``, a warmup-stable-decay grid in passes of doubling length, resumed
where it stopped when run again. This script adds the estimate before it.

``--estimate`` trains nothing: it times ``--steps`` optimizer steps of each distinct model
shape with one thread (CPU time, so a shared machine inflates it less) and adds the
evaluations' share and ``--fixed-s`` for ingest, exports and compare.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = "aot_converged"
SCORED_TOKENS_PER_STORY = 240  # a storyworld story's tokens, about: for the evaluation share


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
        costs[run.namespace] = {"size": run.size, "preset": run.preset, "step_s": measured[key],
                                "cpu_s": measured[key] * step_equivalents(settings)}
    return costs


def pass_steps(base: int, k: int, cooldown_fraction: float) -> float:
    """Optimizer steps pass ``k`` trains for a run whose pass-0 length is ``base``: all of
    them at pass 0, then (wsd) from the previous length's stable end to the new length."""
    from backstory.lm.schedules import stable_end

    return base if k == 0 else base * 2 ** k - stable_end(base * 2 ** (k - 1),
                                                          cooldown_fraction)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO, help="the project folder")
    parser.add_argument("--env", default=ENV, help=f"the Kedro environment (default: {ENV})")
    parser.add_argument("--jobs", type=int, default=0,
                        help="runs trained at once (default 0: the cores idle at the start)")
    parser.add_argument("--doublings", type=int, default=None,
                        help="passes of doubled length after the first (default: 1 for a "
                             "wsd experiment, 0 otherwise)")
    parser.add_argument("--presets", nargs="+", default=None,
                        help="train only these presets' runs, through every pass, and write no "
                             "report (one size's verdicts before the next size starts)")
    parser.add_argument("--estimate", action="store_true", help="estimate the time only")
    parser.add_argument("--steps", type=int, default=6, help="steps timed per model shape")
    parser.add_argument("--fixed-s", type=float, default=300.0,
                        help="seconds for ingest, exports and compare per pass in the estimate")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from machine import describe

    from backstory.core.errors import UserError
    from backstory.experiment import run_settings
    from backstory.tools import cli, grid
    from backstory.tools.locate import Project

    print(f"machine: {describe()}", flush=True)
    project = Project.load(args.root.resolve(), args.env)
    base = grid.preset_lengths(project)
    train = run_settings(project.parameters, project.experiment.runs[0])["train"]
    try:
        doublings = grid.doublings_for(project, args.env, args.doublings)
    except UserError as err:
        raise SystemExit(str(err)) from err
    jobs = args.jobs or grid.idle_jobs()
    print(f"{args.env}: pass-0 steps {base}, {doublings} doubling(s), {jobs} at once",
          flush=True)
    costs = estimate(project.parameters, project.experiment, args.steps)
    passes = range(doublings + 1)
    # A run's evaluations scale with its steps: each pass costs its share of pass 0's.
    cpu = sum(c["cpu_s"] * sum(pass_steps(base[c["preset"]], k, train["cooldown_fraction"])
                               for k in passes)
              / base[c["preset"]] for c in costs.values())
    longest = max(c["step_s"] * base[c["preset"]] * 2 ** doublings for c in costs.values())
    wall = max(cpu / jobs, longest) + args.fixed_s * len(passes)
    print(f"estimated: {cpu / 3600:.2f} CPU h of runs; with {jobs} at once ~{wall / 3600:.2f} h "
          f"wall, ingest, exports and compare included", flush=True)
    if args.estimate:
        return 0
    return cli.main(["grid", "--project-dir", str(args.root), "--env", args.env,
                     "--doublings", str(doublings), "--jobs", str(jobs)]
                    + (["--presets", *args.presets] if args.presets else []))


if __name__ == "__main__":
    raise SystemExit(main())
