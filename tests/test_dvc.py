"""dvc.yaml against the Kedro pipelines, and DVC behaviour on a tiny copy of the project.

The fast tests hold dvc.yaml and Kedro together. The slow ones build a temporary git
repository from the project's files with small parameters and run DVC in it: repro,
no-op repro, bit-identity of two clean runs, checkout, push/pull through a local remote,
and a parameter experiment.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from kedro.framework.project import pipelines
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from backstory.data.tokenizer import Tokenizer
from backstory.data.tokens import TokenStore
from backstory.evaluation.lineage import LineageError
from backstory.lm.checkpoint import load_trained
from backstory.pipelines.lm_nodes import evaluate, params_sha256
from backstory.tools import dvc_stages
from tests.project import REPO, TINY_INGEST, deep_update, make_project, tiny_lm_params

VARIANTS = ("forward", "reversed", "instruct")
ENV = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "1"}
# Cross-variant comparison settings that keep it to seconds on CPU.
TINY_COMPARE = {"max_tokens": 4000, "n_boot": 50, "n_stories": 2, "generate_batch_size": 2,
                "max_new_tokens": 16}


# ------------------------------------------------------------------ dvc.yaml vs kedro


def expand_stages(document: dict) -> dict[str, dict]:
    """dvc.yaml stages with `foreach` expanded as DVC names them (train@reversed)."""
    stages = {}
    for name, body in document["stages"].items():
        if "foreach" not in body:
            stages[name] = body
            continue
        text = json.dumps(body["do"])
        for item in body["foreach"]:
            stages[f"{name}@{item}"] = json.loads(text.replace("${item}", item))
    return stages


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
            for key in keys}


def paths_of(entries: list) -> set[str]:
    return {next(iter(e)) if isinstance(e, dict) else e for e in entries}


@pytest.fixture(scope="module")
def kedro_catalog():
    bootstrap_project(REPO)
    with KedroSession.create(project_path=REPO, env="base") as session:
        catalog = session.load_context().catalog
    registered = dict(pipelines)

    def path_of(name: str) -> str | None:
        dataset = catalog.get(name)
        if dataset is None:
            return None
        described = dataset._describe()
        where = described.get("filepath") or described.get("path")
        return Path(str(where)).resolve().relative_to(REPO).as_posix()

    return registered, path_of


def test_dvc_yaml_is_current():
    assert dvc_stages.main(["--root", str(REPO), "--check"]) == 0


def test_every_stage_matches_its_kedro_nodes(kedro_catalog):
    """deps and outs equal the catalog paths the stage's nodes read and write; params
    equal the parameters they read; every node runs in exactly one stage."""
    registered, path_of = kedro_catalog
    stages = expand_stages(yaml.safe_load((REPO / "dvc.yaml").read_text()))
    run_by: dict[str, str] = {}
    for name, body in stages.items():
        assert "KEDRO_DISABLE_TELEMETRY=1" in body["cmd"] and "--env base" in body["cmd"]
        nodes = stage_nodes(body["cmd"], registered)
        written = {o for n in nodes for o in n.outputs}
        reads = {i for n in nodes for i in n.inputs if not i.startswith("params:")} - written
        read_paths = {path_of(i) for i in reads} - {None}
        out_paths = {path_of(o) for o in written} - {None}
        workdirs = {path_of(i) for i in reads if i.endswith("training_run")}
        data_deps = {d for d in body["deps"] if not d.startswith("src/")}
        assert data_deps == read_paths - workdirs, name
        assert paths_of(body.get("outs", [])) | paths_of(body.get("metrics", [])) == (
            out_paths | workdirs), name
        wanted = {i.removeprefix("params:") for n in nodes for i in n.inputs
                  if i.startswith("params:")}
        assert {key for _, key in params_of(body)} == wanted, name
        for node in nodes:
            assert node.name not in run_by, f"{node.name} runs in two stages"
            run_by[node.name] = name
    every = {n.name for p in registered.values() for n in p.nodes}
    assert set(run_by) == every


def test_code_deps_cover_the_modules_each_step_runs():
    stages = expand_stages(yaml.safe_load((REPO / "dvc.yaml").read_text()))
    deps = {name: set(body["deps"]) for name, body in stages.items()}
    assert {"src/backstory/pipelines/ingest/nodes.py", "src/backstory/data/corpus/clean.py",
            "src/backstory/data/tokenizer.py"} <= deps["ingest"]
    assert {"src/backstory/lm/training/loop.py", "src/backstory/lm/model.py", "src/backstory/lm/checkpoint.py",
            "src/backstory/datasets/model_dataset.py"} <= deps["train@reversed"]
    assert {"src/backstory/data/documents.py", "src/backstory/data/text.py", "src/backstory/data/tokens.py",
            "src/backstory/pipelines/lm.py"} <= deps["export@instruct"]
    assert "src/backstory/evaluation/evaluate.py" in deps["evaluate@forward"]
    assert "src/backstory/lm/training/loop.py" not in deps["ingest"]
    for name, paths in deps.items():
        missing = [p for p in paths if p.startswith("src/") and not (REPO / p).exists()]
        assert not missing, f"{name}: deps that do not exist: {missing}"


def test_metrics_and_plots_are_declared():
    document = yaml.safe_load((REPO / "dvc.yaml").read_text())
    stages = expand_stages(document)
    for variant in VARIANTS:
        assert stages[f"evaluate@{variant}"]["metrics"] == [
            f"data/08_reporting/{variant}/metrics.json"]
    titles = {next(iter(p)): next(iter(p.values())) for p in document["plots"]}
    assert set(titles["training loss"]["y"]) == {
        f"data/06_models/{v}/run/train_log.csv" for v in VARIANTS}
    assert set(titles["validation loss"]["y"].values()) == {"val_loss"}


def test_renamed_dataset_makes_dvc_yaml_stale(tmp_path):
    root = make_project(tmp_path / "project")
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    assert dvc_stages.main(["--root", str(root), "--check"]) == 0
    catalog = root / "conf/base/catalog.yml"
    catalog.write_text(catalog.read_text().replace(
        "data/08_reporting/{variant}/metrics.json", "data/08_reporting/{variant}/scores.json"))
    assert dvc_stages.main(["--root", str(root), "--check"]) == 1
    assert dvc_stages.main(["--root", str(root)]) == 0
    assert "data/08_reporting/${item}/scores.json" in (root / "dvc.yaml").read_text()
    assert dvc_stages.main(["--root", str(root), "--check"]) == 0


def test_parameter_files_must_be_plain_and_complete(tmp_path):
    root = make_project(tmp_path / "project")
    params = root / "conf/base/parameters_lm.yml"
    text = params.read_text()
    params.write_text(text.replace("lr: 0.002", "lr: ${forward.train.min_lr}", 1))
    with pytest.raises(dvc_stages.StageError, match="parameters_lm.yml.*interpolation"):
        dvc_stages.build(root)
    data = yaml.safe_load(text)
    del data["reversed"]["evaluate"]
    params.write_text(yaml.safe_dump(data))
    with pytest.raises(dvc_stages.StageError, match="reversed.evaluate"):
        dvc_stages.build(root)


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


def make_repo(root: Path) -> Path:
    """A git repo holding the project's files, with parameters small enough for CPU."""
    for name in project_files():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, root / name)
    changes = {"parameters_ingest.yml": TINY_INGEST, "parameters_lm.yml": tiny_lm_params(),
               "parameters_compare.yml": {"compare": TINY_COMPARE}}
    for file_name, change in changes.items():
        path = root / "conf/base" / file_name
        if not path.is_file():  # the compare pipeline is optional
            continue
        data = yaml.safe_load(path.read_text())
        known = {k: v for k, v in change.items() if k in data}
        for block, values in known.items():  # only keys the file has: unknown ones may fail
            known[block] = {k: v for k, v in values.items() if k in data[block]}
        path.write_text(yaml.safe_dump(deep_update(data, known), sort_keys=False))
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


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """The tiny project after one `dvc repro` (committed), with both runs' output."""
    root = make_repo(tmp_path_factory.mktemp("dvc") / "repo")
    first = sh(root, "dvc", "repro")
    second = sh(root, "dvc", "repro")
    commit(root, "first run")
    return {"root": root, "first": first, "second": second, "lock": lock_hashes(root)}


