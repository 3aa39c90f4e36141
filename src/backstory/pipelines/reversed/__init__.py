"""The `reversed` pipeline: shared ingest, then the reversed variant of the model template."""

from backstory.pipelines.reversed.pipeline import create_pipeline

__all__ = ["create_pipeline"]
