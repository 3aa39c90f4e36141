"""Fine-tuned instruct and imported ("external") models through the Kedro pipelines, the
compare report and dvc.yaml."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from backstory import experiment, variants
from backstory.core.errors import SettingError
from backstory.data.token_store import TokenStore
from backstory.data.tokenizer import Tokenizer
from backstory.lm.checkpoint import load_trained
from backstory.lm.interop import export_model, load_external
from backstory.pipeline_registry import build_pipelines
from backstory.tools import dvc_stages
from tests.project import REPO, deep_update, make_project
from tests.test_dvc import expand_stages, raw_params
from tests.tiny_models import peaked_model
from tests.tiny_models import tokenizer as other_tokenizer

RUN = "small/s1337"
FINETUNE_GRID = {"finetune": {"variants": ["instruct_ft"], "presets": ["small"],
                              "seeds": [1337]}}


def params_with(**changes) -> dict:
    return deep_update(raw_params(), changes)


# ------------------------------------------------------------------ the declaration


def test_variants_all_is_the_default_four_and_opt_in_variants_are_named():
    assert variants.ALL == ("forward", "reversed", "instruct", "backward")
    assert "instruct_ft" in variants.NAMES and variants.get("instruct_ft").opt_in
    base = experiment.declared(raw_params())
    assert [r.variant for r in base.runs] == list(variants.ALL)
    tuned = experiment.declared(params_with(experiment=FINETUNE_GRID))
    (run,) = tuned.runs_of("instruct_ft")
    assert run.init_run == experiment.RunSpec("forward", "small", 1337)
    assert run.token_source == "instruct"


def test_the_instruct_ft_env_adds_instruct_ft_beside_the_default_runs():
    from backstory.hooks import _load_parameters

    bootstrap_project(REPO)
    declared = experiment.declared(_load_parameters(REPO, "instruct_ft"))
    assert [r.namespace for r in declared.runs] == [
        *(f"{v}.small.s1337" for v in variants.ALL), "instruct_ft.small.s1337"]
    parameters = _load_parameters(REPO, "instruct_ft")
    settings = experiment.run_settings(parameters, declared.runs[-1])
    assert settings["finetune"]["method"] == "full"
    # its own shorter, gentler run, not the from-scratch runs' steps and rate
    scratch = experiment.run_settings(parameters, declared.runs[0])["train"]
    assert settings["train"]["max_steps"] < scratch["max_steps"]
    assert settings["train"]["lr"] < scratch["lr"]
    assert "finetune" not in experiment.run_settings(raw_params(), declared.runs[0])


@pytest.mark.parametrize(("changes", "message"), [
    ({"experiment": {"main": {"variants": ["instruct_ft"]}}},
     r"run instruct_ft\.small\.s1337 starts from the model of run forward\.small\.s1337, "
     "which the experiment does not hold"),
    ({"variant_settings": {"forward": {"finetune": {"method": "lora"}}}},
     r"variant_settings\.forward\.finetune: forward runs train from scratch"),
    ({"experiment": FINETUNE_GRID,
      "variant_settings": {"instruct_ft": {"finetune": {"method": "dora"}}}},
     r"run instruct_ft\.small\.s1337: finetune\.method='dora'"),
    ({"experiment": FINETUNE_GRID,
      "variant_settings": {"instruct_ft": {"model": {"dim": 64}}}},
     r"fine-tunes the model of run forward\.small\.s1337, so their model settings must agree"),
    ({"external": {"x": {"source": "a.bin", "tokenizer": "t.model"}}},
     r"external\.x\.variant must be given"),
    ({"external": {"x": {"source": "a.bin", "tokenizer": "t.model", "variant": "sideways"}}},
     r"external\.x\.variant: unknown variant 'sideways'"),
    ({"external": {"x": {"source": "a.bin", "tokenizer": "t.model", "variant": "forward",
                         "dtype": "bf16"}}},
     r"unknown external\.x key dtype"),
    ({"external": {"x": {"source": "a.bin", "tokenizer": "t.model", "variant": "forward"},
                   "y": {"source": "b.bin", "tokenizer": "t.model", "variant": "forward"}}},
     r"external\.y and external\.x both state variant forward"),
    ({"external": {"x": {"source": "a.bin", "tokenizer": "a.model", "variant": "forward"},
                   "y": {"source": "b.bin", "tokenizer": "b.model", "variant": "backward"}}},
     r"external\.y \(backward\) and external\.x \(forward\) are compared in token order"),
    ({"experiment": {"main": {"variants": ["forward"]}},
      "external": {"x": {"source": "a.bin", "tokenizer": "t.model", "variant": "reversed"}}},
     r"external\.x: variant reversed reads reversed's documents, which no run"),
])
def test_bad_declarations_name_what_is_wrong(changes, message):
    with pytest.raises(SettingError, match=message):
        experiment.expand(params_with(**changes))


def test_registry_wires_the_initial_model_and_the_external_models():
    exp = experiment.declared(params_with(experiment=FINETUNE_GRID, external={
        "ext": {"source": "external/m.bin", "tokenizer": "external/t.model",
                "variant": "forward"}}))
    registered = build_pipelines(exp)
    alone = {n.name for n in registered["instruct_ft.small.s1337"].nodes}
    # The fine-tuned run needs forward's training (not its evaluation) and both exports.
    assert {"forward.small.s1337.train_model", "instruct_ft.small.s1337.train_model",
            "forward.export_train_tokens", "instruct.export_train_tokens"} <= alone
    assert "forward.small.s1337.evaluate_model" not in alone
    train = next(n for n in registered["instruct_ft.small.s1337"].nodes
                 if n.name == "instruct_ft.small.s1337.train_model")
    assert {"forward.small.s1337.model", "instruct.train_tokens",
            "params:instruct_ft.small.s1337.finetune"} <= set(train.inputs)
    nodes = {n.name: n for n in registered["external.ext"].nodes}
    assert set(registered["external"].nodes) == set(registered["external.ext"].nodes)
    assert nodes["external.ext.import_model"].inputs == ["params:external.ext"]
    assert {"stories", "params:forward.text"} <= set(nodes["external.ext.export_val_tokens"].inputs)
    assert "forward.val_tokens" in nodes["external.ext.evaluate_model"].inputs
    assert "external.ext.metrics" in registered["compare"].inputs()


# ------------------------------------------------------------------------- dvc.yaml


def test_dvc_stages_for_a_fine_tuned_run_and_an_external_model(tmp_path):
    root = make_project(tmp_path / "project", {"parameters_runs.yml": {
        "experiment": FINETUNE_GRID,
        "external": {"ext": {"source": "external/m.bin", "tokenizer": "external/t.model",
                             "variant": "forward"}}}})
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    before = expand_stages(yaml.safe_load((root / "dvc.yaml").read_text()))
    assert dvc_stages.main(["--root", str(root)]) == 0
    document = yaml.safe_load((root / "dvc.yaml").read_text())
    after = expand_stages(document, root)
    finetune_stage = "finetune-instruct_ft-small-finetune@1337"
    assert set(after) - set(before) == {finetune_stage, "evaluate-instruct_ft-small-finetune@1337",
                                        "external-ext"}
    # Only the code deps and compare (which reads the new models) change.
    changed = {n for n in before if after[n] != before[n]}
    assert changed == {"compare"}
    finetune = after[finetune_stage]
    assert {"data/06_models/forward/small/s1337/model", "data/05_model_input/instruct/train.h5",
            "data/05_model_input/instruct/val.h5"} <= set(finetune["deps"])
    assert "--nodes instruct_ft.small.s1337.train_model" in finetune["cmd"]
    keys = {k for entry in finetune["params"] for keys in entry.values() for k in keys}
    assert keys == {f"{section}.{name}" for section, name in (
        ("run_defaults", "model"), ("run_defaults", "train"), ("run_defaults", "finetune"),
        ("presets", "small"), ("variant_settings", "instruct_ft"),
        ("run_defaults", "evaluate.batch_size"), ("run_defaults", "evaluate.curve_stories"))}
    assert {"data/06_models/instruct_ft/small/s1337/run": {"persist": True}} in finetune["outs"]
    external = after["external-ext"]
    assert {"external/m.bin", "external/t.model", "data/02_intermediate/stories",
            "data/05_model_input/forward/val.h5"} <= set(external["deps"])
    assert external["metrics"] == ["data/08_reporting/external/ext/metrics.json"]
    assert "data/08_reporting/external/ext/document_bits.parquet" in external["outs"]
    assert set(external["outs"]) - {"data/08_reporting/external/ext/document_bits.parquet"} == {
                                     "data/06_models/external/ext/model",
                                     "data/06_models/external/ext/tokenizer.model",
                                     "data/05_model_input/external/ext/val.h5"}
    keys = {k for entry in external["params"] for keys in entry.values() for k in keys}
    # forward changes no text setting, so only the defaults are tracked
    assert keys == {"external.ext", "text.defaults", "run_defaults.evaluate"}
    assert "data/08_reporting/external/ext/metrics.json" in after["compare"]["deps"]
    # The fine-tuned run's stages are a foreach over its grid's seeds, read by DVC.
    assert document["stages"]["finetune-instruct_ft-small-finetune"]["foreach"] == \
        "${experiment.finetune.seeds}"
    # DVC itself reads the file: every stage, with the variables put in.
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=root, env=env, check=True)
    listed = subprocess.run(["dvc", "stage", "list", "--fail", "--name-only"], cwd=root,
                            env=env, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    for name in (finetune_stage, "external-ext", "train-forward-small-main@1337"):
        assert name in listed.stdout


# -------------------------------------------------------------- the tiny project run


@pytest.fixture(scope="module")
def tuned_project(tiny_run, tmp_path_factory):
    """A copy of the tiny run with instruct_ft (LoRA) and two imported models added: our
    forward model exported to llama2.c, and a reversed model of another tokenizer exported
    to Hugging Face. Only the new nodes and the report run."""
    root = tmp_path_factory.mktemp("tuned") / "project"
    shutil.copytree(tiny_run, root, ignore=shutil.ignore_patterns("build"))
    ours = Tokenizer.from_file(root / "data/06_models/tokenizer/tokenizer.model")
    forward = load_trained(root / f"data/06_models/forward/{RUN}/model")
    export_model(forward, ours, root / "external/ours", fmt="llama2c")
    (root / "external/ours/model.lineage.json").unlink()  # as karpathy's files: no lineage
    theirs = other_tokenizer()
    assert theirs.sha256 != ours.sha256
    export_model(peaked_model(theirs, "reversed", scale=1.0, seed=3), theirs,
                 root / "external/theirs", fmt="hf")
    path = root / "conf/base/parameters_runs.yml"
    data = yaml.safe_load(path.read_text())
    deep_update(data, {
        "experiment": FINETUNE_GRID,
        "variant_settings": {"instruct_ft": {"train": {"max_steps": 60, "lr": 0.004,
                                                       "warmup_steps": 5},
                                             "finetune": {"method": "lora", "lora_rank": 4}}},
        "external": {
            "ours": {"source": "external/ours/model.bin",
                     "tokenizer": "external/ours/tokenizer.model", "variant": "forward"},
            "theirs": {"source": "external/theirs", "tokenizer": "external/theirs/tokenizer.model",
                       "variant": "reversed"}}})
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    previous = os.getcwd()
    os.chdir(root)
    try:
        bootstrap_project(root)
        with KedroSession.create(project_path=root, env="base") as session:
            session.run(pipeline_names=["instruct_ft.small.s1337", "external", "compare"])
    finally:
        os.chdir(previous)
    return root


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.slow
def test_fine_tuned_instruct_records_its_initial_model(tuned_project):
    root = tuned_project
    model = load_trained(root / f"data/06_models/instruct_ft/{RUN}/model")
    forward_json = read_json(root / f"data/06_models/forward/{RUN}/model/model.json")
    init = model.meta["lineage"]["init"]
    assert init["run"] == "forward.small.s1337"
    assert init["weights_sha256"] == forward_json["weights_sha256"]
    assert init["finetune"] == {"method": "lora", "lora_rank": 4, "lora_alpha": 16,
                                "lora_dropout": 0.0}
    assert not any("lora" in name for name in model.state_dict)  # merged, plain weights
    # ... which is what leaves the project: a run.c export reads back bit for bit.
    tok = Tokenizer.from_file(root / "data/06_models/tokenizer/tokenizer.model")
    export_model(model, tok, root / "exports/instruct_ft", fmt="llama2c")
    back, _ = load_external(root / "exports/instruct_ft/model.bin", variant="instruct_ft")
    assert back.meta["lineage"]["init"] == init
    for name, tensor in model.state_dict.items():
        assert torch.equal(back.state_dict[name], tensor), name
    metrics = read_json(root / f"data/08_reporting/instruct_ft/{RUN}/metrics.json")
    scratch = read_json(root / f"data/08_reporting/instruct/{RUN}/metrics.json")
    assert metrics["steps"] == 60 and metrics["n_docs"] == scratch["n_docs"]
    assert metrics["val_bpb"] < metrics["unigram_bpb"]


@pytest.mark.slow
def test_compare_shows_fine_tuned_beside_scratch_instruct_and_the_imported_models(tuned_project):
    folder = tuned_project / "data/08_reporting/compare"
    report = read_json(folder / "report.json")
    shares = report["instruction_following"]["shares"]
    assert {"instruct", "instruct_ft"} <= set(shares)
    for source in ("instruct", "instruct_ft"):  # shares with an interval over the stories
        both = shares[source]["both"]
        assert both["n"] == 2 and both["low"] <= both["share"] <= both["high"]
    markdown = (folder / "report.md").read_text()
    following = markdown[markdown.index("## Instruction following"):]
    assert "| **instruct** |" in following and "| **instruct_ft** |" in following
    assert "instruct_ft.small.s1337" in report["models"]
    imported = report["imported"]
    assert set(imported) == {"ours", "theirs"}
    forward = read_json(tuned_project / f"data/08_reporting/forward/{RUN}/metrics.json")
    # Our forward model, exported and imported: the very same bits on the same stories.
    assert imported["ours"]["val_bpb"] == forward["val_bpb"]
    assert imported["theirs"]["variant"] == "reversed"
    assert "## Imported models" in markdown and "| theirs | reversed |" in markdown
    own = pd.read_parquet(tuned_project / "data/08_reporting/external/theirs/document_bits.parquet")
    runs = pd.read_parquet(tuned_project / f"data/08_reporting/forward/{RUN}/document_bits.parquet")
    assert own["story"].tolist() == runs["story"].tolist()  # the same stories, by id
    assert own["n_bytes"].tolist() == runs["n_bytes"].tolist()
    assert own["story_tokens"].tolist() != runs["story_tokens"].tolist()  # its own tokens


@pytest.mark.slow
def test_external_metrics_are_on_the_runs_stories_in_bits_per_byte(tuned_project):
    root = tuned_project
    ours = read_json(root / "data/08_reporting/external/ours/metrics.json")
    forward = read_json(root / f"data/08_reporting/forward/{RUN}/metrics.json")
    for key in ("val_bpb", "val_loss", "n_docs", "n_bytes"):
        assert ours[key] == forward[key], key
    # A reversed model: the evaluation stories every run is scored on, in its own tokens.
    theirs = read_json(root / "data/08_reporting/external/theirs/metrics.json")
    reversed_run = read_json(root / f"data/08_reporting/reversed/{RUN}/metrics.json")
    assert (theirs["n_docs"], theirs["n_bytes"]) == (reversed_run["n_docs"],
                                                     reversed_run["n_bytes"])
    assert theirs["n_tokens"] != reversed_run["n_tokens"]
    assert theirs["lineage"]["imported_from"]["format"] == "hf"
    assert theirs["lineage"]["tokenizer_sha256"] == other_tokenizer().sha256
    with TokenStore(root / "data/05_model_input/external/theirs/val.h5") as store:
        assert store.attrs["layout"] == variants.get("reversed").layout
        assert store.attrs["tokenizer_sha256"] == other_tokenizer().sha256
