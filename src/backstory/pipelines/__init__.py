"""Kedro pipelines: `ingest`, the variant template (`lm.py`) and one package per variant."""
