"""Kedro dataset for the raw corpus folder: saves a ``RawCorpusPlan``, loads a ``RawCorpus``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from backstory.data.corpus.raw_store import (
    MANIFEST,
    RawCorpus,
    RawCorpusError,
    RawCorpusPlan,
    load_raw_corpus,
    write_raw_corpus,
)


class RawCorpusDataset(AbstractDataset[RawCorpusPlan, RawCorpus]):
    """The raw corpus files as they arrived, with a manifest (see ``raw_store``).

    ``save`` writes (or keeps, when unchanged) every file the plan names, under the
    folder's lock; ``load`` returns the manifest's view, checked against the files.

    Example catalog entry::

        raw_corpus:
          type: backstory.datasets.raw_corpus.RawCorpusDataset
          path: data/01_raw/corpus
    """

    def __init__(self, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(path)
        self.metadata = metadata

    def load(self) -> RawCorpus:
        try:
            return load_raw_corpus(self._path)
        except RawCorpusError as err:
            raise DatasetError(str(err)) from None

    def save(self, data: RawCorpusPlan) -> None:
        if not isinstance(data, RawCorpusPlan):
            raise DatasetError(
                f"{self._path}: RawCorpusDataset saves a RawCorpusPlan, got {type(data).__name__}"
            )
        write_raw_corpus(self._path, data)

    def _exists(self) -> bool:
        return (self._path / MANIFEST).is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
