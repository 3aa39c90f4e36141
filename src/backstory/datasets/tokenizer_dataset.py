"""Kedro dataset for a sentencepiece model file, loaded as a ``Tokenizer``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from kedro.io.core import AbstractDataset, DatasetError

from backstory.data.tokenizer import Tokenizer


class SentencePieceDataset(AbstractDataset[bytes | Tokenizer, Tokenizer]):
    """A ``tokenizer.model`` file: saves model bytes (or a Tokenizer), loads a Tokenizer.

    Example catalog entry::

        tokenizer:
          type: backstory.datasets.tokenizer_dataset.SentencePieceDataset
          filepath: data/06_models/tokenizer/tokenizer.model
    """

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None) -> None:
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> Tokenizer:
        if not self._filepath.is_file():
            raise DatasetError(f"tokenizer model file not found: {self._filepath}")
        return Tokenizer.from_file(self._filepath)

    def save(self, data: bytes | Tokenizer) -> None:
        if isinstance(data, Tokenizer):
            payload = data.model_bytes
        elif isinstance(data, bytes | bytearray):
            payload = bytes(data)
            Tokenizer.from_bytes(payload)  # refuse to write something that will not load
        else:
            raise DatasetError(
                f"SentencePieceDataset({self._filepath}) saves bytes or a Tokenizer, "
                f"got {type(data).__name__}"
            )
        self._write_atomically(payload)

    def _write_atomically(self, payload: bytes) -> None:
        # A crash mid-write must never leave a truncated model under the final name.
        self._filepath.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._filepath.parent, prefix=self._filepath.name + ".")
        try:
            os.chmod(tmp, 0o644)  # mkstemp makes it private; a model file is not secret
            with os.fdopen(fd, "wb") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self._filepath)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}
