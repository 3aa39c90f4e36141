"""Rerun an experiment's published figures: `kedro run --runner ParallelRunner`, then print them.

    python benchmarks/rerun_results.py --env aot_converged --estimate  # time a few steps per size
    python benchmarks/rerun_results.py --env aot_converged             # the grid, to convergence
    python benchmarks/rerun_results.py --env aot_converged --presets micro   # one size first
    python benchmarks/rerun_results.py --env aot                       # issue 9's 150 steps

Each pass is one ``kedro run --env <env> --runner ParallelRunner --runner-params
max_workers=<jobs>`` (``--jobs``: the cores idle when it starts), so Kedro runs the grid's
runs side by side, each with one torch thread (``backstory.hooks.ParallelGridHooks``). A
run is trained by one process with one thread, whichever process that is, so this
changes no byte of a result (tests/test_grid.py).

A warmup-stable-decay environment (``aot_converged``) is run in passes of doubling length:
pass 0 trains every preset's ``train.max_steps``, pass k twice the tokens of pass k - 1 by
continuing each run from its end-of-stable-phase checkpoint (``--params
presets.<preset>.train.max_steps=...``). After pass 1 the report says per run whether the
doubling moved its validation loss by less than ``compare.convergence_tolerance``; with
``--doublings K`` the passes go on to K, stopping early once every run has converged.

It ends with the deltas against training tokens over the kept passes (``backstory
doublings``). Killed, the same command continues: finished runs are reused and unfinished
ones resume from their checkpoints. Each preset starts at the pass its runs' checkpoints
have reached, never at a shorter one (a shorter length would set a longer run aside and
train it again). ``--presets`` drives some sizes through every pass first, so their
verdicts come before the next size has trained; the report waits for a run without it.

``--estimate`` trains nothing: it times ``--steps`` optimizer steps of each distinct model
shape with one thread (CPU time, so a shared machine inflates it less) and adds the
evaluations' share and ``--fixed-s`` for ingest, exports and compare.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = "aot_converged"
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
        costs[run.namespace] = {"size": run.size, "preset": run.preset, "step_s": measured[key],
                                "cpu_s": measured[key] * step_equivalents(settings)}
    return costs


def lengths(parameters: Mapping, experiment) -> dict[str, int]:
    """Pass 0's ``train.max_steps`` per preset (every run of a preset shares it)."""
    from backstory.experiment import run_settings

    found: dict[str, set[int]] = {}
    for run in experiment.runs:
        found.setdefault(run.preset, set()).add(run_settings(parameters, run)["train"]["max_steps"])
    uneven = {p: sorted(v) for p, v in found.items() if len(v) > 1}
    if uneven:
        raise SystemExit(f"runs of one preset train for different max_steps {uneven}; give "
                         "each preset one length (presets.<preset>.train.max_steps)")
    return {preset: steps.pop() for preset, steps in found.items()}


def pass_steps(base: int, k: int, schedule: str, cooldown_fraction: float) -> float:
    """Optimizer steps pass ``k`` trains for a run whose pass-0 length is ``base``: all of
    them at pass 0, then from the previous length's stable end to the new length."""
    from backstory.lm.schedules import stable_end

    if k == 0:
        return base
    if schedule != "wsd":
        raise SystemExit("--doublings needs a wsd schedule (train.schedule: wsd)")
    return base * 2 ** k - stable_end(base * 2 ** (k - 1), cooldown_fraction)


def reached_passes(root: Path, env: str, experiment, base: Mapping[str, int]) -> dict[str, int]:
    """Per preset, the furthest pass its runs' checkpoints belong to (0 when none trained)."""
    from backstory.lm.checkpoint import latest_checkpoint, read_state
    from backstory.tools.locate import Project

    project = Project.load(root, env)
    reached = dict.fromkeys(base, 0)
    for run in experiment.runs:
        checkpoint = latest_checkpoint(project.path(f"{run.namespace}.training_run"))
        if checkpoint is not None:
            steps = read_state(checkpoint)["train_config"]["max_steps"]
            reached[run.preset] = max(reached[run.preset],
                                      round(math.log2(max(1, steps / base[run.preset]))))
    return reached


def pass_lengths(base: Mapping[str, int], reached: Mapping[str, int], k: int) -> dict[str, int]:
    """Each preset's ``train.max_steps`` in pass ``k``: ``base * 2**k``, or the longer length
    its runs have already reached (a preset driven ahead with ``--presets``), since a shorter
    one would set those runs aside and train them again."""
    return {preset: n * 2 ** max(k, reached[preset]) for preset, n in base.items()}


def kedro(root: Path, env: str, jobs: int, steps: Mapping[str, int],
          namespaces: Sequence[str] = ()) -> None:
    """One pass: every run (or only ``namespaces``) at its preset's ``steps``, ``jobs`` at a
    time."""
    overrides = ",".join(f"presets.{p}.train.max_steps={n}" for p, n in steps.items())
    command = [sys.executable, "-m", "kedro", "run", "--env", env, "--runner", "ParallelRunner",
               "--runner-params", f"max_workers={jobs}", "--params", overrides]
    if namespaces:
        command += ["--namespaces", ",".join(namespaces)]
    print("$ " + " ".join(command[1:]), flush=True)
    environ = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"}
    code = subprocess.run(command, cwd=root, env=environ).returncode
    if code:
        raise SystemExit(f"kedro run failed (exit code {code}); see its output above. Run "
                         "the same command again to continue where it stopped")


