"""The language-model template: one pipeline, instantiated once per variant by namespace.

`create_variant_pipeline("reversed")` turns `train_tokens` into `reversed.train_tokens`
and `params:train` into `params:reversed.train`; the ingest outputs stay shared.
"""

from functools import partial, update_wrapper

from kedro.pipeline import Pipeline, node

from backstory.pipelines.lm_nodes import evaluate, export_tokens, train_model

SHARED_INPUTS = {"stories", "tokenizer", "ingest_report"}


def _bound(func, **kwargs):
    """A node function with some keywords fixed, keeping the name kedro-viz shows."""
    return update_wrapper(partial(func, **kwargs), func)


def create_variant_pipeline(variant: str) -> Pipeline:
    """Export, train and evaluate one variant, namespaced by its name."""
    template = Pipeline(
        [
            node(
                _bound(export_tokens, variant=variant, split=split),
                ["stories", "tokenizer", "ingest_report", "params:text"],
                f"{split}_tokens",
                name=f"export_{split}_tokens",
            )
            for split in ("train", "val")
        ]
        + [
            node(
                train_model,
                ["train_tokens", "val_tokens", "training_run", "params:model", "params:train"],
                "model",
                name="train_model",
            ),
            node(
                _bound(evaluate, variant=variant),
                ["model", "val_tokens", "train_tokens", "tokenizer", "params:evaluate"],
                ["metrics", "samples", "samples_report"],
                name="evaluate_model",
            ),
        ]
    )
    return Pipeline(template, namespace=variant, inputs=SHARED_INPUTS, tags=variant)
