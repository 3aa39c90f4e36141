"""Pipeline registry and end-to-end Kedro runs on a small storyworld corpus."""

from __future__ import annotations

import json
import logging
import random

import h5py
import pytest
from kedro.framework.project import pipelines
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from kedro.validation.type_extractor import TypeExtractor

from backstory.data.corpus.story_table import StoryTable
from backstory.data.text import reverse_words
from backstory.data.token_store import TokenStore
from backstory.data.tokenizer import Tokenizer
from backstory.pipeline_registry import build_pipelines
from tests.project import (
    REPO,
    TINY_INGEST,
    default_variants,
    make_project,
    real_excerpt,
    tiny_run_params,
)

RUN = "small/s1337"


def run_project(root, monkeypatch, runtime_params=None, **run_args):
    monkeypatch.chdir(root)
    bootstrap_project(root)
    with KedroSession.create(project_path=root, env="base",
                             runtime_params=runtime_params) as session:
        return session.run(**run_args)


def test_registry_has_every_variant_and_run_sharing_ingest():
    bootstrap_project(REPO)
    registered = dict(pipelines)
    runs = [f"{v}.small.s1337" for v in default_variants()]
    assert set(registered) == {"ingest", "compare", "__default__", *default_variants(), *runs}
    ingest_nodes = {n.name for n in registered["ingest"].nodes}
    for variant in default_variants():
        names = {n.name for n in registered[variant].nodes}
        run = f"{variant}.small.s1337"
        assert ingest_nodes <= names
        assert {f"{run}.train_model", f"{run}.evaluate_model"} <= names
        assert names == {n.name for n in registered[run].nodes}  # one run per variant
    assert "forward.train_tokens" in registered["forward"].all_outputs()
    backward = registered["backward"]
    names = {n.name for n in backward.nodes}
    assert {"forward.export_train_tokens", "backward.small.s1337.train_model"} <= names
    train = next(n for n in backward.nodes if n.name == "backward.small.s1337.train_model")
    assert "forward.train_tokens" in train.inputs  # the same tokens, reversed in training
    default_names = [n.name for n in registered["__default__"].nodes]
    assert default_names.count("clean_corpus") == 1


def test_kedro_resolves_the_type_hints_of_every_node(caplog):
    """Kedro resolves each node function's hints on every run and warns for each it cannot:
    names imported only for type checkers (matplotlib's, kept off the import path) would
    print a warning per plot node per process."""
    bootstrap_project(REPO)
    logger = logging.getLogger("kedro.validation.type_extractor")
    logger.addHandler(caplog.handler)  # Kedro's logging setup stops its records at "kedro"
    try:
        TypeExtractor(dict(pipelines)).extract_types_from_pipelines()
    finally:
        logger.removeHandler(caplog.handler)
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_grid_is_one_namespaced_pipeline_per_run(tmp_path):
    from backstory.experiment import declared

    root = make_project(tmp_path / "project", {"parameters_runs.yml": {"experiment": {
        "main": {"variants": ["reversed", "backward"], "seeds": [1, 2],
                 "contexts": [64, 128]}}}})
    import yaml

    params = {}
    for path in (root / "conf/base").glob("parameters*.yml"):
        params |= yaml.safe_load(path.read_text())
    registered = build_pipelines(declared(params))
    runs = {f"{v}.small-c{c}.s{s}" for v in ("reversed", "backward") for c in (64, 128)
            for s in (1, 2)}
    assert runs <= set(registered)
    # backward needs forward's tokens though no forward run is declared
    exports = {n.name for n in registered["__default__"].nodes if ".export_" in n.name}
    assert exports == {f"{v}.export_{s}_tokens" for v in ("forward", "reversed")
                       for s in ("train", "val")}
    node = next(n for n in registered["reversed.small-c64.s2"].nodes
                if n.name.endswith("train_model"))
    assert "params:reversed.small-c64.s2.model" in node.inputs


def test_reversed_pipeline_exports_reversed_token_stores(tmp_path, monkeypatch):
    root = make_project(tmp_path / "project", {"parameters_ingest.yml": TINY_INGEST})
    run_project(
        root, monkeypatch, pipeline_names=["reversed"],
        to_outputs=["reversed.train_tokens", "reversed.val_tokens"],
    )
    report = json.loads((root / "data/08_reporting/ingest_report.json").read_text())
    assert report["n_read"] == 300 and report["n_kept"] == 300
    raw = root / "data/01_raw/corpus"
    assert sorted(p.name for p in raw.iterdir() if not p.name.startswith(".")) == [
        "data00.json", "data01.json", "data02.json",
    ]
    tokenizer = Tokenizer.from_file(root / "data/06_models/tokenizer/tokenizer.model")
    with TokenStore(root / "data/05_model_input/reversed/val.h5") as store:
        assert store.variant == "reversed"
        assert store.attrs["tokenizer_sha256"] == tokenizer.sha256
        assert store.attrs["corpus_fingerprint"] == report["corpus_fingerprint"]
        assert store.n_docs == report["n_val"]
        first = tokenizer.decode(store.story_tokens(0).tolist())
        # The story reads in normal order once reversed back, and starts as a story does.
        assert reverse_words(first)[0].isupper()
    with h5py.File(root / "data/05_model_input/reversed/train.h5") as f:
        assert f["tokens"].dtype.name == "uint16"
        assert f.attrs["n_docs"] == report["n_train"]
    assert not (root / f"data/06_models/reversed/{RUN}/model").exists()


