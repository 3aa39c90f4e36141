"""The `aot` experiment (conf/aot) and the script that reruns its published figures."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json

import pytest
import yaml

from backstory.core.errors import UserError
from backstory.experiment import run_settings
from backstory.tools import grid
from backstory.tools.locate import Project
from tests.project import (
    REPO,
    TINY_INGEST,
    deep_update,
    make_project,
    tiny_run_params,
)


def rerun_script():
    spec = importlib.util.spec_from_file_location("rerun_results",
                                                  REPO / "benchmarks/rerun_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_grid_trains_every_run_of_a_preset_for_one_length_or_refuses():
    """The size sweep compares equal training: the grid takes one length per preset
    and refuses an experiment whose runs of one preset would train for different steps."""
    project = Project.load(REPO, "aot")
    assert len(set(grid.preset_lengths(project).values())) == 1
    # as `--params reversed.small.s1.train.max_steps=100` would leave them
    uneven = deep_update(copy.deepcopy(project.parameters),
                         {"reversed": {"small": {"s1": {"train": {"max_steps": 100}}}}})
    with pytest.raises(UserError, match="different max_steps"):
        grid.preset_lengths(dataclasses.replace(project, parameters=uneven))


def test_only_a_wsd_grid_is_doubled():
    """One doubling by default where every run can be extended, none otherwise; doublings
    asked of a schedule that cannot be extended are refused, naming the setting."""
    assert grid.doublings_for(Project.load(REPO, "aot_converged"), "aot_converged", None) == 1
    cosine = Project.load(REPO, "aot")
    assert grid.doublings_for(cosine, "aot", None) == 0
    assert grid.doublings_for(cosine, "aot", 0) == 0
    with pytest.raises(UserError, match="train.schedule: wsd"):
        grid.doublings_for(cosine, "aot", 2)


def test_aot_converged_pairs_every_run_with_forward_at_equal_tokens_and_can_double_it():
    """What the converged experiment's answer needs of its declaration, whatever its sizes:
    every delta pairs a run with forward's run of the same size and seed; sizes compare at
    equal training tokens; every run can be doubled (wsd); the issue's minimum grid."""
    project = Project.load(REPO, "aot_converged")
    parameters, runs = project.parameters, project.experiment.runs
    forward = {(r.size, r.seed) for r in runs if r.variant == "forward"}
    assert {(r.size, r.seed) for r in runs} == forward
    assert {"reversed", "backward", "permuted"} <= {r.variant for r in runs}
    tokens = set()
    for run in runs:
        train = run_settings(parameters, run)["train"]
        assert train["schedule"] == "wsd", run.namespace
        tokens.add(train["max_steps"] * train["batch_size"] * train["grad_accum"]
                   * run_settings(parameters, run)["model"]["max_seq_len"])
    assert len(tokens) == 1
    assert len({r.size for r in runs}) >= 3
    assert all(len({r.seed for r in runs if r.size == size and r.variant == "forward"}) >= 5
               for size in {r.size for r in runs})


def test_a_doubling_pass_trains_from_the_previous_length_stable_end():
    pass_steps = rerun_script().pass_steps
    assert pass_steps(500, 0, 0.2) == 500
    assert pass_steps(500, 1, 0.2) == 1000 - 400  # from step 400 of the 500-step run
    assert pass_steps(500, 2, 0.2) == 2000 - 800


def test_a_size_driven_ahead_keeps_its_length_while_the_others_catch_up():
    pass_lengths = grid.pass_lengths
    base = {"micro": 500, "tiny": 500}
    # micro went through pass 1 alone (--presets micro); tiny has trained nothing yet
    assert pass_lengths(base, {"micro": 1, "tiny": 0}, 0) == {"micro": 1000, "tiny": 500}
    assert pass_lengths(base, {"micro": 1, "tiny": 0}, 1) == {"micro": 1000, "tiny": 1000}
    assert pass_lengths(base, {"micro": 1, "tiny": 0}, 2) == {"micro": 2000, "tiny": 2000}


def gpu_script():
    spec = importlib.util.spec_from_file_location("gpu_grid", REPO / "benchmarks/gpu_grid.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gpu_grid_plans_four_sizes_on_two_corpora_and_checks_every_setting(tmp_path):
    gpu = gpu_script()
    lines = {}
    for corpus in gpu.CORPORA:
        root = gpu.project_copy(tmp_path / corpus, corpus)
        lines[corpus] = gpu.plan(root, corpus)
    assert lines["storyworld"][0].startswith("storyworld: corpus storyworld, 100,000 stories")
    assert lines["tinystories_v2"][0].startswith("tinystories_v2: corpus tinystories v2")
    for found in lines.values():
        assert "65 runs" in found[0]
        assert [line.split(":")[0].strip() for line in found[1:]] == [
            "small", "medium", "stories15m", "stories42m"]
        assert "7,155,360 parameters" in found[3] and "27,402,752 parameters" in found[4]
        assert "permuted x5" in found[1]
    # A bad setting in the environment stops the plan, naming it.
    runs = tmp_path / "storyworld/conf/aot_gpu/parameters_runs.yml"
    data = yaml.safe_load(runs.read_text())
    data["run_defaults"]["train"]["lr"] = -1
    runs.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match="train.lr"):
        gpu.plan(tmp_path / "storyworld", "storyworld")


