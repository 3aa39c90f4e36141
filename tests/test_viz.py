"""`kedro viz build` on the tiny run: pipelines, namespaces, layers and previews."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

VARIANTS = ("forward", "reversed", "instruct")
PIPELINES = {"__default__", "ingest", "compare", "backward", *VARIANTS}
LAYERS = ["raw", "intermediate", "primary", "model_input", "models", "reporting"]
INGEST_NODES = {"acquire_corpus", "clean_corpus", "report_ingest", "fit_tokenizer"}
VARIANT_NODES = {"export_train_tokens", "export_val_tokens", "train_model", "evaluate_model"}
COMPARE_NODES = {"score_validation_documents", "measure_arrow_of_time", "build_report",
                 "generate_comparison_stories", "score_coherence", "check_instruction_following",
                 "plot_loss_curves", "plot_bpb_scatter", "plot_delta"}


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
    assert main["layers"] == LAYERS


def test_variants_and_compare_are_namespaces_with_their_nodes(viz_api):
    main = _load(viz_api / "main")
    modular = main["modular_pipelines"]
    assert {*VARIANTS, "backward", "compare"} <= set(modular)
    nodes = _nodes_by_name(main)
    by_id = {node["id"]: node for node in main["nodes"]}
    groups = {"compare": COMPARE_NODES} | {v: VARIANT_NODES for v in VARIANTS}
    groups["backward"] = {"train_model", "evaluate_model"}  # it reads forward's tokens
    for namespace, names in groups.items():
        children = {by_id[c["id"]]["name"] for c in modular[namespace]["children"]
                    if c["type"] == "task"}
        assert names <= children, namespace
        for name in names:
            assert nodes[f"{namespace}.{name}"]["modular_pipelines"] == [namespace]
    for variant in VARIANTS:
        inside = {by_id[c["id"]]["name"] for c in modular[variant]["children"]
                  if c["type"] == "data"}
        # What other groups read leaves the collapsed group as its outputs
        # (backward reads forward's token stores).
        outputs = {by_id[i]["name"] for i in modular[variant]["outputs"]}
        assert f"{variant}.train_tokens" in inside | outputs
        assert {f"{variant}.model", f"{variant}.metrics", f"{variant}.val_tokens"} <= outputs


def test_ingest_nodes_are_shared_and_not_namespaced(viz_api):
    nodes = _nodes_by_name(_load(viz_api / "main"))
    for name in INGEST_NODES:
        assert nodes[name]["modular_pipelines"] is None
        assert {"ingest", *VARIANTS, "__default__"} <= set(nodes[name]["pipelines"])
    for variant in VARIANTS:
        pipeline = _load(viz_api / "pipelines" / variant)
        names = {n["name"] for n in pipeline["nodes"] if n["type"] == "task"}
        assert INGEST_NODES | VARIANT_NODES <= names


def test_datasets_have_layers_and_previews(viz_api):
    main = _load(viz_api / "main")
    nodes = _nodes_by_name(main)
    assert nodes["raw_corpus"]["layer"] == "raw"
    assert nodes["forward.model"]["layer"] == "models"
    assert nodes["compare.report"]["layer"] == "reporting"
    previews = {
        "forward.metrics": "JSONPreview",
        "compare.report": "JSONPreview",
        "compare.loss_curves": "ImagePreview",
        "compare.delta_plot": "ImagePreview",
        "compare.story_scores": "TablePreview",
        "compare.generated_stories": "TablePreview",
    }
    for name, kind in previews.items():
        detail = _load(viz_api / "nodes" / nodes[name]["id"])
        assert detail["preview_type"] == kind, name
        assert detail["preview"], name


def test_compare_pipeline_reads_every_variant(viz_api):
    pipeline = _load(viz_api / "pipelines" / "compare")
    names = {n["name"] for n in pipeline["nodes"] if n["type"] == "data"}
    for variant in VARIANTS:
        assert {f"{variant}.model", f"{variant}.val_tokens", f"{variant}.train_log"} <= names
    assert {"compare.report", "compare.report_markdown", "compare.bpb_scatter"} <= names