def expected_stages() -> set[str]:
    return set(expand_stages(yaml.safe_load((REPO / "dvc.yaml").read_text())))


@pytest.mark.slow
def test_repro_runs_every_stage_then_none(repo):
    assert ran(repo["first"]) == expected_stages()
    assert ran(repo["second"]) == set()
    assert "up to date" in repo["second"]
    metrics = json.loads(sh(repo["root"], "dvc", "metrics", "show", "--json"))
    shown = json.dumps(metrics)
    for variant in VARIANTS:
        assert f"data/08_reporting/{variant}/metrics.json" in shown
    plots = json.loads(sh(repo["root"], "dvc", "plots", "show", "--json"))["data"]
    for title in ("training loss", "validation loss"):
        values = plots[title][0]["content"]["data"]["values"]
        assert {row["rev"] for row in values} and len({row["filename"] for row in values}) == 3


@pytest.mark.slow
def test_artifacts_record_their_lineage(repo):
    root = repo["root"]
    report = json.loads((root / "data/08_reporting/ingest_report.json").read_text())
    tokenizer = Tokenizer.from_file(root / "data/06_models/tokenizer/tokenizer.model")
    lm = yaml.safe_load((root / "conf/base/parameters_lm.yml").read_text())
    for variant in VARIANTS:
        with TokenStore(root / f"data/05_model_input/{variant}/train.h5") as store:
            attrs = dict(store.attrs)
        assert attrs["corpus_fingerprint"] == report["corpus_fingerprint"]
        assert attrs["tokenizer_sha256"] == tokenizer.sha256
        assert attrs["text_params_sha256"] == params_sha256(lm[variant]["text"])
        assert attrs["package_version"]
        meta = load_trained(root / f"data/06_models/{variant}/model").meta
        assert meta["lineage"]["tokenizer_sha256"] == tokenizer.sha256
        assert meta["lineage"]["corpus_fingerprint"] == report["corpus_fingerprint"]
        assert meta["lineage"]["package_version"]
        assert meta["params_sha256"] == params_sha256(
            {"model": lm[variant]["model"], "train": lm[variant]["train"]})
        assert "elapsed_s" not in meta
        lineage = json.loads(
            (root / f"data/08_reporting/{variant}/metrics.json").read_text())["lineage"]
        assert lineage["corpus_fingerprint"] == report["corpus_fingerprint"]
        assert lineage["tokenizer_sha256"] == tokenizer.sha256
        assert lineage["train_params_sha256"] == meta["params_sha256"]
        assert lineage["evaluate_params_sha256"] == params_sha256(lm[variant]["evaluate"])


