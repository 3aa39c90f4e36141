"""Project pipelines: `ingest`, one per variant, and `__default__` (all variants)."""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

VARIANT_PIPELINES = ("forward", "reversed", "instruct")


def register_pipelines() -> dict[str, Pipeline]:
    """Register every pipeline package; `__default__` runs ingest and all variants."""
    pipelines = find_pipelines(raise_errors=True)
    pipelines.pop("__default__", None)
    variants = [pipelines[name] for name in VARIANT_PIPELINES if name in pipelines]
    if variants:
        pipelines["__default__"] = sum(variants, Pipeline([]))
    return pipelines
