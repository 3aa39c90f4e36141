"""The arrow-of-time asymmetry and intervals over training seeds and documents.

The measure is that of Arrows of Time (Papadopoulos et al., 2024):
``delta = E[x_bw - x_fw] / (0.5 * E[x_bw + x_fw])`` over documents, where x is a
document's loss under the backward and the forward model. Documents are the unit of
resampling, because tokens inside one story are not independent.

With several training seeds, two things make a figure uncertain: which stories were in
the validation sample (the same stories for every seed and run), and which seed trained
the models. ``seed_document_interval`` accounts for both:

- seeds: the statistic is computed per seed (for a delta, on the paired runs of that
  seed), and their spread gives the seed part of the variance, ``var(per seed) / S``;
- documents: a bootstrap over stories (the same resampled stories for every seed, since
  every seed read the same stories) of the statistic pooled over seeds gives the
  document part;
- the interval is ``estimate +- t * sqrt(seed part + document part)`` with
  Welch-Satterthwaite degrees of freedom (``S - 1`` when seeds dominate, many when
  documents do), so three seeds give the wide interval three seeds deserve.

With one seed the seed part cannot be estimated: the interval is the percentile
bootstrap over documents alone, and it says so (``method = DOCUMENTS_ONLY``). It tells
how well the validation sample resolves this pair of models, not how much another
training seed would move the figure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from backstory import params
from backstory.core.errors import UserError

# Resamples per bootstrap chunk: bounds memory at chunk x n_docs indices.
_BOOT_CHUNK = 256
SEEDS_AND_DOCUMENTS = "seeds and documents"
DOCUMENTS_ONLY = "documents only, one seed"


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


def relative_difference(bw: np.ndarray | float, fw: np.ndarray | float) -> np.ndarray | float:
    """(bw - fw) / (0.5 (bw + fw)) of totals (or means: the ratio does not change)."""
    return (bw - fw) / (0.5 * (bw + fw))


def ratio(numerator: np.ndarray | float, denominator: np.ndarray | float
          ) -> np.ndarray | float:
    """numerator / denominator of totals: bits per byte, nats per token."""
    return numerator / denominator


def asymmetry_delta(x_bw: Sequence[float], x_fw: Sequence[float]) -> float:
    """E[x_bw - x_fw] / (0.5 E[x_bw + x_fw]) over paired documents."""
    bw, fw = _paired(x_bw, x_fw)
    if bw.mean() + fw.mean() <= 0:
        raise StatsError("the mean loss is not positive, so the relative delta is undefined")
    return float(relative_difference(bw.mean(), fw.mean()))


def _check_settings(n_boot: int, confidence: float) -> None:
    params.check_int("compare", "n_boot", n_boot, 10)
    params.check_number("compare", "confidence", confidence, 0.0, 1.0, low_open=True,
                        high_open=True)


def _resampled_totals(columns: Sequence[np.ndarray], n_boot: int, seed: int
                      ) -> list[np.ndarray]:
    """Totals of each column over ``n_boot`` resamples of its documents (the same
    resampled documents for every column)."""
    rng = np.random.default_rng(seed)
    n_docs = columns[0].size
    totals: list[list[np.ndarray]] = [[] for _ in columns]
    for start in range(0, n_boot, _BOOT_CHUNK):
        size = min(_BOOT_CHUNK, n_boot - start)
        index = rng.integers(0, n_docs, size=(size, n_docs))  # (size, n_docs)
        for total, column in zip(totals, columns, strict=True):
            total.append(column[index].sum(axis=1))
    return [np.concatenate(t) for t in totals]


def seed_document_interval(
    a: np.ndarray,
    b: np.ndarray,
    statistic: Callable[[np.ndarray, np.ndarray], np.ndarray],
    *,
    n_boot: int,
    confidence: float,
    seed: int,
) -> dict[str, float | int | str | list[float]]:
    """A statistic of two (seeds, documents) arrays and its interval (module docstring).

    ``statistic(A, B)`` takes totals of ``a`` and ``b`` (over seeds and documents) and is
    applied elementwise to arrays of totals, e.g. ``relative_difference`` of backward and
    forward bits, or ``ratio`` of bits and bytes. Row s of both arrays belongs to the
    same seed (for a delta: the variant's and its partner's run of that seed); column i
    to the same story. Same inputs and ``seed`` give the same interval.
    """
    _check_settings(n_boot, confidence)
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape or a.size == 0:
        raise StatsError(f"need two non-empty (seeds, documents) arrays of one shape, got "
                         f"{a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise StatsError("losses must be finite numbers")
    n_seeds, n_docs = a.shape
    estimate = float(statistic(a.sum(), b.sum()))
    per_seed = [float(v) for v in statistic(a.sum(axis=1), b.sum(axis=1))]
    boot = statistic(*_resampled_totals([a.sum(axis=0), b.sum(axis=0)], n_boot, seed))
    entry: dict[str, float | int | str | list[float]] = {
        "estimate": estimate, "n_seeds": n_seeds, "n_docs": n_docs, "n_boot": n_boot,
        "confidence": confidence, "per_seed": per_seed,
    }
    if not np.isfinite(boot).all():
        raise StatsError("the statistic is undefined on a resample (zero totals?)")
    if n_seeds == 1:
        tail = 100 * (1 - confidence) / 2
        low, high = np.percentile(boot, [tail, 100 - tail])
        return entry | {"low": float(low), "high": float(high), "method": DOCUMENTS_ONLY,
                        "se_seeds": None, "se_documents": float(boot.std(ddof=1)),
                        "df": None}
    seed_var = float(np.var(per_seed, ddof=1)) / n_seeds
    doc_var = float(np.var(boot, ddof=1))
    total = seed_var + doc_var
    # Welch-Satterthwaite: the document part is known with (practically) infinite df.
    df = float("inf") if seed_var == 0 else total ** 2 / (seed_var ** 2 / (n_seeds - 1))
    # Imported here: scipy.stats costs over a second, and every `kedro run` process (each
    # DVC stage) imports this module through the settings, most never reaching this line.
    from scipy import stats as scipy_stats

    quantile = float(scipy_stats.t.ppf(0.5 + confidence / 2, df)) if np.isfinite(df) else \
        float(scipy_stats.norm.ppf(0.5 + confidence / 2))
    half = quantile * np.sqrt(total)
    return entry | {"low": estimate - half, "high": estimate + half,
                    "method": SEEDS_AND_DOCUMENTS, "se_seeds": float(np.sqrt(seed_var)),
                    "se_documents": float(np.sqrt(doc_var)), "df": df}


def delta_interval(x_bw: np.ndarray, x_fw: np.ndarray, **settings) -> dict:
    """The asymmetry delta of paired (seeds, documents) losses and its interval."""
    entry = seed_document_interval(x_bw, x_fw, relative_difference, **settings)
    if np.asarray(x_bw).sum() + np.asarray(x_fw).sum() <= 0:
        raise StatsError("the mean loss is not positive, so the relative delta is undefined")
    return entry


def bootstrap_delta(
    x_bw: Sequence[float],
    x_fw: Sequence[float],
    *,
    n_boot: int,
    confidence: float,
    seed: int,
) -> dict[str, float | int]:
    """The delta of one pair of models and its percentile bootstrap interval over
    documents (resampled in pairs). Returns delta, low, high, n_docs, n_boot, confidence.
    """
    _check_settings(n_boot, confidence)
    bw, fw = _paired(x_bw, x_fw)
    entry = delta_interval(bw[None, :], fw[None, :], n_boot=n_boot, confidence=confidence,
                           seed=seed)
    return {"delta": asymmetry_delta(bw, fw), "low": entry["low"], "high": entry["high"],
            "n_docs": int(bw.size), "n_boot": n_boot, "confidence": confidence}


def share_interval(hits: Sequence[bool], *, n_boot: int, confidence: float,
                   seed: int) -> dict[str, float | int]:
    """A share of stories and its percentile bootstrap interval over the stories."""
    _check_settings(n_boot, confidence)
    values = np.asarray(hits, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise StatsError("no stories to count")
    (totals,) = _resampled_totals([values], n_boot, seed)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(totals / values.size, [tail, 100 - tail])
    return {"share": float(values.mean()), "low": float(low), "high": float(high),
            "n": int(values.size)}
