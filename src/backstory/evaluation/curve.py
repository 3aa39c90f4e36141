"""Per-story bits during training: the same validation stories at every evaluation step.

``EvalCurve`` is the training loop's ``on_eval(step, model)`` callback: at each
evaluation step it scores the first ``n_stories`` validation documents (a prefix of
the run's evaluation stories, so the same stories for every run and every step) and
writes their story bits to ``eval_curve.csv`` in the run folder (columns step, doc,
bits). Rows of a step are replaced when that step is evaluated again, so a resumed
run ends with the same file as an uninterrupted one; floats are written exactly
(``repr``), so two clean runs write the same bytes.

It holds only paths and numbers, so it pickles into the worker processes of a
multi-process run (where only rank 0 calls it).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from backstory.core.files import write_csv_atomically
from backstory.data.token_store import TokenStore
from backstory.evaluation.metrics import document_bits

EVAL_CURVE = "eval_curve.csv"  # in the run folder; the catalog's <run>.eval_curve
COLUMNS = ("step", "doc", "bits")


@dataclass(frozen=True)
class EvalCurve:
    """Score the first ``n_stories`` documents of ``store_path`` at each evaluation step."""

    store_path: str
    n_stories: int
    batch_size: int
    token_order: str
    path: str  # the CSV file
    permutation_seed: int | None = None  # token order `permuted` only

    def __call__(self, step: int, model) -> None:
        with TokenStore(Path(self.store_path)) as store:
            n = min(self.n_stories, store.n_docs)
            bits = document_bits(model, store, seq_len=model.config.max_seq_len,
                                 batch_size=self.batch_size, token_order=self.token_order,
                                 docs=range(n), permutation_seed=self.permutation_seed)
        kept = [row for row in read_rows(Path(self.path)) if int(row[0]) < step]
        rows = kept + [[str(step), str(doc), repr(float(b))] for doc, b in enumerate(bits)]
        write_rows(Path(self.path), rows)


def read_rows(path: Path) -> list[list[str]]:
    """The data rows of a curve file (none if it does not exist)."""
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows or tuple(rows[0]) != COLUMNS:
        raise ValueError(f"{path} is not an evaluation curve (columns {', '.join(COLUMNS)}); "
                         "delete it and train again")
    return rows[1:]


def write_rows(path: Path, rows: list[list[str]]) -> None:
    write_csv_atomically(path, [COLUMNS, *rows], lineterminator="\n")


def curve_frame(table: pd.DataFrame, name: str) -> pd.DataFrame:
    """A curve as loaded from the catalog, checked: step, doc, bits."""
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{name} lacks the columns {missing}; it has {list(table.columns)}")
    return table[list(COLUMNS)]