def idle_jobs() -> int:
    """Runs at once: the cores idle now (at least one)."""
    from backstory.lm.training.host import idle_cores

    idle = idle_cores()
    return max(1, int(idle + 0.5) if idle is not None else len(os.sched_getaffinity(0)))


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
    found = report["convergence"]
    for size, n in found["sizes"].items():
        lines.append(f"{size}: {n['n_converged']} of {n['n_runs']} runs converged "
                     f"({n['n_checked']} checked by doubling their tokens)")
    for run, c in found["runs"].items():
        if c["verdict"] is not None:
            lines.append(f"  {run}: {c['from_tokens']:,} -> {c['to_tokens']:,} tokens moved the "
                         f"validation loss {100 * c['relative_change']:+.2f}% ({c['verdict']})")
    for machine in report["machines"]:
        facts = machine["facts"]
        lines.append(f"machine: {facts.get('cpu')}, torch {facts.get('torch')}, "
                     f"{facts.get('cpu_capability')} "
                     f"({len(machine['runs'])} runs evaluated there)")
    return lines


def keep_pass_report(report: Path, k: int) -> None:
    """Copy pass ``k``'s report files to ``pass<k>/`` beside them: the next pass replaces
    them, and the deltas against training tokens read across the passes."""
    folder = report.parent / f"pass{k}"
    folder.mkdir(exist_ok=True)
    for name in ("report.json", "report.md"):
        if (report.parent / name).exists():
            shutil.copy(report.parent / name, folder / name)


def all_converged(report: Mapping) -> bool:
    runs = report["convergence"]["runs"].values()
    return bool(runs) and all(c["verdict"] == "converged" for c in runs)


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
                             "report (one size's verdicts before the next size starts; a later "
                             "run without --presets reuses them and writes the report)")
    parser.add_argument("--estimate", action="store_true", help="estimate the time only")
    parser.add_argument("--steps", type=int, default=6, help="steps timed per model shape")
    parser.add_argument("--fixed-s", type=float, default=300.0,
                        help="seconds for ingest, exports and compare per pass in the estimate")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from machine import describe

    from backstory.experiment import run_settings

    print(f"machine: {describe()}", flush=True)
    root = args.root.resolve()
    parameters, experiment = load(root, args.env)
    base = lengths(parameters, experiment)
    train = run_settings(parameters, experiment.runs[0])["train"]
    doublings = args.doublings if args.doublings is not None else int(train["schedule"] == "wsd")
    jobs = args.jobs or idle_jobs()
    print(f"{args.env}: {len(experiment.runs)} runs, sizes "
          f"{', '.join(dict.fromkeys(r.size for r in experiment.runs))}, pass-0 steps {base}, "
          f"{doublings} doubling(s), {jobs} at once", flush=True)
    costs = estimate(parameters, experiment, args.steps)
    passes = range(doublings + 1)
    # A run's evaluations scale with its steps: each pass costs its share of pass 0's.
    cpu = sum(c["cpu_s"] * sum(pass_steps(base[c["preset"]], k, train["schedule"],
                                          train["cooldown_fraction"]) for k in passes)
              / base[c["preset"]] for c in costs.values())
    longest = max(c["step_s"] * base[c["preset"]] * 2 ** doublings for c in costs.values())
    wall = max(cpu / jobs, longest) + args.fixed_s * len(passes)
    print(f"estimated: {cpu / 3600:.2f} CPU h of runs; with {jobs} at once ~{wall / 3600:.2f} h "
          f"wall, ingest, exports and compare included", flush=True)
    if args.estimate:
        return 0
    from backstory.tools.locate import Project

    path = Project.load(root, args.env).path("compare.report")
    reached = reached_passes(root, args.env, experiment, base)
    chosen = args.presets or list(base)
    unknown = sorted(set(chosen) - set(base))
    if unknown:
        raise SystemExit(f"--presets {unknown}: {args.env} declares {sorted(base)}")
    namespaces = [r.namespace for r in experiment.runs if r.preset in chosen] \
        if args.presets else []
    for k in range(min(reached[p] for p in chosen), doublings + 1):
        mark = time.perf_counter()
        kedro(root, args.env, jobs, pass_lengths(base, reached, k), namespaces)
        print(f"pass {k}: {(time.perf_counter() - mark) / 60:.1f} min wall", flush=True)
        if args.presets:
            continue
        keep_pass_report(path, k)
        if k >= 1 and all_converged(json.loads(path.read_text())):
            print(f"every run converged after pass {k}", flush=True)
            break
    if args.presets:
        print(f"{', '.join(chosen)} trained through pass {doublings}; rerun without --presets "
              "for the report")
        return 0
    print(f"figures ({path}):")
    print("\n".join(figures(json.loads(path.read_text()))))
    from backstory.evaluation.doublings import length_rows, length_table, pass_reports

    print(f"against training tokens (`backstory doublings {path.parent}`):")
    print("\n".join(length_table(length_rows(pass_reports(path.parent)))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
