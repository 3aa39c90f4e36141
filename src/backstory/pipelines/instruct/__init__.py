"""The `instruct` pipeline: shared ingest, then the instruct variant of the model template."""

from backstory.pipelines.instruct.pipeline import create_pipeline

__all__ = ["create_pipeline"]
