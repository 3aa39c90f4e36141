"""dvc.yaml against the Kedro pipelines, and DVC behaviour on a tiny copy of the project.

The fast tests hold dvc.yaml, the experiment and Kedro together. The slow ones build a
temporary git repository from the project's files with small parameters and run DVC in
it: repro, no-op repro, bit-identity of two clean runs, checkout, push/pull through a
local remote, a parameter experiment, an edited module, an added seed, and a `dvc repro`
killed during training and resumed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from backstory import experiment, params
from backstory.data.corpus.story_table import StoryTable
from backstory.data.token_store import TokenStore
from backstory.data.tokenizer import Tokenizer
from backstory.evaluation.lineage import LineageError
from backstory.lm.checkpoint import load_trained
from backstory.lm.training import LIVE_DIR, TrainConfig, train
from backstory.pipeline_registry import build_pipelines
from backstory.pipelines.run.evaluate_nodes import evaluate
from backstory.tools import dvc_stages
from tests.project import (
    REPO,
    TINY_INGEST,
    deep_update,
    make_project,
    model_config,
    tiny_run_params,
)

# One torch thread per stage process, as in test_faults.py: the tiny models gain nothing
# from more, and on a busy machine each thread waiting for a core stalls every matmul.
ENV = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "1",
       "OMP_NUM_THREADS": "1"}
RUNS_FILE = "conf/base/parameters_runs.yml"
# Cross-run comparison settings that keep it to seconds on CPU.
TINY_COMPARE = {"n_boot": 50, "n_stories": 2, "generate_batch_size": 2}


def raw_params(root: Path = REPO) -> dict:
    """Every conf/base parameter file of ``root``, merged (their top-level keys differ)."""
    merged: dict = {}
    for path in sorted((root / "conf/base").glob("parameters*.yml")):
        merged |= yaml.safe_load(path.read_text()) or {}
    return merged


def base_experiment(root: Path = REPO) -> experiment.Experiment:
    return experiment.declared(raw_params(root))


# ------------------------------------------------------------------ dvc.yaml vs kedro


def expand_stages(document: dict, root: Path = REPO) -> dict[str, dict]:
    """dvc.yaml stages with `foreach` expanded as DVC names them
    (train-reversed-small-main@1337), reading the seeds from the parameter file."""
    variables: dict = {}
    for entry in document.get("vars", []):
        path, _, key = entry.partition(":")
        variables[key] = yaml.safe_load((root / path).read_text())[key]
    stages = {}
    for name, body in document["stages"].items():
        if "foreach" not in body:
            stages[name] = body
            continue
        items = body["foreach"]
        if isinstance(items, str):
            items = variables
            for part in body["foreach"].removeprefix("${").removesuffix("}").split("."):
                items = items[part]
        text = json.dumps(body["do"])
        for item in items:
            stages[f"{name}@{item}"] = json.loads(text.replace("${item}", str(item)))
    return stages


def stage_of(step: str, run: experiment.RunSpec, grid: str = "main") -> str:
    return f"{step}-{run.variant}-{run.size}-{grid}@{run.seed}"


def stage_nodes(cmd: str, registered: dict) -> list:
    """The Kedro nodes a stage's `kedro run` command runs."""
    pipeline = re.search(r"--pipelines (\S+)", cmd).group(1)
    nodes = list(registered[pipeline].nodes)
    selected = re.search(r"--nodes (\S+)", cmd)
    if selected:
        names = selected.group(1).split(",")
        nodes = [n for n in nodes if n.name in names]
        assert len(nodes) == len(names), f"{cmd}: names a node the pipeline lacks"
    return nodes


def params_of(body: dict) -> set[tuple[str, str]]:
    return {(path, key) for entry in body.get("params", []) for path, keys in entry.items()
            for key in keys or ()}


def paths_of(entries: list) -> set[str]:
    return {next(iter(e)) if isinstance(e, dict) else e for e in entries}


