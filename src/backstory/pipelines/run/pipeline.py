"""Wire the run template: exports per text variant, and training and evaluation per run.

``export_pipeline("reversed")`` turns ``train_tokens`` into ``reversed.train_tokens`` and
``params:text`` into ``params:reversed.text``. ``run_pipeline(run)`` namespaces the
training and evaluation of one run as ``<variant>.<preset>.s<seed>``: its model is
``reversed.small.s1337.model`` and its settings ``params:reversed.small.s1337.train``.
The runs of a variant nest inside the variant's namespace, so kedro-viz shows
variant > preset > seed as collapsible groups.
"""

from __future__ import annotations

from functools import partial, update_wrapper

from kedro.pipeline import Pipeline, node

from backstory import variants
from backstory.experiment import RunSpec
from backstory.pipelines.ingest.nodes import fit_tokenizer
from backstory.pipelines.run.evaluate_nodes import evaluate
from backstory.pipelines.run.export_nodes import export_tokens
from backstory.pipelines.run.train_nodes import train_model

SPLITS = ("train", "val")
INGEST_OUTPUTS = ("stories", "tokenizer", "ingest_report")


def _bound(func, **kwargs):
    """A node function with some keywords fixed, keeping the name kedro-viz shows."""
    return update_wrapper(partial(func, **kwargs), func)


def tokenizer_dataset(variant: str) -> str:
    """The catalog dataset of the tokenizer that encodes ``variant``'s documents: the
    shared ``tokenizer``, or ``<source>.tokenizer`` for a variant with its own."""
    source = variants.get(variant).token_source
    return f"{source}.tokenizer" if variants.get(source).own_tokenizer else "tokenizer"


def export_pipeline(source: str) -> Pipeline:
    """Encode the stories as ``source``'s documents: one token store per split (and,
    for a variant with a tokenizer of its own, first train it on its training text)."""
    spec = variants.get(source)
    nodes = [
        node(_bound(export_tokens, variant=source, split=split),
             ["stories", "tokenizer", "ingest_report", "params:text"], f"{split}_tokens",
             name=f"export_{split}_tokens")
        for split in SPLITS
    ]
    inputs = {n: n for n in INGEST_OUTPUTS}
    if spec.own_tokenizer:
        nodes.insert(0, node(_bound(fit_tokenizer, words=spec.words),
                             ["stories", "params:tokenizer"], "tokenizer", name="fit_tokenizer"))
        del inputs["tokenizer"]  # its own: <source>.tokenizer, made here
    return Pipeline(Pipeline(nodes), namespace=source, inputs=inputs,
                    parameters={"params:tokenizer"} if spec.own_tokenizer else None,
                    tags=[source, "export"])


def run_pipeline(run: RunSpec) -> Pipeline:
    """Train and evaluate one run on its variant's token stores."""
    identity = run.describe()
    template = Pipeline([
        node(_bound(train_model, run=identity),
             ["train_tokens", "val_tokens", "training_run", "params:model", "params:train"],
             "model", name="train_model"),
        node(_bound(evaluate, run=identity),
             ["model", "val_tokens", "train_tokens", "tokenizer", "params:evaluate"],
             ["metrics", "samples", "samples_report"], name="evaluate_model"),
    ])
    tokens = {f"{split}_tokens": f"{run.token_source}.{split}_tokens" for split in SPLITS}
    return Pipeline(template, namespace=run.namespace,
                    inputs={"tokenizer": tokenizer_dataset(run.variant), **tokens},
                    tags=[run.variant, run.namespace])
