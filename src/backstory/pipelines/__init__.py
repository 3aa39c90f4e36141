"""Kedro pipelines: `ingest`, the run template (`run/`) and `compare`."""
