"""Kedro dataset for a sentencepiece model file, loaded as a ``Tokenizer``."""

from __future__ import annotations

from kedro.io.core import DatasetError

from backstory.core.files import write_bytes_atomically
from backstory.core.locks import replacing_artifact, use_artifact
from backstory.data.tokenizer import Tokenizer
from backstory.datasets.base import PathDataset

WHAT = "the tokenizer"


class SentencePieceDataset(PathDataset[bytes | Tokenizer, Tokenizer]):
    """A ``tokenizer.model`` file: saves model bytes (or a Tokenizer), loads a Tokenizer."""

    saves, saves_what = (bytes, bytearray, Tokenizer), "bytes or a Tokenizer"

    def load(self) -> Tokenizer:
        use_artifact(self._filepath, WHAT)
        if not self._filepath.is_file():
            raise DatasetError(f"tokenizer model file not found: {self._filepath}")
        return Tokenizer.from_file(self._filepath)

    def _write(self, data: bytes | Tokenizer) -> None:
        if isinstance(data, Tokenizer):
            payload = data.model_bytes
        else:
            payload = bytes(data)
            Tokenizer.from_bytes(payload)  # refuse to write something that will not load
        if self._filepath.is_file() and self._filepath.read_bytes() == payload:
            use_artifact(self._filepath, WHAT)  # the same model: runs reading it go on
            return
        # A crash mid-write must never leave a truncated model under the final name, and a
        # run that reads this tokenizer must not see it replaced.
        with replacing_artifact(self._filepath, WHAT):
            write_bytes_atomically(self._filepath, payload)

    def _exists(self) -> bool:
        return self._filepath.is_file()
