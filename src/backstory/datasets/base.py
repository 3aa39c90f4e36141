"""What every backstory dataset shares: one path from the catalog, and a type check on save."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from kedro.io import AbstractDataset, DatasetError

Saved = TypeVar("Saved")
Loaded = TypeVar("Loaded")


class PathDataset(AbstractDataset[Saved, Loaded]):
    """A dataset kept at one file or folder, the catalog's ``filepath`` (entries:
    conf/base/catalog.yml).

    ``save`` refuses anything but the types in ``saves`` (described as ``saves_what``),
    naming the path, and hands the rest to the subclass's ``_write``.
    """

    saves: tuple[type, ...] = ()
    saves_what = ""

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None) -> None:
        """``filepath``: the file or folder; ``metadata``: free-form (kedro-viz), unused."""
        self._filepath = Path(filepath)
        self.metadata = metadata

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Kedro records a dataset's arguments (DataCatalog.to_config) by wrapping the
        # class's __init__; the inherited one is wrapped already and would record *args.
        if "__init__" not in cls.__dict__:
            cls.__init__ = PathDataset.__init__.__wrapped__  # type: ignore[method-assign]
        super().__init_subclass__(**kwargs)

    def save(self, data: Saved) -> None:
        if not isinstance(data, self.saves):
            raise DatasetError(f"{self._filepath}: {type(self).__name__} saves "
                               f"{self.saves_what}, got {type(data).__name__}")
        self._write(data)

    def _write(self, data: Saved) -> None:
        raise NotImplementedError

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}
