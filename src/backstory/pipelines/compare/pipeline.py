"""Wire the compare nodes over the runs of an experiment; they read what the runs persisted.

Namespaced `compare`, so its datasets are `compare.<name>` and kedro-viz shows it as one
collapsible group. Inputs that vary with the experiment (a model per run, a store per
text variant) are passed positionally under template names without dots (dots are
reserved for namespaces) and mapped to the runs' datasets.
"""

from __future__ import annotations

from functools import partial, update_wrapper

from kedro.pipeline import Pipeline, node

from backstory.experiment import Experiment
from backstory.pipelines.compare.nodes import (
    build_report,
    check_instruction_following,
    generate_comparison_stories,
    lead_runs,
    measure_arrow_of_time,
    score_coherence,
    score_validation_documents,
    story_readers,
)
from backstory.pipelines.compare.plots import plot_bpb_scatter, plot_delta, plot_loss_curves

LOGS = ("train_log", "val_log", "metrics")


def _bound(func, **kwargs):
    return update_wrapper(partial(func, **kwargs), func)


def _local(dataset: str) -> str:
    """The template name of an outside dataset: dots become double underscores."""
    return dataset.replace(".", "__")


def create_pipeline(experiment: Experiment) -> Pipeline:
    runs = [run.describe() for run in experiment.runs]
    sources = experiment.token_sources
    lead = lead_runs(runs)
    writers = list(lead.values())
    readers = story_readers(lead)
    models = [f"{run['run']}.model" for run in runs]
    stores = [f"{source}.val_tokens" for source in sources]
    # Imported models: scored on the same stories, each in its own tokens.
    externals = [spec.describe() for spec in experiment.externals]
    imported = [f"{spec.namespace}.{name}" for name in ("model", "val_tokens")
                for spec in experiment.externals]
    logs = [f"{run['run']}.{log}" for run in runs for log in LOGS]
    outside = [*models, *stores, *imported, *logs, "stories", "tokenizer"]

    def local(names: list[str]) -> list[str]:
        return [_local(name) for name in names]

    nodes = [
        node(_bound(score_validation_documents, runs=runs, sources=sources,
                    externals=externals),
             ["params:compare", *local(models), *local(stores), *local(imported)],
             ["document_bits", "models"], name="score_validation_documents"),
        node(measure_arrow_of_time, ["document_bits", "models", "params:compare"],
             "arrow_of_time", name="measure_arrow_of_time"),
        node(plot_bpb_scatter, "document_bits", "bpb_scatter", name="plot_bpb_scatter"),
        node(plot_delta, "arrow_of_time", "delta_plot", name="plot_delta"),
        node(_bound(plot_loss_curves, runs=runs), local(logs), "loss_curves",
             name="plot_loss_curves"),
    ]
    if writers:
        nodes += [
            node(_bound(generate_comparison_stories, runs=writers),
                 ["params:compare", "tokenizer", "stories",
                  *local([f"{run['run']}.model" for run in writers])],
                 "generated_stories", name="generate_comparison_stories"),
            node(_bound(score_coherence, runs=readers),
                 ["params:compare", "tokenizer", "generated_stories",
                  *local([f"{run['run']}.model" for run in readers])],
                 ["coherence", "story_scores"], name="score_coherence"),
            node(check_instruction_following, "generated_stories", "instruction_following",
                 name="check_instruction_following"),
            node(build_report, ["arrow_of_time", "coherence", "instruction_following",
                                "params:compare"], ["report", "report_markdown"],
                 name="build_report"),
        ]
    return Pipeline(nodes, namespace="compare",
                    inputs={_local(name): name for name in outside},
                    parameters={"params:compare"}, tags="compare")
