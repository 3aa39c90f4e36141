"""Token orders: the order a model reads each window of tokens in.

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
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from backstory.variants import TOKEN_ORDERS

# What a train config written before `permutation_seed` existed, or leaving it out at
# this value, means.
IMPLIED_PERMUTATION_SEED = 0


def check_order(token_order: str, permutation_seed: int | None) -> None:
    """ValueError for an unknown order, or a permuted order without its seed."""
    if token_order not in TOKEN_ORDERS:
        raise ValueError(f"token_order must be one of {TOKEN_ORDERS}, got {token_order!r}")
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
    if token_order == "backward":
        return windows[:, ::-1]
    if token_order == "permuted":
        return windows[:, window_order(windows.shape[1], permutation_seed)]
    return windows


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