def has_key(data: dict, dotted: str) -> bool:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


def test_dvc_yaml_is_current():
    assert dvc_stages.main(["--root", str(REPO), "--check"]) == 0


def test_every_node_runs_once_on_what_earlier_stages_wrote():
    """What DVC needs of dvc.yaml to run the Kedro project: every node runs in exactly one
    stage, every data a stage reads is written by a stage before it (compare reads the
    folders of all seeds), and every parameter key a stage tracks exists in its file."""
    registered = build_pipelines(base_experiment())
    files = {path.relative_to(REPO).as_posix(): yaml.safe_load(path.read_text())
             for path in REPO.glob("conf/base/parameters*.yml")}
    written: set[str] = set()
    run_by: dict[str, str] = {}
    for name, body in expand_stages(yaml.safe_load((REPO / "dvc.yaml").read_text())).items():
        for node in stage_nodes(body["cmd"], registered):
            assert node.name not in run_by, f"{node.name} runs in two stages"
            run_by[node.name] = name
        for dep in (d for d in body["deps"] if not d.startswith("src/")):
            assert any(dep == w or w.startswith(dep + "/") or dep.startswith(w + "/")
                       for w in written), f"{name} reads {dep}, which no earlier stage writes"
        written |= paths_of(body.get("outs", []) + body.get("metrics", [])
                            + body.get("plots", []))
        for path, key in params_of(body):
            assert path in files and has_key(files[path], key), f"{name}: {path}:{key}"
    assert set(run_by) == {n.name for p in registered.values() for n in p.nodes}


def src(*paths: str) -> set[str]:
    return {f"src/backstory/{p}" for p in paths}


def test_each_stage_depends_on_the_code_its_own_nodes_run():
    stages = expand_stages(yaml.safe_load((REPO / "dvc.yaml").read_text()))
    deps = {name: {d for d in body["deps"] if d.startswith("src/")}
            for name, body in stages.items()}
    assert src("pipelines/ingest/nodes.py", "data/corpus/clean.py",
               "data/corpus/storyworld/stories.py", "data/tokenizer.py") <= deps["ingest"]
    assert src("data/documents.py", "data/text.py", "data/token_writer.py", "variants.py",
               "pipelines/run/export_nodes.py") <= deps["export@instruct"]
    assert src("lm/training/loop.py", "lm/model.py", "lm/checkpoint.py",
               "datasets/model_dataset.py") <= deps["train-reversed-small-main@1337"]
    assert src("evaluation/evaluate.py", "evaluation/metrics.py") <= deps[
        "evaluate-forward-small-main@1337"]
    for name, paths in deps.items():
        layer = {p.split("/")[2] for p in paths}
        if name.startswith("export"):  # exports: no training, evaluation or model code
            assert {"lm", "evaluation"}.isdisjoint(layer), name
        if name.startswith("train"):  # training: not the corpus generator or the report
            assert not any("corpus" in p for p in paths), name
            # only the per-story scoring its evaluation curve runs (evaluation/curve.py)
            assert {p for p in paths if "/evaluation/" in p} == src(
                "evaluation/__init__.py", "evaluation/curve.py", "evaluation/metrics.py"), name
        if name.startswith(("evaluate", "compare")):  # evaluation runs no training code
            assert not any("lm/training" in p for p in paths), name
        if name == "ingest":
            assert {"lm", "evaluation"}.isdisjoint(layer), name
        # The wiring (pipeline.py) is not code a stage runs: a wiring change shows in
        # dvc.yaml itself.
        assert not any(p.endswith("/pipeline.py") for p in paths), name
        missing = [p for p in paths if not (REPO / p).exists()]
        assert not missing, f"{name}: deps that do not exist: {missing}"


