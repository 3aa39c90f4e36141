"""Kedro dataset for the story table: saves a ``CleanPlan``, loads a ``StoryTable``."""

from __future__ import annotations

from kedro.io import DatasetError

from backstory.data.corpus.story_table import (
    MANIFEST,
    CleanPlan,
    StoryTable,
    StoryTableError,
    build_story_table,
)
from backstory.datasets.base import PathDataset


class StoryTableDataset(PathDataset[CleanPlan, StoryTable]):
    """The cleaned corpus: parquet partitions and the manifest that makes them one unit.

    ``save`` cleans the plan's raw corpus into the folder (in parallel, resumable, the
    manifest replaced atomically at the end, see ``story_table``); ``load`` returns the
    finished table, each partition checked against its recorded sha256 when read.
    """

    saves, saves_what = (CleanPlan,), "a CleanPlan"

    def load(self) -> StoryTable:
        try:
            return StoryTable(self._filepath)
        except StoryTableError as err:
            raise DatasetError(str(err)) from None

    def _write(self, data: CleanPlan) -> None:
        build_story_table(self._filepath, data)

    def _exists(self) -> bool:
        return (self._filepath / MANIFEST).is_file()
