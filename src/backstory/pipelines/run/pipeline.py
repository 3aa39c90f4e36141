"""Wire the run template: exports per text variant, and training and evaluation per run.

``export_pipeline("reversed")`` turns ``train_tokens`` into ``reversed.train_tokens`` and
``params:text`` into ``params:reversed.text``. ``run_pipeline(run)`` namespaces the
training and evaluation of one run as ``<variant>.<preset>.s<seed>``: its model is
``reversed.small.s1337.model`` and its settings ``params:reversed.small.s1337.train``.
The runs of a variant nest inside the variant's namespace, so kedro-viz shows
variant > preset > seed as collapsible groups. A run of a fine-tuned variant
(``instruct_ft.small.s1337``) also reads the model of the run it starts from
(``forward.small.s1337.model``) and its ``finetune`` settings.

``external_pipeline(spec)`` imports one declared external model into
``external.<name>``: the model and its tokenizer, the validation stories encoded with
that tokenizer in the stated variant's layout, and its metrics on the same stories as
the runs.
"""

from __future__ import annotations

from functools import partial, update_wrapper

from kedro.pipeline import Pipeline, node

from backstory import variants
from backstory.experiment import EXTERNAL, RUN_DEFAULTS, ExternalSpec, RunSpec
from backstory.pipelines.run.evaluate_nodes import evaluate
from backstory.pipelines.run.export_nodes import export_tokens, fit_own_tokenizer
from backstory.pipelines.run.external_nodes import evaluate_external, import_external
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
        nodes.insert(0, node(_bound(fit_own_tokenizer, words=spec.words),
                             ["stories", "params:tokenizer"], "tokenizer", name="fit_tokenizer"))
        del inputs["tokenizer"]  # its own: <source>.tokenizer, made here
    return Pipeline(Pipeline(nodes), namespace=source, inputs=inputs,
                    parameters={"params:tokenizer"} if spec.own_tokenizer else None,
                    tags=[source, "export"])


def run_pipeline(run: RunSpec) -> Pipeline:
    """Train and evaluate one run on its variant's token stores."""
    identity = run.describe()
    # Training reads only the two evaluate settings its curve needs, so DVC reruns it for
    # those and not for, say, a new sampling temperature.
    inputs = ["train_tokens", "val_tokens", "training_run", "live", "params:model",
              "params:train", "params:evaluate.curve_stories", "params:evaluate.batch_size"]
    init = run.init_run
    if init is None:
        training = node(_bound(train_model, run=identity), inputs, "model", name="train_model")
    else:
        training = node(_bound(train_model, run=identity, init_run=init.namespace),
                        [*inputs, "params:finetune", "init_model"], "model", name="train_model")
    template = Pipeline([
        training,
        node(_bound(evaluate, run=identity),
             ["model", "val_tokens", "train_tokens", "tokenizer", "stories", "params:evaluate"],
             ["metrics", "document_bits", "samples", "samples_report"], name="evaluate_model"),
    ])
    outside = {"tokenizer": tokenizer_dataset(run.variant), "stories": "stories"}
    outside |= {f"{split}_tokens": f"{run.token_source}.{split}_tokens" for split in SPLITS}
    if init is not None:
        outside["init_model"] = f"{init.namespace}.model"
    return Pipeline(template, namespace=run.namespace, inputs=outside,
                    tags=[run.variant, run.namespace])


def external_pipeline(spec: ExternalSpec) -> Pipeline:
    """Import one external model and score it on the runs' validation stories."""
    source = spec.token_source
    template = Pipeline([
        node(_bound(import_external, name=spec.name), "params:declaration",
             ["model", "tokenizer"], name="import_model"),
        node(_bound(export_tokens, variant=source, split="val"),
             ["stories", "tokenizer", "ingest_report", "params:text"], "val_tokens",
             name="export_val_tokens"),
        node(_bound(evaluate_external, external=spec.describe()),
             ["model", "val_tokens", "runs_val_tokens", "stories", "params:evaluate"],
             ["metrics", "document_bits"], name="evaluate_model"),
    ])
    return Pipeline(
        template, namespace=spec.namespace,
        inputs={"stories": "stories", "ingest_report": "ingest_report",
                "runs_val_tokens": f"{source}.val_tokens"},
        parameters={"params:declaration": f"params:{spec.namespace}",
                    "params:text": f"params:{source}.text",
                    "params:evaluate": f"params:{RUN_DEFAULTS}.evaluate"},
        tags=[EXTERNAL, spec.namespace],
    )
