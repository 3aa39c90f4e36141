"""Reading a token store: small arrays loaded, tokens memory-mapped, windows gathered."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from backstory import params
from backstory.data.token_format import (
    TOKEN_RANGE_CHUNK,
    Header,
    TokenStoreError,
    check_token_ranges,
    is_int,
    read_header,
    token_ranges_of,
)


class TokenStore:
    """A read-only token store: small arrays loaded, tokens memory-mapped.

    Picklable: the pickle holds only the path, and unpickling reopens the file, so a
    store can be sent to worker processes without copying its tokens.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        header = read_header(self.path)
        self.attrs: dict[str, Any] = header.attrs
        self.variant: str = header.attrs["variant"]
        self.vocab_size: int = header.attrs["vocab_size"]
        self.bos_id: int = header.attrs["bos_id"]
        self.eos_id: int = header.attrs["eos_id"]
        self.n_tokens: int = header.attrs["n_tokens"]
        self.n_docs: int = header.attrs["n_docs"]
        self.doc_offsets: np.ndarray = header.doc_offsets
        self.story_spans: np.ndarray = header.story_spans
        self.doc_bytes: np.ndarray = header.doc_bytes
        self._tokens: np.ndarray | None = _map_tokens(self.path, header)
        self.token_range_chunk: int = header.attrs.get("token_range_chunk", TOKEN_RANGE_CHUNK)
        if header.token_ranges is None:  # a version-1 store: read the ids once to check them
            self.token_ranges = token_ranges_of(self._tokens, self.token_range_chunk)
            check_token_ranges(self.token_ranges, self.token_range_chunk, self.vocab_size,
                               self.path)
        else:
            self.token_ranges = header.token_ranges
        # Window views by length: building one costs about as much as a whole gather.
        self._window_views: dict[int, np.ndarray] = {}

    # -- lifecycle

    @property
    def tokens(self) -> np.ndarray:
        """The token stream: a read-only np.memmap of the contiguous dataset."""
        if self._tokens is None:
            raise TokenStoreError(f"{self.path}: token store is closed")
        return self._tokens

    def close(self) -> None:
        """Drop the memory map; the store cannot be read afterwards."""
        self._tokens = None
        self._window_views.clear()

    def __enter__(self) -> TokenStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {"path": str(self.path)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(Path(state["path"]))  # type: ignore[misc]

    def __repr__(self) -> str:
        return (
            f"TokenStore({str(self.path)!r}, variant={self.variant!r}, "
            f"n_docs={self.n_docs}, n_tokens={self.n_tokens})"
        )

    def _check_window_ids(self, windows: np.ndarray, what: str) -> None:
        """A cheap guard on every batch handed out: ids must fit the vocabulary."""
        if windows.size and int(windows.max()) >= self.vocab_size:
            raise TokenStoreError(
                f"{self.path}: {what} holds token id {int(windows.max())} >= vocab_size "
                f"{self.vocab_size}: the file was altered after it was written; export it again"
            )

    # -- windows

    def windows(self, starts: np.ndarray, length: int, what: str) -> np.ndarray:
        """(len(starts), length) int64 windows beginning at ``starts``, in one gather.

        ``what`` names the batch in the error raised when an id does not fit the vocabulary.
        """
        view = self._window_views.get(length)
        if view is None:
            view = self._window_views[length] = sliding_window_view(self.tokens, length)
        windows = view[starts].astype(np.int64)
        self._check_window_ids(windows, what)
        return windows

    # -- evaluation windows

    def sequential_windows(
        self, seq_len: int, *, batch_size: int, limit_tokens: int | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Non-overlapping windows over the first `limit_tokens` tokens, in order.

        Yields (windows, story_mask): windows (b, seq_len + 1) int64 with b <= batch_size,
        story_mask (b, seq_len) bool, True where the target (window position t + 1) is
        story text. Window k starts at k * seq_len, so consecutive windows share one
        token and the targets tile positions 1 .. covered - 1 exactly once (position 0 is
        never a target). The last window is padded with -1 after the covered range;
        use targets = windows[:, 1:] with ignore_index=-1 and inputs =
        windows[:, :-1].clip(min=0) (padded inputs only feed padded targets).
        """
        params.check_int("", "seq_len", seq_len, 1)
        params.check_int("", "batch_size", batch_size, 1)
        covered = self.n_tokens
        if limit_tokens is not None:
            params.check_int("", "limit_tokens", limit_tokens, 2)
            covered = min(limit_tokens, self.n_tokens)
        self.require_tokens(2, seq_len)
        n_windows = -(-(covered - 1) // seq_len)
        return self._window_batches(seq_len, batch_size, covered, n_windows)

    def _window_batches(
        self, seq_len: int, batch_size: int, covered: int, n_windows: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for first in range(0, n_windows, batch_size):
            rows = min(batch_size, n_windows - first)
            yield self._window_batch(first, rows, seq_len, covered)

    def _window_batch(
        self, first: int, rows: int, seq_len: int, covered: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Windows first .. first + rows - 1 and their target story mask."""
        begin = first * seq_len
        end = min(begin + rows * seq_len + 1, covered)
        # A sentinel past the end of the slice gives the padding value in one gather.
        flat = np.append(self.tokens[begin:end].astype(np.int64), -1)
        mask_flat = np.append(self._story_mask_range(begin, end), False)
        positions = begin + np.arange(rows)[:, None] * seq_len + np.arange(seq_len + 1)
        local = np.where(positions < end, positions - begin, end - begin)  # (rows, seq_len + 1)
        windows = flat[local]
        self._check_window_ids(windows, f"evaluation windows from token {begin}")
        return windows, mask_flat[local[:, 1:]]

    # -- documents

    def story_mask(self) -> np.ndarray:
        """Bool (n_tokens,): True on the story-text tokens of every document."""
        return self._story_mask_range(0, self.n_tokens)

    def document(self, i: int) -> np.ndarray:
        """The tokens of document `i` (a copy; negative indices count from the end)."""
        i = self._doc_index(i)
        return np.array(self.tokens[self.doc_offsets[i] : self.doc_offsets[i + 1]])

    def story_tokens(self, i: int) -> np.ndarray:
        """The story-text tokens of document `i` (a copy)."""
        start, end = self.story_spans[self._doc_index(i)]
        return np.array(self.tokens[start:end])

    def _doc_index(self, i: int) -> int:
        if not is_int(i):
            raise TypeError(f"document index must be an integer, got {type(i).__name__}")
        if not -self.n_docs <= i < self.n_docs:
            raise IndexError(f"{self.path}: document {i} out of range ({self.n_docs} documents)")
        return int(i) % self.n_docs

    def _story_mask_range(self, begin: int, end: int) -> np.ndarray:
        """Bool (end - begin,): True on story-text positions in [begin, end)."""
        starts, ends = self.story_spans[:, 0], self.story_spans[:, 1]
        # Spans are ordered and disjoint (each lies inside its document), so both
        # columns are sorted and the spans touching [begin, end) are one slice.
        lo = np.searchsorted(ends, begin, side="right")
        hi = np.searchsorted(starts, end, side="left")
        size = end - begin
        opens = np.clip(starts[lo:hi], begin, end) - begin
        closes = np.clip(ends[lo:hi], begin, end) - begin
        depth = np.bincount(opens, minlength=size + 1) - np.bincount(closes, minlength=size + 1)
        return np.cumsum(depth[:size]) > 0

    def require_tokens(self, needed: int, seq_len: int) -> None:
        """Refuse windows of ``seq_len`` from a store of fewer than ``needed`` tokens."""
        if self.n_tokens < needed:
            raise TokenStoreError(
                f"{self.path}: {self.n_tokens} tokens is too few for seq_len={seq_len} "
                f"(needs at least {needed})"
            )


def _map_tokens(path: Path, header: Header) -> np.ndarray:
    """Memory-map the token dataset read-only (an empty store gets an empty array)."""
    n_tokens = header.attrs["n_tokens"]
    if n_tokens == 0 or header.token_offset is None:
        empty = np.empty(0, dtype=header.token_dtype)
        empty.setflags(write=False)
        return empty
    return np.memmap(
        path, dtype=header.token_dtype, mode="r", offset=header.token_offset, shape=(n_tokens,)
    )
