"""Project hooks: say where the reports of a run are once it has finished."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl

logger = logging.getLogger(__name__)

# Outputs a reader opens first after a run (matched on the name after the namespace).
REPORT_NAMES = frozenset({"ingest_report", "metrics", "samples_report", "report",
                          "report_markdown", "loss_curves", "bpb_scatter", "delta_plot"})


def report_paths(pipeline: Any, catalog: Any) -> list[str]:
    """The files of the report datasets ``pipeline`` writes, sorted."""
    paths = []
    for name in sorted(pipeline.all_outputs()):
        if name.rsplit(".", 1)[-1] not in REPORT_NAMES:
            continue
        dataset = catalog.get(name)
        described = dataset._describe() if dataset is not None else {}
        if described.get("filepath"):
            paths.append(str(described["filepath"]))
    return paths


class ReportLocationHooks:
    """After a run, log where its reports are (the last lines a user sees)."""

    @hook_impl
    def after_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        paths = report_paths(pipeline, catalog)
        if not paths:
            return
        folders = sorted({str(Path(p).parent) for p in paths})
        logger.info("Reports are in %s", ", ".join(folders))
        for path in paths:
            logger.info("  %s", path)
