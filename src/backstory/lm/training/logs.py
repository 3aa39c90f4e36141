"""A training run's CSV logs and its throughput meter.

``train_log.csv`` (step, loss, lr) and ``val_log.csv`` (step, val_loss) are
bit-identical between runs of the same settings on the same machine;
``speed_log.csv`` (step, tokens_per_s, mfu, elapsed_s) holds the wall-clock figures,
kept apart so that everything else in a run folder is deterministic (DVC ignores it
through ``.dvcignore``). On resume, the time spent so far is read back from its last row
at or before the step.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

TRAIN_LOG = "train_log.csv"
VAL_LOG = "val_log.csv"
SPEED_LOG = "speed_log.csv"
TRAIN_COLUMNS = ("step", "loss", "lr")
VAL_COLUMNS = ("step", "val_loss")
SPEED_COLUMNS = ("step", "tokens_per_s", "mfu", "elapsed_s")


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


def start_log(path: Path, columns: tuple[str, ...], through_step: int) -> None:
    """(Re)start a CSV log keeping only rows up to ``through_step`` (0: header only)."""
    kept: list[list[str]] = []
    if through_step > 0 and path.exists():
        rows = list(_read_rows(path))
        if rows and tuple(rows[0]) == columns:
            kept = [row for row in rows[1:] if row and int(row[0]) <= through_step]
        else:
            logger.warning("%s does not have the columns %s; starting it afresh", path, columns)
    tmp = path.with_name(f"{path.name}.tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(kept)
    os.replace(tmp, path)


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
