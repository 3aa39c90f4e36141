"""Kedro dataset for the raw corpus folder: saves a ``RawCorpusPlan``, loads a ``RawCorpus``."""

from __future__ import annotations

from kedro.io import DatasetError

from backstory.data.corpus.raw_store import (
    MANIFEST,
    RawCorpus,
    RawCorpusError,
    RawCorpusPlan,
    load_raw_corpus,
    write_raw_corpus,
)
from backstory.datasets.base import PathDataset


class RawCorpusDataset(PathDataset[RawCorpusPlan, RawCorpus]):
    """The raw corpus files as they arrived, with a manifest (see ``raw_store``).

    ``save`` writes (or keeps, when unchanged) every file the plan names, under the
    folder's lock; ``load`` returns the manifest's view, checked against the files.
    """

    saves, saves_what = (RawCorpusPlan,), "a RawCorpusPlan"

    def load(self) -> RawCorpus:
        try:
            return load_raw_corpus(self._filepath)
        except RawCorpusError as err:
            raise DatasetError(str(err)) from None

    def _write(self, data: RawCorpusPlan) -> None:
        write_raw_corpus(self._filepath, data)

    def _exists(self) -> bool:
        return (self._filepath / MANIFEST).is_file()