def test_metrics_and_plots_cover_every_run():
    document = yaml.safe_load((REPO / "dvc.yaml").read_text())
    stages = expand_stages(document)
    runs = base_experiment().runs
    assert {r.variant for r in runs} == {"forward", "reversed", "instruct", "backward"}
    for run in runs:
        folder = f"{run.variant}/{run.size}/s{run.seed}"
        assert stages[stage_of("evaluate", run)]["metrics"] == [
            f"data/08_reporting/{folder}/metrics.json"]
        live = f"data/06_models/{folder}/live"  # DVCLive's summary and curves
        train = stages[stage_of("train", run)]
        assert train["metrics"] == [{f"{live}/metrics.json": {"persist": True}}]
        assert train["plots"] == [{f"{live}/plots/metrics": {"persist": True, "x": "step"}}]
    assert "plots" not in document  # DVCLive's curves, declared by the train stages


def test_changing_the_seeds_needs_no_new_dvc_yaml(tmp_path):
    """DVC reads each grid's seeds from the parameter file (what `dvc exp run -S` edits)."""
    root = make_project(tmp_path / "project")
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    path = root / RUNS_FILE
    data = yaml.safe_load(path.read_text())
    data["experiment"]["main"]["seeds"] = [1, 2, 3]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert dvc_stages.main(["--root", str(root), "--check"]) == 0
    stages = expand_stages(yaml.safe_load((root / "dvc.yaml").read_text()), root)
    assert {n for n in stages if n.startswith("train-forward-small-main@")} == {
        f"train-forward-small-main@{s}" for s in (1, 2, 3)}
    body = stages["train-forward-small-main@2"]
    assert "--nodes forward.small.s2.train_model" in body["cmd"]
    assert "data/06_models/forward/small/s2/run" in paths_of(body["outs"])


def test_a_run_in_two_grids_is_refused(tmp_path):
    root = make_project(tmp_path / "project", {"parameters_runs.yml": {"experiment": {
        "again": {"variants": ["forward"], "presets": ["small"], "seeds": [1337]}}}})
    with pytest.raises(dvc_stages.StageError, match="forward.small.s1337 is declared by two"):
        dvc_stages.build(root)


def test_renamed_dataset_makes_dvc_yaml_stale(tmp_path):
    root = make_project(tmp_path / "project")
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    assert dvc_stages.main(["--root", str(root), "--check"]) == 0
    catalog = root / "conf/base/catalog.yml"
    catalog.write_text(catalog.read_text().replace(
        "data/08_reporting/{variant}/{size}/{seed}/metrics.json",
        "data/08_reporting/{variant}/{size}/{seed}/scores.json"))
    assert dvc_stages.main(["--root", str(root), "--check"]) == 1
    assert dvc_stages.main(["--root", str(root)]) == 0
    assert "data/08_reporting/forward/small/s${item}/scores.json" in (
        root / "dvc.yaml").read_text()
    assert dvc_stages.main(["--root", str(root), "--check"]) == 0


def test_parameter_files_must_be_plain_and_complete(tmp_path):
    root = make_project(tmp_path / "project")
    path = root / RUNS_FILE
    text = path.read_text()
    path.write_text(re.sub(r"\blr: [0-9.]+", "lr: ${run_defaults.train.min_lr}", text, count=1))
    with pytest.raises(dvc_stages.StageError, match="parameters_runs.yml.*interpolation"):
        dvc_stages.build(root)


def test_a_variant_entry_is_tracked_by_its_own_stages_once_it_exists(tmp_path):
    """A variant that changes nothing has no YAML entry; one given an entry has its
    stages (and only those) track it, its export written apart from the foreach."""
    root = make_project(tmp_path / "project", {"parameters_runs.yml": {
        "text": {"reversed": {"batch_size": 64}},
        "variant_settings": {"reversed": {"train": {"lr": 0.001}}}}})
    stages = expand_stages(dvc_stages.build(root)[1], root)
    tracking = {name: {key for _, key in params_of(body) if key.startswith(
        ("text.", "variant_settings."))} for name, body in stages.items()}
    assert tracking["export-reversed"] == {"text.defaults", "text.reversed"}
    assert tracking["export@forward"] == tracking["export@instruct"] == {"text.defaults"}
    for step in ("train", "evaluate"):
        assert tracking[f"{step}-reversed-small-main@1337"] == {"variant_settings.reversed"}
        assert tracking[f"{step}-forward-small-main@1337"] == set()
    assert "export@reversed" not in stages


