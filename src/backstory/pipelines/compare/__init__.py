"""The `compare` pipeline: the cross-run report on the runs' persisted outputs."""
