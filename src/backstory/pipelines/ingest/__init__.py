"""The shared ingest pipeline: corpus, validated stories with their split, tokenizer."""

from backstory.pipelines.ingest.pipeline import create_pipeline

__all__ = ["create_pipeline"]
