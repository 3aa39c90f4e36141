"""The H5 token store: one file per variant and split, streamed in, memory-mapped out."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DocBatch:
    """Encoded documents on their way into a token store.

    tokens: the token ids of the documents, concatenated (1-D integer array).
    doc_lengths: int64 (n,), the number of tokens of each document.
    story_spans: int64 (n, 2), [start, end) of each document's story-text tokens,
        relative to the document's first token.
    doc_bytes: int64 (n,), UTF-8 bytes of each document's story text.
    """

    tokens: np.ndarray
    doc_lengths: np.ndarray
    story_spans: np.ndarray
    doc_bytes: np.ndarray
