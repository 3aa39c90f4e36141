"""The `backward` pipeline: forward's tokens, each training window reversed in token space."""

from backstory.pipelines.backward.pipeline import create_pipeline

__all__ = ["create_pipeline"]
