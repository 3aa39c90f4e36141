"""The `aot` experiment (conf/aot) and the script that reruns its published figures."""

from __future__ import annotations

import importlib.util
import json

import pytest
import yaml

from backstory import variants
from backstory.experiment import run_settings
from backstory.lm.model import ModelConfig, Transformer
from tests.project import REPO, TINY_INGEST, make_project, tiny_run_params


def rerun_script():
    spec = importlib.util.spec_from_file_location("rerun_results",
                                                  REPO / "benchmarks/rerun_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_aot_runs_three_seeds_of_both_pairs_at_three_sizes_and_two_contexts():
    parameters, experiment = rerun_script().load(REPO, "aot")
    runs = experiment.runs
    assert {r.variant for r in runs} == {"forward", "reversed", "backward"}
    for variant in ("reversed", "backward"):  # both deltas: word order and token order
        assert variants.get(variant).compares_with == "forward"
    assert {r.size for r in runs} == {"tiny", "small", "medium", "small-c128"}
    for size in {r.size for r in runs}:
        for variant in ("forward", "reversed", "backward"):
            assert sorted(r.seed for r in runs if r.size == size and r.variant == variant) == [
                1, 2, 3]
    settings = {r.size: run_settings(parameters, r) for r in runs if r.variant == "forward"}
    # The size sweep compares equal training: the same steps of the same windows.
    assert {(s["train"]["max_steps"], s["train"]["batch_size"]) for s in settings.values()} \
        == {(150, 16)}
    assert {size: s["model"]["max_seq_len"] for size, s in settings.items()} == {
        "tiny": 256, "small": 256, "medium": 256, "small-c128": 128}
    counts = {size: Transformer(ModelConfig(vocab_size=2048, **settings[size]["model"]))
              .num_parameters() for size in ("tiny", "small", "medium")}
    assert counts == {"tiny": 328_256, "small": 1_000_576, "medium": 4_213_504}


def test_runs_are_split_over_processes_once_each_and_balanced():
    split = rerun_script().split_runs
    costs = {"a": 5.0, "b": 4.0, "c": 3.0, "d": 3.0, "e": 1.0}
    parts = split(costs, 2)
    assert sorted(n for part in parts for n in part) == sorted(costs)
    assert sorted(sum(costs[n] for n in part) for part in parts) == [8.0, 8.0]
    assert split(costs, 1) == [["a", "b", "c", "d", "e"]]
    assert split({"a": 1.0}, 4) == [["a"]]  # no empty processes


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
                                                   "generate_batch_size": 2,
                                                   "max_new_tokens": 16}}})
    aot = root / "conf/aot/parameters_runs.yml"
    data = yaml.safe_load(aot.read_text())
    data["experiment"]["main"].update(presets=["small", "tiny"], seeds=[1, 2])
    data["experiment"]["context"].update(contexts=[64], seeds=[1, 2])
    data["presets"] = {"small": {"model": shape},
                       "tiny": {"model": {**shape, "dim": 16}}}
    data["run_defaults"] = tiny["run_defaults"]
    aot.write_text(yaml.safe_dump(data, sort_keys=False))
    assert rerun_script().main(["--root", str(root), "--jobs", "2", "--steps", "1",
                                "--fixed-s", "0"]) == 0
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
    assert "wall time:" in out and "backward vs forward (nats per token)" in out