def test_an_added_seed_adds_its_own_stages_and_changes_no_other(tmp_path):
    root = make_project(tmp_path / "project")
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    before = expand_stages(yaml.safe_load((root / "dvc.yaml").read_text()), root)
    path = root / RUNS_FILE
    data = yaml.safe_load(path.read_text())
    data["experiment"]["more_seeds"] = {"variants": ["forward", "reversed"],
                                        "presets": ["small"], "seeds": [1, 2]}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert dvc_stages.main(["--root", str(root)]) == 0
    after = expand_stages(yaml.safe_load((root / "dvc.yaml").read_text()), root)
    added = set(after) - set(before)
    assert added == {f"{step}-{v}-small-more_seeds@{s}" for step in ("train", "evaluate")
                     for v in ("forward", "reversed") for s in (1, 2)}
    changed = {name for name in before if after[name] != before[name]}
    assert changed == set()  # compare depends on the folders of all seeds: the same


# ------------------------------------------------------------------ the temporary repo


def sh(root: Path, *args: str, check: bool = True) -> str:
    """Run a command in `root`; the error shows its output."""
    done = subprocess.run(args, cwd=root, env=ENV, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({done.returncode}):\n"
                             f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return done.stdout + done.stderr


def project_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    return [f for f in listed if (REPO / f).is_file()]


def make_repo(root: Path, runs_changes: dict | None = None) -> Path:
    """A git repo holding the project's files, with parameters small enough for CPU."""
    for name in project_files():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, root / name)
    changes = {"parameters_ingest.yml": TINY_INGEST,
               "parameters_runs.yml": deep_update(tiny_run_params(), runs_changes or {}),
               "parameters_compare.yml": {"compare": TINY_COMPARE}}
    for file_name, change in changes.items():
        path = root / "conf/base" / file_name
        data = yaml.safe_load(path.read_text())
        path.write_text(yaml.safe_dump(deep_update(data, change), sort_keys=False))
    assert dvc_stages.main(["--root", str(root)]) == 0
    sh(root, "git", "init", "-q")
    sh(root, "git", "config", "user.email", "test@example.com")
    sh(root, "git", "config", "user.name", "test")
    sh(root, "dvc", "config", "core.analytics", "false")
    commit(root, "project")
    return root


def commit(root: Path, message: str) -> None:
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-q", "--allow-empty", "-m", message)


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def lock_hashes(root: Path) -> dict[str, str]:
    """path -> md5 of every out, dep and metric recorded in dvc.lock."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    hashes = {}
    for stage in lock["stages"].values():
        for section in ("deps", "outs"):
            for entry in stage.get(section, []):
                hashes[entry["path"]] = entry["md5"]
    return hashes


def repo_stages(root: Path) -> set[str]:
    return set(expand_stages(yaml.safe_load((root / "dvc.yaml").read_text()), root))


# Three variants cover each kind of stage: forward (the baseline compare needs), reversed
# (tokens of its own, and an empty variant entry its stages track), backward (forward's
# tokens in another order). instruct's stages are of reversed's kinds (an export of its own
# tokens, train, evaluate; the fast tests above check them); leaving it out saves a quarter
# of every repro.
VARIANTS = ("forward", "reversed", "backward")


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """The tiny project after one `dvc repro` (committed), with every run's output."""
    root = make_repo(tmp_path_factory.mktemp("dvc") / "repo",
                     {"experiment": {"main": {"variants": list(VARIANTS)}},
                      "variant_settings": {"reversed": {}}})
    first = sh(root, "dvc", "repro")
    second = sh(root, "dvc", "repro")
    commit(root, "first run")
    return {"root": root, "first": first, "second": second, "lock": lock_hashes(root)}


