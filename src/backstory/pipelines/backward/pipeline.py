"""`kedro run --pipeline backward`: ingest + forward's token export + the backward model.

The Arrows of Time setup: the same tokens, windows and split as `forward`, each window
reversed in token space (`train.token_order: backward`), so losses per token compare.
"""

from kedro.pipeline import Pipeline

from backstory.pipelines import ingest, lm


def create_pipeline(**kwargs) -> Pipeline:
    return (
        ingest.create_pipeline()
        + lm.export_pipeline("forward")
        + lm.create_variant_pipeline("backward", tokens_from="forward")
    )
