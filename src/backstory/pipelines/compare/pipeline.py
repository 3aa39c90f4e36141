"""Wire the compare nodes over the runs of an experiment; they read what the runs persisted.

Namespaced `compare`, so its datasets are `compare.<name>` and kedro-viz shows it as one
collapsible group. Inputs that vary with the experiment (a few datasets per run, the
lead group's models) are passed positionally under template names without dots (dots
are reserved for namespaces) and mapped to the runs' datasets.
"""

from __future__ import annotations

from functools import partial, update_wrapper

from kedro.pipeline import Pipeline, node

from backstory.evaluation.plots import (
    plot_bpb_scatter,
    plot_delta,
    plot_loss_curves,
    plot_sweep,
    plot_training_curves,
)
from backstory.experiment import Experiment
from backstory.pipelines.compare.nodes import (
    PER_RUN,
    build_report,
    check_instruction_following,
    collect_scores,
    generate_comparison_stories,
    lead_runs,
    list_imported_models,
    measure_arrow_of_time,
    measure_excess,
    measure_floor,
    measure_training_curves,
    score_coherence,
    story_readers,
)

LOGS = ("train_loss_curve", "val_loss_curve", "metrics")


# The report's stories are sampled as the runs' samples are: one SamplingConfig, whose
# values are written once, in run_defaults.evaluate.
SAMPLING = "params:run_defaults.evaluate"


def _bound(func, **kwargs):
    return update_wrapper(partial(func, **kwargs), func)


def _local(dataset: str) -> str:
    """The template name of an outside dataset: dots become double underscores."""
    return dataset.replace(".", "__")


def create_pipeline(experiment: Experiment) -> Pipeline:
    runs = [run.describe() for run in experiment.runs]
    lead = lead_runs(runs)
    writers = list(lead.values())
    readers = story_readers(lead)
    scores = [f"{run['run']}.{name}" for run in runs for name in PER_RUN]
    logs = [f"{run['run']}.{log}" for run in runs for log in LOGS]
    models = [f"{run['run']}.model" for run in writers]
    # Imported models: their levels on the same stories, each in its own tokens.
    externals = [spec.describe() for spec in experiment.externals]
    imported = [f"{spec.namespace}.metrics" for spec in experiment.externals]
    outside = list(dict.fromkeys([*scores, *logs, *models, *imported, "stories", "tokenizer"]))

    def local(names: list[str]) -> list[str]:
        return [_local(name) for name in names]

    nodes = [
        node(_bound(collect_scores, runs=runs), local(scores),
             ["models", "document_bits", "eval_curves"], name="collect_scores"),
        node(measure_arrow_of_time, ["document_bits", "models", "params:compare"],
             "arrow_of_time", name="measure_arrow_of_time"),
        node(measure_training_curves, ["eval_curves", "params:compare"], "training_curves",
             name="measure_training_curves"),
        node(plot_bpb_scatter, "document_bits", "bpb_scatter", name="plot_bpb_scatter"),
        node(plot_delta, "arrow_of_time", "delta_plot", name="plot_delta"),
        node(plot_sweep, "arrow_of_time", "sweep_plot", name="plot_sweep"),
        node(measure_floor, ["stories", "document_bits", "eval_curves"], "floor",
             name="measure_floor"),
        node(measure_excess, ["document_bits", "floor", "params:compare"], "floor_excess",
             name="measure_excess"),
        node(plot_training_curves, ["training_curves", "floor"], "training_curves_plot",
             name="plot_training_curves"),
        node(_bound(plot_loss_curves, runs=runs), local(logs), "loss_curves",
             name="plot_loss_curves"),
    ]
    if writers:
        nodes += [
            node(_bound(generate_comparison_stories, runs=writers),
                 ["params:compare", SAMPLING, "tokenizer", "stories",
                  *local([f"{run['run']}.model" for run in writers])],
                 "generated_stories", name="generate_comparison_stories"),
            node(_bound(score_coherence, runs=readers),
                 ["params:compare", "tokenizer", "generated_stories",
                  *local([f"{run['run']}.model" for run in readers])],
                 ["coherence", "story_scores"], name="score_coherence"),
            node(check_instruction_following, ["generated_stories", "params:compare"],
                 "instruction_following", name="check_instruction_following"),
            node(build_report, ["arrow_of_time", "training_curves", "coherence",
                                "instruction_following", "models", "floor_excess",
                                "params:compare", SAMPLING,
                                *(["imported_models"] if externals else [])],
                 ["report", "report_markdown"], name="build_report"),
        ]
    if externals:
        nodes.append(node(_bound(list_imported_models, externals=externals),
                          ["models", *local(imported)], "imported_models",
                          name="list_imported_models"))
    return Pipeline(nodes, namespace="compare",
                    inputs={_local(name): name for name in outside},
                    parameters={"params:compare", SAMPLING}, tags="compare")
