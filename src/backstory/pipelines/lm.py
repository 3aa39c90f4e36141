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


def create_variant_pipeline(variant: str, *, tokens_from: str | None = None) -> Pipeline:
    """Export, train and evaluate one variant, namespaced by its name.

    With ``tokens_from``, the variant trains on that variant's token stores instead of
    exporting its own (e.g. `backward` trains on `forward`'s tokens in reverse order).
    """
    exports = [
        node(
            _bound(export_tokens, variant=variant, split=split),
            ["stories", "tokenizer", "ingest_report", "params:text"],
            f"{split}_tokens",
            name=f"export_{split}_tokens",
        )
        for split in ("train", "val")
    ]
    template = Pipeline(
        (exports if tokens_from is None else [])
        + [
            node(
                _bound(train_model, variant=variant),
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
    inputs: dict[str, str] = {name: name for name in SHARED_INPUTS - {"stories", "ingest_report"}}
    if tokens_from is None:
        inputs |= {name: name for name in SHARED_INPUTS}
    else:
        inputs |= {f"{split}_tokens": f"{tokens_from}.{split}_tokens" for split in ("train", "val")}
    return Pipeline(template, namespace=variant, inputs=inputs, tags=variant)


def export_pipeline(variant: str) -> Pipeline:
    """Only the token export nodes of ``variant`` (what a variant with tokens_from needs)."""
    names = [f"{variant}.export_{split}_tokens" for split in ("train", "val")]
    return create_variant_pipeline(variant).only_nodes(*names)
