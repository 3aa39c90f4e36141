"""Kedro dataset for the story table: saves a ``CleanPlan``, loads a ``StoryTable``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from backstory.data.corpus.story_table import (
    MANIFEST,
    CleanPlan,
    StoryTable,
    StoryTableError,
    build_story_table,
)


class StoryTableDataset(AbstractDataset[CleanPlan, StoryTable]):
    """The cleaned corpus: parquet partitions and the manifest that makes them one unit.

    ``save`` cleans the plan's raw corpus into the folder (in parallel, resumable, the
    manifest replaced atomically at the end, see ``story_table``); ``load`` returns the
    finished table, each partition checked against its recorded sha256 when read.

    Example catalog entry::

        stories:
          type: backstory.datasets.story_table.StoryTableDataset
          path: data/02_intermediate/stories
    """

    def __init__(self, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(path)
        self.metadata = metadata

    def load(self) -> StoryTable:
        try:
            return StoryTable(self._path)
        except StoryTableError as err:
            raise DatasetError(str(err)) from None

    def save(self, data: CleanPlan) -> None:
        if not isinstance(data, CleanPlan):
            raise DatasetError(
                f"{self._path}: StoryTableDataset saves a CleanPlan, got {type(data).__name__}"
            )
        build_story_table(self._path, data)

    def _exists(self) -> bool:
        return (self._path / MANIFEST).is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
