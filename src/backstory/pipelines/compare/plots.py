"""Compare plots (matplotlib figures, saved by MatplotlibDataset entries in the catalog)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display in pipelines or CI

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

VARIANTS = ("forward", "reversed", "instruct", "backward")
COLORS = {"forward": "tab:blue", "reversed": "tab:orange", "instruct": "tab:green",
          "backward": "tab:purple"}


def _check_log(log: pd.DataFrame, columns: tuple[str, ...], name: str) -> None:
    missing = [c for c in columns if c not in log.columns]
    if missing:
        raise ValueError(f"{name} lacks columns {missing}; it has {list(log.columns)}")


def plot_loss_curves(
    forward_train: pd.DataFrame, forward_val: pd.DataFrame,
    reversed_train: pd.DataFrame, reversed_val: pd.DataFrame,
    instruct_train: pd.DataFrame, instruct_val: pd.DataFrame,
    backward_train: pd.DataFrame, backward_val: pd.DataFrame,
    forward_metrics: dict, reversed_metrics: dict, instruct_metrics: dict,
    backward_metrics: dict,
) -> Figure:
    """Training (thin) and validation (thick, dots) loss of every variant over steps.

    The metrics are inputs so that Kedro draws this after every variant is evaluated;
    the final validation loss is marked on the right.
    """
    logs = {"forward": (forward_train, forward_val, forward_metrics),
            "reversed": (reversed_train, reversed_val, reversed_metrics),
            "instruct": (instruct_train, instruct_val, instruct_metrics),
            "backward": (backward_train, backward_val, backward_metrics)}
    fig, ax = plt.subplots(figsize=(8, 5))
    for variant, (train, val, metrics) in logs.items():
        _check_log(train, ("step", "loss"), f"{variant}.train_log")
        _check_log(val, ("step", "val_loss"), f"{variant}.val_log")
        color = COLORS[variant]
        ax.plot(train["step"], train["loss"], color=color, alpha=0.5, lw=1,
                label=f"{variant} train")
        ax.plot(val["step"], val["val_loss"], color=color, lw=2, marker="o", ms=3,
                label=f"{variant} validation")
        ax.axhline(metrics["val_loss"], color=color, ls=":", lw=1)
    ax.set(xlabel="step", ylabel="loss (nats per token)",
           title="Training and validation loss (dotted: final evaluation)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_bpb_scatter(document_bits: pd.DataFrame) -> Figure:
    """Per-document bits per byte, reversed model against forward model."""
    fw = document_bits["forward_bits"] / document_bits["n_bytes"]
    bw = document_bits["reversed_bits"] / document_bits["n_bytes"]
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.scatter(fw, bw, s=8, alpha=0.6)
    low, high = min(fw.min(), bw.min()), max(fw.max(), bw.max())
    ax.plot([low, high], [low, high], color="grey", lw=1, ls="--", label="equal")
    ax.set(xlabel="forward model (bits per byte)", ylabel="reversed model (bits per byte)",
           title=f"Validation stories (n={len(document_bits)})")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_delta(arrow: dict) -> Figure:
    """Each asymmetry delta (percent) with its bootstrap interval."""
    entries = [arrow["word_order"], *arrow["token_order"]]
    labels = [f"{e['backward']} vs {e['forward']}\n({e['unit']})" for e in entries]
    deltas = [100 * e["delta"] for e in entries]
    errors = [[100 * (e["delta"] - e["low"]) for e in entries],
              [100 * (e["high"] - e["delta"]) for e in entries]]
    fig, ax = plt.subplots(figsize=(6, 1.5 + 0.8 * len(entries)))
    ax.errorbar(deltas, range(len(entries)), xerr=errors, fmt="o", capsize=4)
    ax.axvline(0, color="grey", lw=1, ls="--")
    ax.set_yticks(range(len(entries)), labels)
    ax.set(xlabel="delta (%): positive = backward is harder",
           title=f"Arrow-of-time asymmetry, {100 * entries[0]['confidence']:.0f}% interval")
    ax.invert_yaxis()
    fig.tight_layout()
    return fig
