"""Token orders: the order a model reads each window of tokens in, and all that follows
from it (training and evaluation windows, prompting and read-back, whether the model
writes stories, what an export says), each order's behaviour in one class.

``forward`` reads a window as stored; ``backward`` reverses it (Arrows of Time);
``permuted`` applies one fixed, seeded permutation of the positions inside every window
(Arrows of Time's permutation runs). The permutation keeps position 0 first and
shuffles positions 1 .. width - 1: position 0 is never a target, so with windows that
share one token (``TokenStore.sequential_windows``) every token but the stream's first
is still scored exactly once, in the permuted order, as in training.

Training windows are full (``seq_len + 1`` tokens) and use the permutation itself. A
shorter window (the padded last window of an evaluation, or a short document) uses the
permutation restricted to its positions: the same positions in the same relative order,
so a window of n tokens is read in the order ``[p for p in order if p < n]``.

A backward model evaluated on a store reads the forward windows reversed, so the same
tokens are predicted, right to left. A stream's last token is then only predictable
from the token that follows it; at the end of the evaluated range that is the next
document's first token (or the store's first token after the last document, the token
documents start with).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from backstory.variants import TOKEN_ORDERS

if TYPE_CHECKING:
    from backstory.data.token_store import TokenStore

Batches = Iterator[tuple[np.ndarray, np.ndarray]]  # windows (b, width), target masks (b, width - 1)

# What a train config written before `permutation_seed` existed, or leaving it out at
# this value, means.
IMPLIED_PERMUTATION_SEED = 0


def check_order(token_order: str, permutation_seed: int | None) -> None:
    """ValueError for an unknown order, or a permuted order without its seed."""
    get(token_order)
    if token_order == "permuted" and (isinstance(permutation_seed, bool)
                                      or not isinstance(permutation_seed, int)
                                      or permutation_seed < 0):
        raise ValueError("token_order 'permuted' needs permutation_seed, an integer >= 0; got "
                         f"{permutation_seed!r}")


def window_order(width: int, seed: int) -> np.ndarray:
    """The permuted order of a full window of ``width`` positions: 0 first, then a
    shuffle of 1 .. width - 1 that depends only on ``width`` and ``seed``."""
    if width < 1:
        raise ValueError(f"a window holds at least one position, got width={width}")
    rng = np.random.Generator(np.random.PCG64(seed))
    return np.concatenate([[0], 1 + rng.permutation(width - 1)]).astype(np.int64)


def row_orders(n_valid: np.ndarray, width: int, seed: int) -> np.ndarray:
    """Index (b, width) reading each row's first ``n_valid`` positions in the permuted
    order (restricted to them), followed by the padding positions in place."""
    full = window_order(width, seed)
    index = np.empty((len(n_valid), width), dtype=np.int64)
    for r, n in enumerate(np.asarray(n_valid).tolist()):
        index[r, :n] = full if n == width else full[full < n]
        index[r, n:] = np.arange(n, width)
    return index


def order_windows(windows: np.ndarray, token_order: str, permutation_seed: int | None = None
                  ) -> np.ndarray:
    """Full windows (b, width) in ``token_order`` (training batches)."""
    check_order(token_order, permutation_seed)
    return ORDERS[token_order].windows(windows, permutation_seed)


def permute_scored(windows: np.ndarray, target_mask: np.ndarray, seed: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Evaluation windows (b, width) padded with -1, and their target mask (b, width - 1),
    in the permuted order: the same tokens, each target keeping its own mask value."""
    width = windows.shape[1]
    index = row_orders((windows >= 0).sum(axis=1), width, seed)
    position_mask = np.concatenate([np.zeros((len(windows), 1), dtype=bool), target_mask], 1)
    permuted = np.take_along_axis(windows, index, 1)
    mask = np.take_along_axis(position_mask, index, 1)[:, 1:] & (permuted[:, 1:] >= 0)
    return permuted, mask


