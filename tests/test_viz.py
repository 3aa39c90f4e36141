"""`kedro viz build` on the tiny run: pipelines, namespaces, layers and previews."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from backstory.variants import token_sources
from tests.project import REPO, default_variants

VARIANTS = default_variants()  # the tiny run's experiment: conf/base's default
EXPORTS = tuple(token_sources(VARIANTS))  # one export per text variant
RUNS = tuple(f"{v}.small.s1337" for v in VARIANTS)  # the tiny run's experiment
PIPELINES = {"__default__", "ingest", "compare", *VARIANTS, *RUNS}
INGEST_NODES = {"acquire_corpus", "clean_corpus", "report_ingest", "fit_tokenizer"}
EXPORT_NODES = {"export_train_tokens", "export_val_tokens"}
RUN_NODES = {"train_model", "evaluate_model"}
COMPARE_NODES = {"collect_scores", "measure_arrow_of_time", "measure_training_curves",
                 "build_report", "generate_comparison_stories", "score_coherence",
                 "check_instruction_following", "plot_loss_curves", "plot_bpb_scatter",
                 "plot_delta", "plot_sweep", "plot_training_curves"}


@pytest.fixture(scope="module")
def viz_api(tiny_run: Path) -> Path:
    """The build/api folder that `kedro viz build --include-previews` writes (the CLI, as CI)."""
    env = os.environ | {"KEDRO_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "kedro", "viz", "build", "--include-previews"],
        cwd=tiny_run, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return tiny_run / "build" / "api"


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _nodes_by_name(main: dict) -> dict[str, dict]:
    return {node["full_name"] if node["type"] == "task" else node["name"]: node
            for node in main["nodes"]}


def test_every_pipeline_is_built(viz_api):
    main = _load(viz_api / "main")
    assert {p["id"] for p in main["pipelines"]} == PIPELINES
    assert {p.name for p in (viz_api / "pipelines").iterdir()} == PIPELINES
    assert main["selected_pipeline"] == "__default__"
    catalog = yaml.safe_load((REPO / "conf/base/catalog.yml").read_text())
    declared = {entry["metadata"]["kedro-viz"]["layer"] for entry in catalog.values()
                if "layer" in entry.get("metadata", {}).get("kedro-viz", {})}
    assert set(main["layers"]) == declared


def test_layers_run_one_way(viz_api):
    """kedro-viz hides every layer when a node reads a later layer than it writes."""
    main = _load(viz_api / "main")
    rank = {layer: i for i, layer in enumerate(main["layers"])}
    layer_of = {n["id"]: n.get("layer") for n in main["nodes"] if n["type"] != "task"}
    tasks = {n["id"] for n in main["nodes"] if n["type"] == "task"}
    reads = {t: [e["source"] for e in main["edges"] if e["target"] == t] for t in tasks}
    writes = {t: [e["target"] for e in main["edges"] if e["source"] == t] for t in tasks}
    for task in tasks:
        ins = [rank[layer_of[d]] for d in reads[task] if layer_of.get(d)]
        outs = [rank[layer_of[d]] for d in writes[task] if layer_of.get(d)]
        assert not ins or not outs or max(ins) <= min(outs), task


def test_variants_presets_and_seeds_are_nested_namespaces(viz_api):
    main = _load(viz_api / "main")
    modular = main["modular_pipelines"]
    assert {*VARIANTS, *(f"{v}.small" for v in VARIANTS), *RUNS, "compare"} <= set(modular)
    nodes = _nodes_by_name(main)
    by_id = {node["id"]: node for node in main["nodes"]}

    def children(namespace: str, kind: str) -> set[str]:
        return {by_id[c["id"]]["name"] if kind != "modularPipeline" else c["id"]
                for c in modular[namespace]["children"] if c["type"] == kind}

    groups = {"compare": COMPARE_NODES} | {v: EXPORT_NODES for v in EXPORTS} | {
        run: RUN_NODES for run in RUNS}
    for namespace, names in groups.items():
        assert names <= children(namespace, "task"), namespace
        for name in names:
            assert nodes[f"{namespace}.{name}"]["modular_pipelines"] == [namespace]
    for variant in VARIANTS:  # variant > preset > seed
        assert children(variant, "modularPipeline") == {f"{variant}.small"}
        assert children(f"{variant}.small", "modularPipeline") == {f"{variant}.small.s1337"}
        outputs = {by_id[i]["name"] for i in modular[variant]["outputs"]}
        assert {f"{variant}.small.s1337.model", f"{variant}.small.s1337.metrics"} <= outputs
    # What other groups read leaves the collapsed group as its outputs (backward and
    # compare read forward's token stores).
    outputs = {by_id[i]["name"] for i in modular["forward"]["outputs"]}
    assert {"forward.train_tokens", "forward.val_tokens"} <= outputs


def test_ingest_nodes_are_shared_and_not_namespaced(viz_api):
    nodes = _nodes_by_name(_load(viz_api / "main"))
    for name in INGEST_NODES:
        assert nodes[name]["modular_pipelines"] is None
        assert {"ingest", *VARIANTS, *RUNS, "__default__"} <= set(nodes[name]["pipelines"])
    for run in RUNS:
        pipeline = _load(viz_api / "pipelines" / run)
        names = {n["name"] for n in pipeline["nodes"] if n["type"] == "task"}
        assert INGEST_NODES | EXPORT_NODES | RUN_NODES <= names


def test_datasets_have_layers_and_previews(viz_api):
    main = _load(viz_api / "main")
    nodes = _nodes_by_name(main)
    assert nodes["raw_corpus"]["layer"] == "raw"
    assert nodes["forward.small.s1337.model"]["layer"] == "models"
    assert nodes["compare.report"]["layer"] == "reporting"
    previews = {
        "forward.small.s1337.metrics": "JSONPreview",
        "compare.report": "JSONPreview",
        "compare.loss_curves": "ImagePreview",
        "compare.delta_plot": "ImagePreview",
        "compare.sweep_plot": "ImagePreview",
        "compare.training_curves_plot": "ImagePreview",
        "compare.story_scores": "TablePreview",
        "compare.generated_stories": "TablePreview",
    }
    for name, kind in previews.items():
        detail = _load(viz_api / "nodes" / nodes[name]["id"])
        assert detail["preview_type"] == kind, name
        assert detail["preview"], name


def test_compare_pipeline_reads_every_run(viz_api):
    pipeline = _load(viz_api / "pipelines" / "compare")
    names = {n["name"] for n in pipeline["nodes"] if n["type"] == "data"}
    for run in RUNS:
        assert {f"{run}.model", f"{run}.train_loss_curve", f"{run}.metrics",
                f"{run}.document_bits", f"{run}.eval_curve"} <= names
    # compare reads the scores each run's evaluation persisted, never the token stores
    assert not {f"{v}.val_tokens" for v in EXPORTS} & names
    assert {"compare.report", "compare.report_markdown", "compare.bpb_scatter"} <= names