RUN = "small/s1337"  # the tiny repo's runs: preset small, seed 1337


@pytest.mark.slow
def test_repro_runs_every_stage_then_none(repo):
    root = repo["root"]
    assert ran(repo["first"]) == repo_stages(root)
    assert ran(repo["second"]) == set()
    assert "up to date" in repo["second"]
    shown = json.dumps(json.loads(sh(root, "dvc", "metrics", "show", "--json")))
    for variant in VARIANTS:
        assert f"data/08_reporting/{variant}/{RUN}/metrics.json" in shown
    # DVCLive's output, read by DVC's own commands: no code of ours in between.
    plots = json.loads(sh(root, "dvc", "plots", "show", "--json"))["data"]
    (row,) = [entry for entry in flatten_exps(json.loads(sh(root, "dvc", "exp", "show",
                                                            "--json")))
              if entry.get("rev") == "workspace"]
    for variant in VARIANTS:
        live = f"data/06_models/{variant}/{RUN}/live"
        for curve in ("train/loss", "train/lr", "val/loss"):
            values = plots[f"{live}/plots/metrics/{curve}.tsv"][0]["content"]["data"]["values"]
            assert [int(v["step"]) for v in values][-1] == 6  # the tiny runs' last step
        summary = metrics_of(row)[f"{live}/metrics.json"]["data"]
        assert summary["step"] == 6 and summary["val"]["loss"] > 0
        params = row["data"]["params"][f"{live}/params.yaml"]["data"]
        assert params["train"]["max_steps"] == 6 and params["machine"]["cpu_capability"]


@pytest.mark.slow
def test_artifacts_record_their_lineage(repo):
    root = repo["root"]
    report = json.loads((root / "data/08_reporting/ingest_report.json").read_text())
    tokenizer = Tokenizer.from_file(root / "data/06_models/tokenizer/tokenizer.model")
    raw = raw_params(root)
    for run in experiment.declared(raw).runs:
        settings = experiment.run_settings(raw, run)
        with TokenStore(root / f"data/05_model_input/{run.token_source}/train.h5") as store:
            attrs = dict(store.attrs)
        assert attrs["corpus_fingerprint"] == report["corpus_fingerprint"]
        assert attrs["tokenizer_sha256"] == tokenizer.sha256
        assert attrs["text_params_sha256"] == params.sha256(
            experiment.text_settings(raw, run.token_source))
        assert attrs["package_version"]
        folder = f"{run.variant}/{run.size}/s{run.seed}"
        meta = load_trained(root / f"data/06_models/{folder}/model").meta
        lineage = meta["lineage"]
        assert lineage["tokenizer_sha256"] == tokenizer.sha256
        assert lineage["corpus_fingerprint"] == report["corpus_fingerprint"]
        assert (lineage["variant"], lineage["tokens_variant"]) == (run.variant, run.token_source)
        assert lineage["run"] == run.describe() and lineage["package_version"]
        assert meta["params_sha256"] == params.sha256(
            {"model": settings["model"], "train": settings["train"]})
        assert meta["train_config"]["seed"] == run.seed
        assert "elapsed_s" not in meta
        metrics = json.loads((root / f"data/08_reporting/{folder}/metrics.json").read_text())
        assert metrics["run"] == run.describe()
        assert metrics["lineage"]["corpus_fingerprint"] == report["corpus_fingerprint"]
        assert metrics["lineage"]["tokenizer_sha256"] == tokenizer.sha256
        assert metrics["lineage"]["train_params_sha256"] == meta["params_sha256"]
        assert metrics["lineage"]["evaluate_params_sha256"] == params.sha256(
            settings["evaluate"])


