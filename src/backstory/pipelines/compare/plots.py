"""Compare plots (matplotlib figures, saved by MatplotlibDataset entries in the catalog)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display in pipelines or CI

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from backstory import variants  # noqa: E402

LINESTYLES = ("-", "--", ":", "-.")


def _check_log(log: pd.DataFrame, columns: tuple[str, ...], name: str) -> None:
    missing = [c for c in columns if c not in log.columns]
    if missing:
        raise ValueError(f"{name} lacks columns {missing}; it has {list(log.columns)}")


def plot_loss_curves(*logs: pd.DataFrame | dict, runs: Sequence[Mapping[str, Any]]) -> Figure:
    """Training (thin) and validation (thick, dots) loss of every run over steps.

    ``logs`` are (train_log, val_log, metrics) for each run in ``runs`` order. The metrics
    are inputs so that Kedro draws this after every run is evaluated; the final
    validation loss is a dotted line. Colour is the variant; line style the seed.
    """
    if len(logs) != 3 * len(runs):
        raise ValueError(f"{len(logs)} logs for {len(runs)} runs (3 per run)")
    seeds = sorted({run["seed"] for run in runs})
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, run in enumerate(runs):
        train, val, metrics = logs[3 * i: 3 * i + 3]
        _check_log(train, ("step", "loss"), f"{run['run']}.train_log")
        _check_log(val, ("step", "val_loss"), f"{run['run']}.val_log")
        color = variants.get(run["variant"]).color
        style = LINESTYLES[seeds.index(run["seed"]) % len(LINESTYLES)]
        ax.plot(train["step"], train["loss"], color=color, alpha=0.4, lw=1, ls=style)
        ax.plot(val["step"], val["val_loss"], color=color, lw=2, marker="o", ms=3, ls=style,
                label=run["run"])
        ax.axhline(metrics["val_loss"], color=color, ls=":", lw=1)
    ax.set(xlabel="step", ylabel="loss (nats per token)",
           title="Training (thin) and validation loss (dotted: final evaluation)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_bpb_scatter(document_bits: pd.DataFrame) -> Figure:
    """Per-document bits per byte of each word-order pair, in the first group."""
    first = document_bits.iloc[0]
    group = document_bits[(document_bits["size"] == first["size"])
                          & (document_bits["seed"] == first["seed"])]
    present = set(group["variant"])
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    for variant in variants.NAMES:
        spec = variants.get(variant)
        if variant not in present or spec.delta != "word_order" \
                or spec.compares_with not in present:
            continue
        ours = group[group["variant"] == variant].sort_values("doc")
        theirs = group[group["variant"] == spec.compares_with].sort_values("doc")
        x = theirs["bits"].to_numpy() / theirs["n_bytes"].to_numpy()
        y = ours["bits"].to_numpy() / ours["n_bytes"].to_numpy()
        ax.scatter(x, y, s=8, alpha=0.6, color=spec.color,
                   label=f"{variant} vs {spec.compares_with}")
    low, high = ax.get_xlim()
    ax.plot([low, high], [low, high], color="grey", lw=1, ls="--", label="equal")
    ax.set(xlabel="partner model (bits per byte)", ylabel="model (bits per byte)",
           title=f"Validation stories, {first['size']} seed {first['seed']} "
                 f"(n={group['doc'].nunique()})")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_delta(arrow: dict) -> Figure:
    """Every group's asymmetry deltas (percent) with their bootstrap intervals."""
    entries = [(group, d) for group in arrow["groups"] for d in group["deltas"]]
    fig, ax = plt.subplots(figsize=(6.5, 1.5 + 0.6 * max(1, len(entries))))
    if entries:
        labels = [f"{d['backward']} vs {d['forward']}, {g['size']} s{g['seed']}\n({d['unit']})"
                  for g, d in entries]
        deltas = [100 * d["delta"] for _, d in entries]
        errors = [[100 * (d["delta"] - d["low"]) for _, d in entries],
                  [100 * (d["high"] - d["delta"]) for _, d in entries]]
        colors = [variants.get(d["backward"]).color for _, d in entries]
        for y, (x, lo, hi, c) in enumerate(zip(deltas, *errors, colors, strict=True)):
            ax.errorbar([x], [y], xerr=[[lo], [hi]], fmt="o", capsize=4, color=c)
        ax.set_yticks(range(len(entries)), labels)
        ax.invert_yaxis()
    ax.axvline(0, color="grey", lw=1, ls="--")
    ax.set(xlabel="delta (%): positive = backward is harder",
           title="Arrow-of-time asymmetry, bootstrap interval over documents")
    fig.tight_layout()
    return fig
