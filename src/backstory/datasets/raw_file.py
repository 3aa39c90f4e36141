"""A Kedro dataset for one raw corpus file, kept as the exact bytes it arrived with."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError


class RawFileDataset(AbstractDataset[bytes, bytes]):
    """Loads and saves a file's bytes unchanged; parsing (and its errors) is the node's job."""

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> bytes:
        if not self._filepath.is_file():
            raise DatasetError(f"Raw corpus file not found: {self._filepath}")
        return self._filepath.read_bytes()

    def save(self, data: bytes) -> None:
        if not isinstance(data, bytes | bytearray):
            raise DatasetError(f"RawFileDataset saves bytes, got {type(data).__name__}")
        self._filepath.parent.mkdir(parents=True, exist_ok=True)
        partial_path = self._filepath.with_name(self._filepath.name + ".tmp")
        partial_path.write_bytes(data)
        os.replace(partial_path, self._filepath)

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}