@pytest.mark.slow
def test_evaluation_refuses_a_model_from_another_tokenizer(repo):
    root = repo["root"]
    tokenizer = Tokenizer.from_file(root / "data/06_models/tokenizer/tokenizer.model")
    trained = load_trained(root / f"data/06_models/forward/{RUN}/model")
    foreign_sha = "f" * 64  # as if trained with another tokenizer
    meta = trained.meta | {"lineage": trained.meta["lineage"] | {"tokenizer_sha256": foreign_sha}}
    foreign = dataclasses.replace(trained, meta=meta)
    run = base_experiment(root).run("forward.small.s1337")
    settings = experiment.run_settings(raw_params(root), run)
    with (TokenStore(root / "data/05_model_input/forward/val.h5") as val,
          TokenStore(root / "data/05_model_input/forward/train.h5") as train_store):
        with pytest.raises(LineageError) as err:
            evaluate(foreign, val, train_store, tokenizer,
                     StoryTable(root / "data/02_intermediate/stories"), settings["evaluate"],
                     run=run.describe())
    assert tokenizer.sha256 in str(err.value) and foreign_sha in str(err.value)


@pytest.mark.slow
def test_two_clean_runs_give_the_same_hashes(repo):
    """Every artifact in dvc.lock, run folders included, is bit-identical; the
    machine-specific speed logs are there but ignored by DVC (.dvcignore)."""
    root = repo["root"]
    output = sh(root, "dvc", "repro", "--force")
    assert ran(output) == repo_stages(root)
    again = lock_hashes(root)
    assert again.keys() == repo["lock"].keys()
    differ = sorted(path for path in again if again[path] != repo["lock"][path])
    assert differ == []
    for variant in VARIANTS:
        run = root / f"data/06_models/{variant}/{RUN}/run"
        assert (run / "speed_log.csv").is_file()
        assert "speed_log.csv" not in json.dumps(lock_entry(root, str(run.relative_to(root))))
    sh(root, "git", "checkout", "--", "dvc.lock")
    sh(root, "dvc", "checkout", "--force")
    assert sh(root, "dvc", "status").strip().endswith("Data and pipelines are up to date.")


