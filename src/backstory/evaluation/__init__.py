"""Evaluation layer: metrics, lineage checks, sampling for reports, cross-run comparison."""
