"""The `compare` pipeline: cross-variant report on the variants' persisted outputs."""

from backstory.pipelines.compare.pipeline import create_pipeline

__all__ = ["create_pipeline"]