def lock_entry(root: Path, path: str) -> dict:
    """The dvc.lock out entry of ``path`` with its directory listing from the cache."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    entry = next(out for stage in lock["stages"].values() for out in stage.get("outs", [])
                 if out["path"] == path)
    digest = entry["md5"]
    listing = root / ".dvc/cache/files/md5" / digest[:2] / digest[2:]
    return entry | {"files": json.loads(listing.read_text())}


@pytest.mark.slow
def test_checkout_restores_a_deleted_checkpoint(repo):
    root = repo["root"]
    weights = root / f"data/06_models/reversed/{RUN}/model/model.safetensors"
    checkpoint = root / f"data/06_models/reversed/{RUN}/run/checkpoints"
    original = weights.read_bytes()
    shutil.rmtree(checkpoint)
    weights.unlink()
    assert "modified" in sh(root, "dvc", "status")
    sh(root, "dvc", "checkout")
    assert weights.read_bytes() == original
    assert (checkpoint / "latest").is_file()
    assert sh(root, "dvc", "status").strip().endswith("Data and pipelines are up to date.")


@pytest.mark.slow
def test_push_and_pull_round_trip_through_a_local_remote(repo):
    root = repo["root"]
    remote = root.parent / "remote"
    sh(root, "dvc", "remote", "add", "-f", "-d", "local", str(remote))
    sh(root, "dvc", "push")
    shutil.rmtree(root / ".dvc/cache")
    for folder in ("01_raw/corpus", "02_intermediate/stories", "05_model_input", "06_models"):
        shutil.rmtree(root / "data" / folder)
    pulled = sh(root, "dvc", "pull")
    assert "added" in pulled or "fetched" in pulled
    assert lock_hashes(root) == repo["lock"]
    assert sh(root, "dvc", "status").strip().endswith("Data and pipelines are up to date.")
    assert (root / f"data/06_models/forward/{RUN}/model/model.safetensors").is_file()


@pytest.mark.slow
def test_edited_training_code_makes_only_training_stale(repo):
    root = repo["root"]
    loop = root / "src/backstory/lm/training/loop.py"
    original = loop.read_text()
    loop.write_text(original + "\n# an edit\n")
    try:
        status = sh(root, "dvc", "status")
    finally:
        loop.write_text(original)
    stale = set(re.findall(r"^(\S+):\s*$", status, flags=re.M))
    assert stale == {f"train-{v}-small-main@1337" for v in VARIANTS}
    assert sh(root, "dvc", "status").strip().endswith("Data and pipelines are up to date.")


@pytest.mark.slow
def test_parameter_experiment_reruns_only_that_variant(repo):
    root = repo["root"]
    # `+` adds a key DVC's file does not have yet (the repo's variant_settings.reversed is {}).
    output = sh(root, "dvc", "exp", "run", "-n", "slow-lr", "-S",
                f"{RUNS_FILE}:+variant_settings.reversed.train.lr=0.0005")
    assert ran(output) == {"train-reversed-small-main@1337", "evaluate-reversed-small-main@1337",
                           "compare"}
    shown = json.loads(sh(root, "dvc", "exp", "show", "--json"))
    rows = {row.get("name") or row.get("rev"): row for row in flatten_exps(shown)}
    assert "slow-lr" in rows
    # The baseline is the commit row the experiment hangs under.
    baseline = next(entry for entry in shown if any(
        exp.get("name") == "slow-lr" for exp in entry.get("experiments") or []))
    path = f"data/08_reporting/reversed/{RUN}/metrics.json"
    exp_loss = metrics_of(rows["slow-lr"])[path]["data"]["val_loss"]
    base_loss = metrics_of(baseline)[path]["data"]["val_loss"]
    assert exp_loss != base_loss
    forward = f"data/08_reporting/forward/{RUN}/metrics.json"
    assert metrics_of(rows["slow-lr"])[forward] == metrics_of(baseline)[forward]
    # `exp run` left the experiment in the workspace: back to the committed baseline.
    sh(root, "git", "checkout", "--", RUNS_FILE, "dvc.lock")
    sh(root, "dvc", "checkout", "--force")
    assert sh(root, "dvc", "status").strip().endswith("Data and pipelines are up to date.")


@pytest.mark.slow
def test_an_added_seed_runs_only_its_own_stages(repo):
    root = repo["root"]
    path = root / RUNS_FILE
    original = path.read_text()
    data = yaml.safe_load(original)
    data["experiment"]["extra"] = {"variants": ["forward"], "presets": ["small"], "seeds": [7]}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert dvc_stages.main(["--root", str(root)]) == 0
    try:
        output = sh(root, "dvc", "repro")
        assert ran(output) == {"train-forward-small-extra@7", "evaluate-forward-small-extra@7",
                               "compare"}
        assert (root / "data/08_reporting/forward/small/s7/metrics.json").is_file()
    finally:
        path.write_text(original)
        assert dvc_stages.main(["--root", str(root)]) == 0
        sh(root, "git", "checkout", "--", "dvc.lock")
        sh(root, "dvc", "checkout", "--force")


@pytest.mark.slow
def test_queued_experiments_over_seeds(repo):
    """`dvc exp run --queue -S` over seeds: DVC reads the seeds from the parameter file,
    so each queued experiment trains and reports its own seed (docs/reproducibility.md)."""
    root = repo["root"]
    sh(root, "dvc", "exp", "run", "--queue", "-n", "seed-7", "-S",
       f"{RUNS_FILE}:experiment.main.seeds=[7]")
    sh(root, "dvc", "exp", "run", "--run-all")
    shown = json.loads(sh(root, "dvc", "exp", "show", "--json"))
    rows = {row.get("name"): row for row in flatten_exps(shown)}
    metrics = metrics_of(rows["seed-7"])
    for variant in VARIANTS:
        assert metrics[f"data/08_reporting/{variant}/small/s7/metrics.json"]["data"]["run"][
            "seed"] == 7
        assert f"data/06_models/{variant}/small/s7/live/metrics.json" in metrics
    assert not any("/s1337/" in path for path in metrics)  # only the queued seed ran
    assert sh(root, "dvc", "status").strip().endswith("Data and pipelines are up to date.")


def flatten_exps(shown: list) -> list[dict]:
    """The baseline and experiment rows of `dvc exp show --json` (DVC 3 layout)."""
    rows = []
    for entry in shown:
        rows.append(entry)
        for exp in entry.get("experiments") or []:
            for rev in exp.get("revs", []):
                rows.append(rev | {"name": exp.get("name") or rev.get("name")})
    return rows


def metrics_of(row: dict) -> dict:
    data = row.get("data") or {}
    return data.get("metrics") or {}


# -------------------------------------------------------------- a killed dvc repro


@pytest.mark.slow
def test_killed_repro_resumes_training_and_ends_as_an_uninterrupted_run(repo, tmp_path):
    steps, every = 40, 5
    # A copy of the finished repo, its ingest and exports current: only training is new.
    # Not DVC's scratch folder, which the other tests' experiment queue may still use.
    scratch = repo["root"] / ".dvc"
    root = Path(shutil.copytree(repo["root"], tmp_path / "repo", symlinks=True, ignore=lambda
                                folder, _: ["tmp"] if Path(folder) == scratch else []))
    path = root / RUNS_FILE
    data = deep_update(yaml.safe_load(path.read_text()), {"run_defaults": {"train": {
        "max_steps": steps, "checkpoint_interval": every, "eval_interval": 20}}})
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    stage = "train-forward-small-main@1337"
    run_dir = root / "data/06_models/forward/small/s1337/run"
    for persisted in (run_dir, run_dir.parent / "live"):  # the 6-step run's, kept by DVC
        shutil.rmtree(persisted)
    proc = subprocess.Popen(["dvc", "repro", stage], cwd=root, env=ENV, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    killed_after = None
    while time.monotonic() < deadline and proc.poll() is None:
        found = sorted((run_dir / "checkpoints").glob("step_*"))
        if any(int(p.name[5:]) >= 2 * every for p in found):
            os.killpg(proc.pid, signal.SIGKILL)
            killed_after = max(int(p.name[5:]) for p in found)
            break
        time.sleep(0.05)
    proc.wait()
    assert killed_after is not None and killed_after < steps, "training ended before the kill"
    resumed = sh(root, "dvc", "repro", stage)
    assert "Resumed" in resumed  # from the newest checkpoint, not from step 0
    final = load_trained(root / "data/06_models/forward/small/s1337/model")
    # The same run, uninterrupted, with the settings the project merges for it.
    raw = raw_params(root)
    settings = experiment.run_settings(raw, experiment.declared(raw).run("forward.small.s1337"))
    with (TokenStore(root / "data/05_model_input/forward/train.h5") as train_store,
          TokenStore(root / "data/05_model_input/forward/val.h5") as val_store):
        clean = train(model_config(vocab_size=train_store.vocab_size, **settings["model"]),
                      TrainConfig.from_params(settings["train"]), train_store, val_store,
                      tmp_path / "clean", lineage=final.meta["lineage"], progress=False)
    assert final.state_dict.keys() == clean.state_dict.keys()
    for name, tensor in clean.state_dict.items():
        assert torch.equal(final.state_dict[name], tensor), name
    # DVCLive's files (persisted outs) carried on from the kill as if never interrupted.
    live = root / "data/06_models/forward/small/s1337/live"
    assert live_files(live) == live_files(tmp_path / "clean" / LIVE_DIR)


def live_files(folder: Path) -> dict[str, bytes]:
    """DVCLive's files in ``folder`` (not the .gitignore files DVC writes beside its outs)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".gitignore"}
