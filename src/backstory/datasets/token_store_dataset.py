"""Kedro dataset for the H5 token store: saves a `TokenStream`, loads a `TokenStore`."""

from __future__ import annotations

from backstory.core.locks import replacing_artifact, use_artifact
from backstory.data.token_export import write_token_store_parallel
from backstory.data.token_store import TokenStore
from backstory.data.token_writer import TokenStream, write_token_store
from backstory.datasets.base import PathDataset

WHAT = "a token store"


class TokenStoreDataset(PathDataset[TokenStream, TokenStore]):
    """One token-store file (`data/05_model_input/<variant>/<split>.h5`).

    `save` writes a stream's `documents` partition by partition in worker processes,
    resumably (`backstory.data.token_export`), or consumes its `batches` lazily in this
    process; either way the encoded corpus is never held in memory. `load` returns a
    memory-mapped, picklable `TokenStore`.
    """

    saves, saves_what = (TokenStream,), "a TokenStream"

    def load(self) -> TokenStore:
        use_artifact(self._filepath, WHAT)
        return TokenStore(self._filepath)

    def _write(self, data: TokenStream) -> None:
        # The new store is written aside and renamed over the old one, so a process that
        # mapped the old file keeps reading its bytes; the lock keeps live runs' files.
        with replacing_artifact(self._filepath, WHAT):
            if data.documents is not None:
                write_token_store_parallel(self._filepath, data.documents, attrs=data.attrs,
                                           workers=data.workers)
            else:
                write_token_store(self._filepath, data.batches, attrs=data.attrs)

    def _exists(self) -> bool:
        return self._filepath.is_file()
