"""Train an experiment's grid with Kedro's ParallelRunner, in passes of doubling length.

Each pass is one ``kedro run --env <env> --runner ParallelRunner --runner-params
max_workers=<jobs>`` (``jobs``: the cores idle when it starts), so Kedro runs the grid's
runs side by side, each with one torch thread (``backstory.hooks.ParallelGridHooks``). A
run is trained by one process with one thread, whichever process that is, so this changes
no byte of a result (tests/test_grid.py).

A warmup-stable-decay grid (``aot_converged``) is run in passes: pass 0 trains every
preset's ``train.max_steps``, pass k twice the tokens of pass k - 1 by continuing each run
from its end-of-stable-phase checkpoint (``--params presets.<preset>.train.max_steps=...``).
After pass 1 the report says per run whether the doubling moved its validation loss by less
than ``compare.convergence_tolerance``; the passes stop early once every run has converged.
Each pass's report is kept as ``pass<k>/`` beside the catalog's ``compare.report``, which
``backstory doublings`` reads.

Killed, the same command continues: finished runs are reused and unfinished ones resume
from their checkpoints. Each preset starts at the pass its runs' checkpoints have reached,
never at a shorter one (a shorter length would set a longer run aside and train it again).
``presets`` drives some sizes through every pass first, so their verdicts come before the
next size has trained; the report waits for a run without it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from backstory.core.errors import UserError
from backstory.experiment import run_settings
from backstory.lm.checkpoint import latest_checkpoint, read_state
from backstory.lm.training.host import idle_cores
from backstory.tools.locate import Project

REPORT = "compare.report"


def preset_lengths(project: Project) -> dict[str, int]:
    """Pass 0's ``train.max_steps`` per preset (every run of a preset shares it)."""
    found: dict[str, set[int]] = {}
    for run in project.experiment.runs:
        steps = run_settings(project.parameters, run)["train"]["max_steps"]
        found.setdefault(run.preset, set()).add(steps)
    uneven = {p: sorted(v) for p, v in found.items() if len(v) > 1}
    if uneven:
        raise UserError(f"runs of one preset train for different max_steps {uneven}; give "
                        "each preset one length (presets.<preset>.train.max_steps)")
    return {preset: steps.pop() for preset, steps in found.items()}


def extendable(project: Project) -> bool:
    """Whether every run is warmup-stable-decay, so it can be doubled without restarting."""
    return all(run_settings(project.parameters, run)["train"]["schedule"] == "wsd"
               for run in project.experiment.runs)


def doublings_for(project: Project, env: str, asked: int | None) -> int:
    """The passes of doubled length to train: ``asked``, else one for a warmup-stable-decay
    grid (the convergence verdict needs it) and none for a schedule that cannot be extended."""
    if asked is None:
        return int(extendable(project))
    if asked > 0 and not extendable(project):
        raise UserError(f"{asked} doubling(s) need every run of {env} on a wsd schedule "
                        "(train.schedule: wsd): another schedule cannot be extended")
    return asked


def reached_passes(project: Project, base: Mapping[str, int]) -> dict[str, int]:
    """Per preset, the furthest pass its runs' checkpoints belong to (0 when none trained)."""
    reached = dict.fromkeys(base, 0)
    for run in project.experiment.runs:
        checkpoint = latest_checkpoint(project.path(f"{run.namespace}.training_run"))
        if checkpoint is not None:
            steps = read_state(checkpoint)["train_config"]["max_steps"]
            reached[run.preset] = max(reached[run.preset],
                                      round(math.log2(max(1, steps / base[run.preset]))))
    return reached


def pass_lengths(base: Mapping[str, int], reached: Mapping[str, int], k: int) -> dict[str, int]:
    """Each preset's ``train.max_steps`` in pass ``k``: ``base * 2**k``, or the longer length
    its runs have already reached (a preset driven ahead), since a shorter one would set
    those runs aside and train them again."""
    return {preset: n * 2 ** max(k, reached[preset]) for preset, n in base.items()}


def idle_jobs() -> int:
    """Runs at once: the cores idle now (at least one)."""
    idle = idle_cores()
    return max(1, int(idle + 0.5) if idle is not None else len(os.sched_getaffinity(0)))


def kedro_pass(root: Path, env: str, jobs: int, steps: Mapping[str, int],
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
        raise UserError(f"kedro run failed (exit code {code}); see its output above. Run "
                        "the same command again to continue where it stopped")


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


def train_grid(project: Project, env: str, doublings: int, jobs: int,
               presets: Sequence[str] | None = None) -> Path | None:
    """Every pass the grid still needs, up to ``doublings`` (as ``doublings_for`` gives
    them); the report's path, or None when ``presets`` trained some sizes only (no report)."""
    base = preset_lengths(project)
    unknown = sorted(set(presets or ()) - set(base))
    if unknown:
        raise UserError(f"presets {unknown}: {env} declares {sorted(base)}")
    chosen = list(presets or base)
    namespaces = [r.namespace for r in project.experiment.runs if r.preset in chosen] \
        if presets else []
    report = project.path(REPORT)
    reached = reached_passes(project, base)
    for k in range(min(reached[p] for p in chosen), doublings + 1):
        mark = time.perf_counter()
        kedro_pass(project.root, env, jobs, pass_lengths(base, reached, k), namespaces)
        print(f"pass {k}: {(time.perf_counter() - mark) / 60:.1f} min wall", flush=True)
        if presets:
            continue
        keep_pass_report(report, k)
        if k >= 1 and all_converged(json.loads(report.read_text())):
            print(f"every run converged after pass {k}", flush=True)
            break
    return None if presets else report