@pytest.mark.slow
def test_all_variants_train_and_evaluate_end_to_end(tiny_run):
    root = tiny_run  # one `kedro run` of every pipeline on the tiny config (tests/conftest.py)
    for variant in default_variants():
        metrics = json.loads((root / f"data/08_reporting/{variant}/{RUN}/metrics.json").read_text())
        assert {"val_loss", "val_perplexity", "val_bpb", "n_tokens"} <= set(metrics)
        # It learned: well below the unigram model of the same training stories (about
        # 0.85 of it after the tiny run's 150 steps; an untrained model is above it).
        assert metrics["val_bpb"] < 0.92 * metrics["unigram_bpb"], variant
        assert metrics["run"]["run"] == f"{variant}.small.s1337"
        samples = json.loads((root / f"data/08_reporting/{variant}/{RUN}/samples.json").read_text())
        assert len(samples) == 2 and all(s["variant"] == variant for s in samples)
        assert (root / f"data/06_models/{variant}/{RUN}/model/model.safetensors").is_file()
        live = root / f"data/06_models/{variant}/{RUN}/live"  # DVCLive's curves and summary
        assert (live / "plots/metrics/train/loss.tsv").is_file()
        assert json.loads((live / "metrics.json").read_text())["step"] == metrics["steps"]
        curve = root / f"data/06_models/{variant}/{RUN}/run/eval_curve.csv"
        assert curve.read_text().startswith("step,doc,bits\n")
    # The token-order backward model: forward's stories and tokens, its own order.
    metrics = json.loads((root / f"data/08_reporting/backward/{RUN}/metrics.json").read_text())
    forward = json.loads((root / f"data/08_reporting/forward/{RUN}/metrics.json").read_text())
    assert metrics["token_order"] == "backward"
    assert (metrics["n_docs"], metrics["n_bytes"]) == (forward["n_docs"], forward["n_bytes"])
    samples = json.loads((root / f"data/08_reporting/backward/{RUN}/samples.json").read_text())
    assert samples and all(s["mode"] == "ending, token order backward" for s in samples)
    assert all(s["text"].endswith(s["prompt"]) for s in samples)


@pytest.mark.slow
def test_rerun_on_other_data_recomputes_instead_of_stopping(tmp_path, monkeypatch):
    """The default run, then the same run on another corpus: the training run of the old
    data is moved aside and the model retrained, never an error."""
    changes = {"parameters_ingest.yml": TINY_INGEST,
               "parameters_runs.yml": tiny_run_params() | {
                   "experiment": {"main": {"variants": ["forward"]}}}}
    root = make_project(tmp_path / "project", changes)
    run_project(root, monkeypatch, pipeline_names=["forward"])
    model = root / f"data/06_models/forward/{RUN}/model/model.safetensors"
    first = model.read_bytes()
    run_project(root, monkeypatch, pipeline_names=["forward"],
                runtime_params={"corpus": {"seed": 7}})
    assert model.read_bytes() != first
    assert (root / f"data/06_models/forward/{RUN}/run.previous/checkpoints/latest").is_file()
def test_every_kept_story_of_same_stem_files_reaches_the_h5_stores(tmp_path, monkeypatch):
    """Issue 13, item 1: data00.json and data00.txt must both reach the table and the H5."""
    rng = random.Random(5)
    stories = real_excerpt("stories_100.json")
    source = tmp_path / "corpus"
    source.mkdir()
    json_stories = [f"{rng.choice(stories)} (json {i})" for i in range(60)]
    (source / "data00.json").write_text(json.dumps([{"story": s} for s in json_stories]))
    text_stories = stories[:40]
    (source / "data00.txt").write_text("".join(f"{s}\n<|endoftext|>\n" for s in text_stories))
    params = {"parameters_ingest.yml": {
        "corpus": {"source": "local", "path": str(source)},
        "tokenizer": {"vocab_size": 600}, "split": {"val_fraction": 0.2}}}
    root = make_project(tmp_path / "project", params)
    run_project(root, monkeypatch, pipeline_names=["forward"],
                to_outputs=["forward.train_tokens", "forward.val_tokens"])
    report = json.loads((root / "data/08_reporting/ingest_report.json").read_text())
    table = StoryTable(root / "data/02_intermediate/stories")
    assert report == table.report
    assert [row["name"] for row in report["files"]] == ["data00.json", "data00.txt"]
    assert report["n_kept"] == 100
    tokenizer = Tokenizer.from_file(root / "data/06_models/tokenizer/tokenizer.model")
    found = []
    for split in ("train", "val"):
        with TokenStore(root / f"data/05_model_input/forward/{split}.h5") as store:
            assert store.attrs["corpus_fingerprint"] == report["corpus_fingerprint"]
            assert store.n_docs == report[f"n_{split}"]
            found += [tokenizer.decode(store.story_tokens(i).tolist()) for i in range(store.n_docs)]
    assert sorted(found) == sorted([s.strip() for s in json_stories + text_stories])