@pytest.mark.slow
def test_evaluation_refuses_a_model_from_another_tokenizer(repo):
    root = repo["root"]
    tokenizer = Tokenizer.from_file(root / "data/06_models/tokenizer/tokenizer.model")
    trained = load_trained(root / "data/06_models/forward/model")
    foreign_sha = "f" * 64  # as if trained with another tokenizer
    meta = trained.meta | {"lineage": trained.meta["lineage"] | {"tokenizer_sha256": foreign_sha}}
    foreign = dataclasses.replace(trained, meta=meta)
    with (TokenStore(root / "data/05_model_input/forward/val.h5") as val,
          TokenStore(root / "data/05_model_input/forward/train.h5") as train):
        with pytest.raises(LineageError) as err:
            settings = yaml.safe_load((REPO / "conf/base/parameters_lm.yml").read_text())
            evaluate(foreign, val, train, tokenizer, settings["forward"]["evaluate"],
                     variant="forward")
    assert tokenizer.sha256 in str(err.value) and foreign_sha in str(err.value)


@pytest.mark.slow
def test_two_clean_runs_give_the_same_hashes(repo):
    """Every artifact in dvc.lock, run folders included, is bit-identical; the
    machine-specific speed logs are there but ignored by DVC (.dvcignore)."""
    root = repo["root"]
    output = sh(root, "dvc", "repro", "--force")
    assert ran(output) == expected_stages()
    again = lock_hashes(root)
    assert again.keys() == repo["lock"].keys()
    differ = sorted(path for path in again if again[path] != repo["lock"][path])
    assert differ == []
    for variant in VARIANTS:
        run = root / f"data/06_models/{variant}/run"
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
    weights = root / "data/06_models/reversed/model/model.safetensors"
    checkpoint = root / "data/06_models/reversed/run/checkpoints"
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
    assert (root / "data/06_models/forward/model/model.safetensors").is_file()


@pytest.mark.slow
def test_parameter_experiment_reruns_only_that_variant(repo):
    root = repo["root"]
    key = "reversed.train.lr"
    output = sh(root, "dvc", "exp", "run", "-n", "slow-lr", "-S",
                f"conf/base/parameters_lm.yml:{key}=0.0005")
    # Stages over several variants rerun too; `backward` reads only forward's tokens.
    cross = expected_stages() - {f"{s}@{v}" for s in ("export", "train", "evaluate")
                                 for v in VARIANTS} - {"ingest", "backward"}
    assert ran(output) == {"train@reversed", "evaluate@reversed"} | cross
    shown = json.loads(sh(root, "dvc", "exp", "show", "--json"))
    rows = {row.get("name") or row.get("rev"): row for row in flatten_exps(shown)}
    assert "slow-lr" in rows
    # The baseline is the commit row the experiment hangs under.
    baseline = next(entry for entry in shown if any(
        exp.get("name") == "slow-lr" for exp in entry.get("experiments") or []))
    path = "data/08_reporting/reversed/metrics.json"
    exp_loss = metrics_of(rows["slow-lr"])[path]["data"]["val_loss"]
    base_loss = metrics_of(baseline)[path]["data"]["val_loss"]
    assert exp_loss != base_loss
    forward = "data/08_reporting/forward/metrics.json"
    assert metrics_of(rows["slow-lr"])[forward] == metrics_of(baseline)[forward]


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