@pytest.mark.slow
def test_a_tiny_aot_rerun_reports_every_size_over_seeds(tmp_path, capsys):
    """The whole script on a tiny aot grid (two seeds, tiny shapes): two processes train,
    the report gives every size's deltas over seeds and the sweep over sizes."""
    tiny = tiny_run_params()
    shape = tiny["presets"]["small"]["model"]
    root = make_project(tmp_path / "project", {"parameters_ingest.yml": TINY_INGEST,
                                               "parameters_runs.yml": tiny,
                                               "parameters_compare.yml": {"compare": {
                                                   "n_boot": 50, "n_stories": 2,
                                                   "generate_batch_size": 2}}})
    aot = root / "conf/aot/parameters_runs.yml"
    data = yaml.safe_load(aot.read_text())
    data["experiment"]["main"].update(presets=["small", "tiny"], seeds=[1, 2])
    data["experiment"]["context"].update(contexts=[64], seeds=[1, 2])
    data["presets"] = {"small": {"model": shape},
                       "tiny": {"model": {**shape, "dim": 16}}}
    data["run_defaults"] = tiny["run_defaults"]
    aot.write_text(yaml.safe_dump(data, sort_keys=False))
    assert rerun_script().main(["--root", str(root), "--env", "aot", "--jobs", "2",
                                "--steps", "1", "--fixed-s", "0"]) == 0
    report = json.loads((root / "data/08_reporting/compare/report.json").read_text())
    sizes = {s["size"]: s for s in report["arrow_of_time"]["sizes"]}
    assert set(sizes) == {"small", "tiny", "small-c64"}
    for size in sizes.values():
        assert {(d["variant"], d["partner"]) for d in size["deltas"]} == {
            ("reversed", "forward"), ("backward", "forward")}
        assert all(d["method"] == "seeds and documents" and d["n_seeds"] == 2
                   for d in size["deltas"])
    sweeps = report["arrow_of_time"]["sweeps"]
    assert {(r["size"], r["pair"]) for r in sweeps["by_params"]} == {
        (s, p) for s in sizes for p in ("reversed vs forward", "backward vs forward")}
    assert (root / "data/08_reporting/compare/sweep.png").is_file()
    out = capsys.readouterr().out
    assert "pass 0:" in out and "backward vs forward (nats per token)" in out
    table = out.split("against training tokens")[1].splitlines()[3:]
    assert sorted(row.split(" | ")[0] for row in table) == ["| small", "| small-c64", "| tiny"]


def test_the_muon_plan_pairs_each_adamw_run_with_a_muon_run_of_the_same_shape():
    project = Project.load(REPO, "aot_muon")
    parameters, experiment = project.parameters, project.experiment
    settings = {r.size: run_settings(parameters, r) for r in experiment.runs
                if r.variant == "forward" and r.seed == 1}
    adamw, muon = settings["tiny"], settings["tiny_muon"]
    assert {k: v for k, v in muon["model"].items() if k != "zero_init_out"} == {
        k: v for k, v in adamw["model"].items() if k != "zero_init_out"}
    assert (adamw["train"]["optimizer"], muon["train"]["optimizer"]) == ("adamw", "muon")
    assert adamw["train"]["schedule"] == muon["train"]["schedule"] == "wsd"
    assert len(experiment.runs) == 2 * 3 * 5


@pytest.mark.parametrize("env,reports", [("aot_converged", "aot_converged_dev/*/pass0"),
                                          ("aot_muon", "aot_muon_dev/pass0"),
                                          ("aot_instruct", "aot_instruct_dev"),
                                          ("aot_lr", "aot_lr_dev/pass0")])
def test_the_published_grid_reports_were_trained_as_the_shipped_conf_declares(env, reports):
    """A grid's published figures stay rerunnable only while its conf still trains those
    runs: the same windows per step and steps (so a change of conf/base's defaults that a
    grid inherits shows here, not in a rerun hours later)."""
    project = Project.load(REPO, env)
    parameters, experiment = project.parameters, project.experiment
    declared = {r.namespace: run_settings(parameters, r) for r in experiment.runs}
    published = {}
    for report in sorted((REPO / "docs/measurements").glob(f"{reports}/report.json")):
        published.update(json.loads(report.read_text())["models"])
    assert published and set(published) <= set(declared)
    for name, model in published.items():
        train, shape = declared[name]["train"], declared[name]["model"]
        assert (model["tokens_per_step"], model["steps"], model["seq_len"]) == (
            train["batch_size"] * train["grad_accum"] * shape["max_seq_len"],
            train["max_steps"], shape["max_seq_len"]), name
