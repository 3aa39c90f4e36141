"""`kedro run --pipeline forward`: ingest + the forward variant."""

from kedro.pipeline import Pipeline

from backstory.pipelines import ingest, lm


def create_pipeline(**kwargs) -> Pipeline:
    return ingest.create_pipeline() + lm.create_variant_pipeline("forward")
