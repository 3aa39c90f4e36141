"""The arrow-of-time asymmetry and its bootstrap interval.

The measure is that of Arrows of Time (Papadopoulos et al., 2024):
``delta = E[x_bw - x_fw] / (0.5 * E[x_bw + x_fw])`` over documents, where x is a
document's loss under the backward and the forward model. Documents are the unit of
the bootstrap, because tokens inside one story are not independent.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from backstory.errors import UserError

# Resamples per bootstrap chunk: bounds memory at chunk x n_docs indices.
_BOOT_CHUNK = 256


class StatsError(UserError, ValueError):
    """Losses that cannot be compared (unpaired, empty, not finite)."""



def _paired(x_bw: Sequence[float], x_fw: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    bw = np.asarray(x_bw, dtype=np.float64)
    fw = np.asarray(x_fw, dtype=np.float64)
    if bw.ndim != 1 or bw.shape != fw.shape:
        raise StatsError(
            f"backward and forward losses must be 1-D and paired per document, got shapes "
            f"{bw.shape} and {fw.shape}"
        )
    if bw.size == 0:
        raise StatsError("no documents to compare")
    if not (np.isfinite(bw).all() and np.isfinite(fw).all()):
        raise StatsError("losses must be finite numbers")
    return bw, fw


def asymmetry_delta(x_bw: Sequence[float], x_fw: Sequence[float]) -> float:
    """E[x_bw - x_fw] / (0.5 E[x_bw + x_fw]) over paired documents."""
    bw, fw = _paired(x_bw, x_fw)
    scale = 0.5 * (bw.mean() + fw.mean())
    if scale <= 0:
        raise StatsError("the mean loss is not positive, so the relative delta is undefined")
    return float((bw.mean() - fw.mean()) / scale)


def bootstrap_delta(
    x_bw: Sequence[float],
    x_fw: Sequence[float],
    *,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float | int]:
    """The delta and its percentile bootstrap interval, resampling documents in pairs.

    Same inputs and seed give the same interval. Returns delta, low, high, n_docs,
    n_boot and confidence.
    """
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 10:
        raise ValueError(f"compare.n_boot must be an integer >= 10, got {n_boot!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"compare.confidence must be in (0, 1), got {confidence!r}")
    bw, fw = _paired(x_bw, x_fw)
    rng = np.random.default_rng(seed)
    deltas = []
    for start in range(0, n_boot, _BOOT_CHUNK):
        size = min(_BOOT_CHUNK, n_boot - start)
        index = rng.integers(0, bw.size, size=(size, bw.size))  # (size, n_docs)
        mean_bw, mean_fw = bw[index].mean(axis=1), fw[index].mean(axis=1)
        deltas.append((mean_bw - mean_fw) / (0.5 * (mean_bw + mean_fw)))
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(np.concatenate(deltas), [tail, 100 - tail])
    return {
        "delta": asymmetry_delta(bw, fw),
        "low": float(low),
        "high": float(high),
        "n_docs": int(bw.size),
        "n_boot": n_boot,
        "confidence": confidence,
    }


