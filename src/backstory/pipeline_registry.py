"""Project pipelines, built from the experiment declared in parameters (the registered
names: docs/configuration.md).

Kedro registers pipelines before it reads parameters, so the project hook
(``backstory.hooks.ExperimentHooks``) reads the experiment of the session's environment
and rebuilds the registry when it differs from the one loaded here.
"""

from __future__ import annotations

from kedro.pipeline import Pipeline

from backstory.experiment import EXTERNAL, Experiment, RunSpec
from backstory.pipelines.compare.pipeline import create_pipeline as compare_pipeline
from backstory.pipelines.ingest.pipeline import create_pipeline as ingest_pipeline
from backstory.pipelines.run.pipeline import export_pipeline, external_pipeline, run_pipeline


def build_pipelines(experiment: Experiment) -> dict[str, Pipeline]:
    """Every registered pipeline of ``experiment``."""
    base = ingest_pipeline()
    exports = {source: export_pipeline(source) for source in experiment.token_sources}
    runs = {run.namespace: run_pipeline(run) for run in experiment.runs}
    externals = {spec.namespace: external_pipeline(spec) for spec in experiment.externals}

    def alone(run: RunSpec) -> Pipeline:
        """A run with what it needs beyond ingest: its export, and the training (and
        export) of the run whose model it starts from."""
        needed = exports[run.token_source] + runs[run.namespace]
        init = run.init_run
        if init is not None:
            needed += exports[init.token_source] + runs[init.namespace].only_nodes_with_outputs(
                f"{init.namespace}.model")
        return needed

    pipelines: dict[str, Pipeline] = {"ingest": base}
    for variant in experiment.variants:
        own = experiment.runs_of(variant)
        pipelines[variant] = base + sum((alone(run) for run in own), Pipeline([]))
        for run in own:
            pipelines[run.namespace] = base + alone(run)
    for spec in experiment.externals:
        pipelines[spec.namespace] = base + exports[spec.token_source] + externals[spec.namespace]
    if externals:
        pipelines[EXTERNAL] = sum((pipelines[name] for name in externals), Pipeline([]))
    pipelines["compare"] = compare_pipeline(experiment)
    pipelines["__default__"] = (base + sum(exports.values(), Pipeline([]))
                                + sum(runs.values(), Pipeline([]))
                                + sum(externals.values(), Pipeline([])) + pipelines["compare"])
    return pipelines


def register_pipelines() -> dict[str, Pipeline]:
    """The pipelines of the active environment's experiment."""
    from backstory.hooks import active_experiment

    return build_pipelines(active_experiment())
