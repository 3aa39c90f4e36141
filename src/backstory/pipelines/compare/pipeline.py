"""Wire the compare nodes; they read what the variant pipelines persisted.

Namespaced `compare`, so its datasets are `compare.<name>` and kedro-viz shows it as one
collapsible group next to the variants.
"""

from kedro.pipeline import Pipeline, node

from backstory.pipelines.compare.nodes import (
    VARIANTS,
    build_report,
    check_instruction_following,
    generate_comparison_stories,
    measure_arrow_of_time,
    score_coherence,
    score_validation_documents,
)
from backstory.pipelines.compare.plots import plot_bpb_scatter, plot_delta, plot_loss_curves

# Template names (forward_model) map to the variants' datasets (forward.model): dots in
# a template's own names are reserved for namespaces.
MODELS = [f"{v}_model" for v in VARIANTS]
VAL_TOKENS = [f"{v}_val_tokens" for v in VARIANTS]
LOGS = [f"{v}_{log}" for v in VARIANTS for log in ("train_log", "val_log")]
METRICS = [f"{v}_metrics" for v in VARIANTS]
SHARED_INPUTS = {"stories": "stories", "tokenizer": "tokenizer"} | {
    name: name.replace("_", ".", 1) for name in (*MODELS, *VAL_TOKENS, *LOGS, *METRICS)
} | {"backward_val_tokens": "forward.val_tokens"}  # backward reads forward's tokens


def create_pipeline(**kwargs) -> Pipeline:
    template = Pipeline(
        [
            node(score_validation_documents, [*MODELS, *VAL_TOKENS, "params:compare"],
                 ["document_bits", "models"], name="score_validation_documents"),
            node(measure_arrow_of_time, ["document_bits", "models", "params:compare"],
                 "arrow_of_time", name="measure_arrow_of_time"),
            node(generate_comparison_stories,
                 ["forward_model", "reversed_model", "instruct_model", "tokenizer", "stories",
                  "params:compare"],
                 "generated_stories", name="generate_comparison_stories"),
            node(score_coherence, ["forward_model", "reversed_model", "tokenizer",
                                   "generated_stories", "params:compare"],
                 ["coherence", "story_scores"], name="score_coherence"),
            node(check_instruction_following, "generated_stories", "instruction_following",
                 name="check_instruction_following"),
            node(build_report, ["arrow_of_time", "coherence", "instruction_following",
                                "params:compare"], ["report", "report_markdown"],
                 name="build_report"),
            node(plot_loss_curves, [*LOGS, *METRICS], "loss_curves", name="plot_loss_curves"),
            node(plot_bpb_scatter, "document_bits", "bpb_scatter", name="plot_bpb_scatter"),
            node(plot_delta, "arrow_of_time", "delta_plot", name="plot_delta"),
        ]
    )
    return Pipeline(template, namespace="compare", inputs=SHARED_INPUTS,
                    parameters={"params:compare"}, tags="compare")
