"""A grid of runs under Kedro's ParallelRunner: the sequential bytes, and resuming after a kill.

Each test runs ``kedro run`` as a real process in a throw-away copy of the project.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backstory.lm.checkpoint import latest_checkpoint, read_state
from backstory.lm.training.logs import SPEED_LOG
from tests.project import TINY_INGEST, deep_update, make_project, tiny_run_params

pytestmark = pytest.mark.slow

TWO_SEEDS = {"experiment": {"main": {"variants": ["forward"], "presets": ["small"],
                                     "seeds": [1, 2]}}}


def project(root: Path, runs: dict) -> Path:
    return make_project(root, {"parameters_ingest.yml": TINY_INGEST,
                               "parameters_runs.yml": deep_update(tiny_run_params(), runs)})


def kedro_run(root: Path, *args: str) -> subprocess.Popen:
    """``kedro run`` in its own process group, its output to ``<root>/kedro.log`` (a pipe
    nobody reads while the test polls would fill and stop it)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(KEDRO_DISABLE_TELEMETRY="1", COLUMNS="1000")  # log lines unwrapped
    with open(root / "kedro.log", "w") as log:
        return subprocess.Popen([sys.executable, "-m", "kedro", "run", "--pipelines",
                                 "forward", *args], cwd=root, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def finish(process: subprocess.Popen, root: Path) -> str:
    process.wait(timeout=900)
    output = (root / "kedro.log").read_text()
    assert process.returncode == 0, output[-3000:]
    return output


def run_files(root: Path) -> dict[str, bytes]:
    """Every file the runs wrote but their wall-clock speed logs."""
    found = {}
    for folder in ("data/06_models/forward", "data/08_reporting/forward"):
        for path in sorted((root / folder).rglob("*")):
            if path.is_file() and path.name != SPEED_LOG and ".lock" not in path.name:
                found[path.relative_to(root).as_posix()] = path.read_bytes()
    return found


def test_the_parallel_runner_writes_the_sequential_bytes(tmp_path: Path) -> None:
    sequential = project(tmp_path / "sequential", TWO_SEEDS)
    parallel = project(tmp_path / "parallel", TWO_SEEDS)
    finish(kedro_run(sequential), sequential)
    said = finish(kedro_run(parallel, "--runner", "ParallelRunner",
                            "--runner-params", "max_workers=2"), parallel)
    assert said.count("training on 1 CPU thread(s) per process") == 2  # one per run
    first, second = run_files(sequential), run_files(parallel)
    assert {"data/06_models/forward/small/s1/model/model.safetensors",
            "data/06_models/forward/small/s2/model/model.safetensors",
            "data/08_reporting/forward/small/s2/metrics.json"} <= set(first)
    assert first.keys() == second.keys()
    assert [name for name in first if first[name] != second[name]] == []


def test_a_killed_parallel_grid_resumes_without_redoing_a_finished_run(tmp_path: Path) -> None:
    # A short run beside a long one: kill the grid once the short one has finished and the
    # long one has checkpoints, then run the same command again. The kill comes once the
    # long one passes step 40 (it was at 40 when measured): 1000 steps leave it far from
    # done, and the resumed run trains all the rest (few evaluations keep steps cheap).
    long_steps = 1000
    root = project(tmp_path / "grid", {
        "experiment": {"main": {"variants": ["forward"], "presets": ["small", "long"],
                                "seeds": [1]}},
        "presets": {"long": {"model": tiny_run_params()["presets"]["small"]["model"],
                             "train": {"max_steps": long_steps, "checkpoint_interval": 20,
                                       "eval_interval": 500, "log_interval": 50}}},
    })
    short, long = (root / "data/06_models/forward" / p / "s1" for p in ("small", "long"))
    command = ("--runner", "ParallelRunner", "--runner-params", "max_workers=2")
    grid = kedro_run(root, *command)
    deadline = time.monotonic() + 600
    while not ((short / "model").is_dir() and latest_checkpoint(long / "run") is not None
               and read_state(latest_checkpoint(long / "run"))["step"] >= 40):
        assert grid.poll() is None, (root / "kedro.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the grid did not get far enough in 10 minutes"
        time.sleep(0.5)
    os.killpg(grid.pid, signal.SIGKILL)
    grid.wait()
    killed_at = read_state(latest_checkpoint(long / "run"))["step"]
    assert killed_at < long_steps
    finished = {p: p.read_bytes() for p in sorted((short / "run").rglob("*")) if p.is_file()}

    said = finish(kedro_run(root, *command), root)
    assert f"Run in {short / 'run'} already finished at step 6" in said
    assert {p: p.read_bytes() for p in sorted((short / "run").rglob("*"))
            if p.is_file()} == finished  # not one step trained again
    assert f"Resumed {long / 'run'} from step_{killed_at:08d}" in said
    assert read_state(latest_checkpoint(long / "run"))["step"] == long_steps


def test_the_grid_driver_doubles_a_wsd_grid_and_reports_convergence(tmp_path: Path) -> None:
    """`backstory grid`: pass 0, then every run continued to twice its tokens from its
    stable-phase checkpoint; the report judges each run by the doubling."""
    root = project(tmp_path / "grid", {
        "experiment": {"main": {"variants": ["forward", "backward"], "presets": ["small"],
                                "seeds": [1]}},
        "run_defaults": {"train": {"schedule": "wsd", "max_steps": 10, "eval_interval": 5,
                                   "checkpoint_interval": 5}},
    })
    command = [sys.executable, "-m", "backstory.tools.cli", "grid", "--project-dir", str(root),
               "--env", "base", "--jobs", "2"]
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "COLUMNS": "1000"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    said = done.stdout + done.stderr
    assert "presets.small.train.max_steps=10" in said and "presets.small.train.max_steps=20" in said
    assert said.count("Continuing") == 2  # both runs continued, none trained from step 0 again
    report = json.loads((root / "data/08_reporting/compare/report.json").read_text())
    for run in ("forward.small.s1", "backward.small.s1"):
        found = report["convergence"]["runs"][run]
        assert found["from_tokens"] * 2 == found["to_tokens"]
        assert found["verdict"] in ("converged", "falling", "rising")
        metrics = json.loads((root / f"data/08_reporting/{run.replace('.', '/')}/metrics.json"
                              ).read_text())
        assert [c["steps"] for c in metrics["cooldowns"]] == [10, 20]
    # Run again: it starts at pass 1, where the runs are, and trains nothing.
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert "max_steps=10" not in again.stdout + again.stderr
    assert (again.stdout + again.stderr).count("already finished at step 20") == 2
