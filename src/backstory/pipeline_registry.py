"""Project pipelines: `ingest`, one per variant, `compare`, and `__default__` (all of them)."""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

VARIANT_PIPELINES = ("forward", "reversed", "instruct", "backward")


def register_pipelines() -> dict[str, Pipeline]:
    """Register every pipeline package; `__default__` runs ingest, all variants and compare.

    `compare` alone holds only the comparison nodes: it reads what the variants persisted,
    so `kedro run --pipeline compare` redoes the report without retraining.
    """
    pipelines = find_pipelines(raise_errors=True)
    pipelines.pop("__default__", None)
    variants = [pipelines[name] for name in VARIANT_PIPELINES if name in pipelines]
    if variants:
        default = sum(variants, Pipeline([]))
        if len(variants) == len(VARIANT_PIPELINES) and "compare" in pipelines:
            default += pipelines["compare"]
        pipelines["__default__"] = default
    return pipelines
