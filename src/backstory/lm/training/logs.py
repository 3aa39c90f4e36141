"""A training run's logs: DVCLive for the curves, parameters and summary; a speed log.

DVCLive writes ``plots/metrics/...``, ``metrics.json`` and ``params.yaml`` (settings,
lineage and the machine, ``backstory.lm.machine``) into the run's live folder, with no
wall-clock figure, so two clean runs on one machine write the same bytes; those go to
``speed_log.csv`` in the run folder (docs/reproducibility.md). Only the main process logs.

Resuming from step s keeps the rows up to s and drops the later ones (a killed run may
have logged past its last checkpoint), so a resumed run ends with the same files as an
uninterrupted one.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from backstory.core.files import write_csv_atomically

logger = logging.getLogger(__name__)

LIVE_DIR = "live"  # inside the run folder when train() is given no live folder
SPEED_LOG = "speed_log.csv"
SPEED_COLUMNS = ("step", "tokens_per_s", "mfu", "elapsed_s")
TRAIN_LOSS, LR, VAL_LOSS = "train/loss", "train/lr", "val/loss"  # DVCLive metric names
METRICS_FILE = "metrics.json"  # DVCLive's file names in its folder (dvc.yaml declares them)
PARAMS_FILE = "params.yaml"
PLOTS_DIR = "plots/metrics"


def curve_file(live_dir: Path, name: str) -> Path:
    """Where DVCLive writes the curve of metric ``name`` (step and value, tab-separated)."""
    return Path(live_dir) / PLOTS_DIR / f"{name}.tsv"


class Meter:
    """Tokens per second between two log steps."""

    def __init__(self, step: int) -> None:
        self.restart(step)

    def restart(self, step: int) -> None:
        self.start, self.step = time.perf_counter(), step

    def rate(self, step: int, tokens_per_step: int) -> float:
        now = time.perf_counter()
        rate = (step - self.step) * tokens_per_step / max(now - self.start, 1e-9)
        self.start, self.step = now, step
        return rate


class RunLogs:
    """The logs of one process's training session (see the module docstring).

    ``start(step, params)`` opens them at the run's current step; on other ranks than
    the main one every method does nothing.
    """

    def __init__(self, run_dir: Path, live_dir: Path | None, *, main: bool) -> None:
        self.run_dir = Path(run_dir)
        self.live_dir = Path(live_dir) if live_dir is not None else self.run_dir / LIVE_DIR
        self.main = main
        self.live: Any = None

    @property
    def speed_log(self) -> Path:
        return self.run_dir / SPEED_LOG

    def start(self, step: int, params: Mapping[str, Any]) -> float:
        """Open the logs at ``step``; the seconds spent before it (from the speed log)."""
        if not self.main:
            return 0.0
        from dvclive import Live  # imports DVC: only where a run actually logs

        elapsed = elapsed_at(self.speed_log, step)  # before the restart drops later rows
        start_log(self.speed_log, SPEED_COLUMNS, step)
        if step > 0:
            for path in sorted((self.live_dir / "plots").rglob("*.tsv")):
                _truncate_tsv(path, step)
        self.live = Live(str(self.live_dir), resume=step > 0, save_dvc_exp=False,
                         dvcyaml=False, report=None, monitor_system=False)
        # Sorted keys: the same settings give the same params.yaml whatever the order the
        # caller built them in (a lineage read back from model.json is sorted).
        self.live.log_params(json.loads(json.dumps(dict(params), sort_keys=True)))
        return elapsed

    def train(self, step: int, loss: float, lr: float, tokens_per_s: float,
              mfu: float | None, elapsed: float) -> None:
        if not self.main:
            return
        self._log(step, {TRAIN_LOSS: loss, LR: lr})
        append_row(self.speed_log, [step, f"{tokens_per_s:.1f}",
                                    "" if mfu is None else f"{mfu:.4f}", f"{elapsed:.3f}"])

    def val(self, step: int, loss: float) -> None:
        if self.main:
            self._log(step, {VAL_LOSS: loss})

    def _log(self, step: int, values: Mapping[str, float]) -> None:
        self.live.step = step
        for name, value in values.items():
            self.live.log_metric(name, float(value), timestamp=False)
        self.live.make_summary()

    def close(self) -> None:
        if self.live is not None:
            self.live.make_summary()
            self.live = None

    def describe(self) -> str:
        return f"{self.live_dir} (DVCLive) and {self.speed_log}"


def _truncate_tsv(path: Path, step: int) -> None:
    """Keep a DVCLive curve's rows up to ``step`` (the header and rows whose step <= it)."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    if not rows or "step" not in rows[0]:
        logger.warning("%s is not a DVCLive curve; starting it afresh", path)
        path.unlink()
        return
    column = rows[0].index("step")
    kept = [rows[0]] + [row for row in rows[1:] if row and int(row[column]) <= step]
    write_csv_atomically(path, kept, delimiter="\t", lineterminator=os.linesep)


def start_log(path: Path, columns: tuple[str, ...], through_step: int) -> None:
    """(Re)start a CSV log keeping only rows up to ``through_step`` (0: header only)."""
    kept: list[list[str]] = []
    if through_step > 0 and path.exists():
        rows = list(_read_rows(path))
        if rows and tuple(rows[0]) == columns:
            kept = [row for row in rows[1:] if row and int(row[0]) <= through_step]
        else:
            logger.warning("%s does not have the columns %s; starting it afresh", path, columns)
    write_csv_atomically(path, [columns, *kept], lineterminator="\n")


def elapsed_at(path: Path, step: int) -> float:
    """Seconds spent up to ``step`` per the speed log's last row at or before it (0 if none).

    The speed log is machine-specific and not versioned, so a missing or unreadable one
    only loses the earlier time from the total that the final log line reports.
    """
    if step <= 0 or not path.exists():
        return 0.0
    rows = list(_read_rows(path))
    if not rows or tuple(rows[0]) != SPEED_COLUMNS:
        logger.warning("%s does not have the columns %s; counting time from 0", path,
                       SPEED_COLUMNS)
        return 0.0
    elapsed = 0.0
    for line, row in enumerate(rows[1:], start=2):
        try:
            row_step, row_elapsed = int(row[0]), float(row[SPEED_COLUMNS.index("elapsed_s")])
        except (IndexError, ValueError):
            logger.warning("%s line %d is not a speed row; ignoring it", path, line)
            continue
        if row_step <= step:
            elapsed = row_elapsed
    return elapsed


def _read_rows(path: Path) -> Iterator[list[str]]:
    with open(path, newline="") as handle:
        yield from csv.reader(handle)


def append_row(path: Path, values: list[Any]) -> None:
    with open(path, "a", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerow(values)
