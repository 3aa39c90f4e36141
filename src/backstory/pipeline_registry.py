"""Project pipelines, built from the experiment declared in parameters.

Registered names:
- ``ingest``: corpus, validated stories, tokenizer;
- each variant with runs (``forward``, ``reversed``, ...): ingest, the exports it needs,
  and every run of that variant;
- each run (``reversed.small.s1337``): ingest, its export and that run alone;
- ``compare``: the comparison nodes only (they read what the runs persisted);
- ``__default__`` (``kedro run``): all of the above.

Kedro registers pipelines before it reads parameters, so the project hook
(``backstory.hooks.ExperimentHooks``) reads the experiment of the session's environment
and rebuilds the registry when it differs from the one loaded here.
"""

from __future__ import annotations

from kedro.pipeline import Pipeline

from backstory import variants
from backstory.experiment import Experiment
from backstory.pipelines.compare.pipeline import create_pipeline as compare_pipeline
from backstory.pipelines.ingest.pipeline import create_pipeline as ingest_pipeline
from backstory.pipelines.run.pipeline import export_pipeline, run_pipeline


def build_pipelines(experiment: Experiment) -> dict[str, Pipeline]:
    """Every registered pipeline of ``experiment``."""
    base = ingest_pipeline()
    exports = {source: export_pipeline(source) for source in experiment.token_sources}
    runs = {run.namespace: run_pipeline(run) for run in experiment.runs}
    pipelines: dict[str, Pipeline] = {"ingest": base}
    for variant in experiment.variants:
        own = [runs[run.namespace] for run in experiment.runs_of(variant)]
        export = exports[variants.get(variant).token_source]
        pipelines[variant] = base + export + sum(own, Pipeline([]))
        for run in experiment.runs_of(variant):
            pipelines[run.namespace] = base + export + runs[run.namespace]
    pipelines["compare"] = compare_pipeline(experiment)
    pipelines["__default__"] = (base + sum(exports.values(), Pipeline([]))
                                + sum(runs.values(), Pipeline([])) + pipelines["compare"])
    return pipelines


def register_pipelines() -> dict[str, Pipeline]:
    """The pipelines of the active environment's experiment (see the module docstring)."""
    from backstory.hooks import active_experiment

    return build_pipelines(active_experiment())
