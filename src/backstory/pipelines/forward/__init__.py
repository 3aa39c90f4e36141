"""The `forward` pipeline: shared ingest, then the forward variant of the model template."""

from backstory.pipelines.forward.pipeline import create_pipeline

__all__ = ["create_pipeline"]