def permutation_seed_of(meta: Mapping[str, Any]) -> int | None:
    """The permutation seed a model was trained with (its checkpoint meta)."""
    config = meta.get("train_config")
    if not config:
        return None
    # A seed at its implied value is left out of saved train configs
    # (backstory.lm.training.config.RUNS_BEFORE_SETTINGS).
    return config.get("permutation_seed", IMPLIED_PERMUTATION_SEED)


# ------------------------------------------------------------------ backward evaluation


def boundary_token(store: TokenStore, k: int) -> int:
    """The token after the first k documents: the next one's first, or the store's first."""
    position = int(store.doc_offsets[k]) if k < store.n_docs else 0
    return int(store.tokens[position])


def _reverse_rows(windows: np.ndarray, position_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reverse each row's valid (non -1) prefix of windows (b, L+1) and its position mask."""
    width = windows.shape[1]
    n_valid = (windows >= 0).sum(axis=1, keepdims=True)  # (b, 1)
    j = np.arange(width)[None, :]  # (1, L+1)
    index = np.where(j < n_valid, n_valid - 1 - j, j)  # (b, L+1): mirror the valid part
    return np.take_along_axis(windows, index, 1), np.take_along_axis(position_mask, index, 1)


def _with_boundary(
    windows: np.ndarray, position_mask: np.ndarray, boundary: int
) -> tuple[np.ndarray, np.ndarray]:
    """Append `boundary` after the last valid token (in the padding, or in one more row)."""
    last = windows[-1]
    n_valid = int((last >= 0).sum())
    if n_valid < windows.shape[1]:
        windows, position_mask = windows.copy(), position_mask.copy()
        windows[-1, n_valid] = boundary
        return windows, position_mask
    row = np.full((1, windows.shape[1]), -1, dtype=windows.dtype)
    row[0, :2] = (last[-1], boundary)
    row_mask = np.zeros((1, windows.shape[1]), dtype=bool)
    row_mask[0, 0] = position_mask[-1, -1]
    return np.vstack([windows, row]), np.vstack([position_mask, row_mask])


def _reversed_targets(windows: np.ndarray, position_mask: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    reversed_windows, reversed_mask = _reverse_rows(windows, position_mask)
    return reversed_windows, reversed_mask[:, 1:] & (reversed_windows[:, 1:] >= 0)


def _backward_batches(batches: Batches, first_mask: bool, boundary: int) -> Batches:
    """Reverse forward windows in token space; targets become positions 0 .. covered - 1."""
    carry = first_mask  # story mask of each window's position 0 = previous window's last
    pending: tuple[np.ndarray, np.ndarray] | None = None
    for windows, target_mask in batches:
        firsts = np.concatenate([[carry], target_mask[:-1, -1]])  # (b,)
        carry = bool(target_mask[-1, -1])
        position_mask = np.concatenate([firsts[:, None], target_mask], axis=1)  # (b, L+1)
        if pending is not None:
            yield _reversed_targets(*pending)
        pending = (windows, position_mask)
    if pending is not None:
        yield _reversed_targets(*_with_boundary(*pending, boundary))


# ------------------------------------------------------------------------- the orders


class TokenOrder:
    """The forward order, and the base of the others: everything is read as stored."""

    name = "forward"
    reverses = False  # text's tokens are read last first, so a prompt is a story's ending
    no_stories: str | None = None  # why its model writes no stories; None: it writes them
    mode = "completion"  # how its model is prompted, in words (instruction and words aside)
    how_to_prompt: str | None = None  # what an export says; None: its document layout says it

    @property
    def writes(self) -> bool:
        return self.no_stories is None

    def windows(self, windows: np.ndarray, seed: int | None) -> np.ndarray:
        """Full training windows (b, width) as the model reads them."""
        return windows

    def scored(self, batches: Batches, store: TokenStore, k: int, seed: int | None) -> Batches:
        """A store's sequential windows over its first k documents, and their target
        masks, as the model reads them."""
        return batches

    def document(self, store: TokenStore, i: int, tokens: np.ndarray, story: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Document i's tokens and story mask, as the model reads the document alone."""
        if story.size and story[0]:
            raise ValueError(
                f"{store.path}: document {i}'s story starts at its first token, which no "
                "context predicts; per-document forward bits need a token before the story"
            )
        return tokens, story

    def rows(self, windows: np.ndarray, story: np.ndarray, scored: np.ndarray,
             seed: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Windows of documents (b, width) padded with -1 and their two target masks
        (b, width - 1), as the model reads them."""
        return windows, story, scored

    def prompt(self, bos_id: int, ids: list[int]) -> list[int]:
        """The ids generation starts from, for a prompt's ids in text order (reversed: the
        ending, last token first, where the model's documents end with the BOS)."""
        return ids[::-1] if self.reverses else [bos_id] + ids

    def read_back(self, ids: list[int]) -> list[int]:
        """Prompt and generated ids in text order."""
        return ids[::-1] if self.reverses else ids


class Backward(TokenOrder):
    """Every window reversed in token space: the model reads text last token first."""

    name = "backward"
    reverses = True
    mode = "ending, token order backward"
    how_to_prompt = ("Tokens in backward order: the model reads each document's token ids "
                     "last first, so feed the ending's ids reversed and reverse the generated "
                     "ids. run.c and transformers' generate encode text forward and cannot "
                     "prompt it as it was trained.")

    def windows(self, windows: np.ndarray, seed: int | None) -> np.ndarray:
        return windows[:, ::-1]

    def scored(self, batches: Batches, store: TokenStore, k: int, seed: int | None) -> Batches:
        start, end = store.story_spans[0]
        return _backward_batches(batches, bool(start == 0 and end > 0), boundary_token(store, k))

    def document(self, store: TokenStore, i: int, tokens: np.ndarray, story: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
        # The token after the document (the next one's first) gives the last token context.
        boundary = boundary_token(store, i + 1)
        return np.append(tokens, boundary)[::-1].copy(), np.append(story, False)[::-1].copy()


class Permuted(TokenOrder):
    """Every window read in one fixed seeded permutation of its positions."""

    name = "permuted"
    no_stories = ("reads each window in a fixed permutation of its token positions, so there "
                  "is no reading order to write a story in; it is measured by its loss only")
    mode = "none (token positions permuted)"
    how_to_prompt = ("Tokens in a permuted order: the model reads every window of "
                     "max_seq_len + 1 tokens in one fixed seeded permutation of its positions "
                     "(train_config.permutation_seed, backstory.lm.orders); it scores text, it "
                     "does not write it.")

    def windows(self, windows: np.ndarray, seed: int | None) -> np.ndarray:
        return windows[:, window_order(windows.shape[1], seed)]

    def scored(self, batches: Batches, store: TokenStore, k: int, seed: int | None) -> Batches:
        return (permute_scored(w, m, seed) for w, m in batches)

    def rows(self, windows: np.ndarray, story: np.ndarray, scored: np.ndarray,
             seed: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        permuted, story = permute_scored(windows, story, seed)  # one permutation, both masks
        return permuted, story, permute_scored(windows, scored, seed)[1]


ORDERS: dict[str, TokenOrder] = {o.name: o for o in (TokenOrder(), Backward(), Permuted())}
if tuple(ORDERS) != TOKEN_ORDERS:
    raise ValueError(f"backstory.variants.TOKEN_ORDERS {TOKEN_ORDERS} and the orders defined "
                     f"here {tuple(ORDERS)} differ")


def get(token_order: str) -> TokenOrder:
    """The order ``token_order``; ValueError naming the known ones otherwise."""
    if token_order not in ORDERS:
        raise ValueError(f"token_order must be one of {TOKEN_ORDERS}, got {token_order!r}")
    return ORDERS[token_order]
