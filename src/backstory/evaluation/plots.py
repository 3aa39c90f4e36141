"""Compare plots: matplotlib figures of the runs (the compare pipeline saves them through
MatplotlibDataset entries in the catalog)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from backstory import variants

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
else:  # Kedro resolves a node's type hints on every run; matplotlib is imported on first draw
    Axes = Figure = Any

LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P")


def _pyplot():
    """matplotlib's pyplot, imported on first use: every Kedro process builds the compare
    pipeline, and only the ones that draw should pay matplotlib's 0.4 s import."""
    import matplotlib

    matplotlib.use("Agg")  # no display in pipelines or CI
    import matplotlib.pyplot as plt

    return plt


def _check_log(log: pd.DataFrame, columns: tuple[str, ...], name: str) -> None:
    missing = [c for c in columns if c not in log.columns]
    if missing:
        raise ValueError(f"{name} lacks columns {missing}; it has {list(log.columns)}")


def plot_loss_curves(*logs: pd.DataFrame | dict, runs: Sequence[Mapping[str, Any]]) -> Figure:
    """Training (thin) and validation (thick, dots) loss of every run over steps.

    ``logs`` are (train loss curve, validation loss curve, metrics) for each run in
    ``runs`` order: DVCLive's curves (step, loss). The metrics are inputs so that Kedro
    draws this after every run is evaluated. Colour is the variant; line style the seed.
    """
    if len(logs) != 3 * len(runs):
        raise ValueError(f"{len(logs)} logs for {len(runs)} runs (3 per run)")
    seeds = sorted({run["seed"] for run in runs})
    fig, ax = _pyplot().subplots(figsize=(8, 5))
    for i, run in enumerate(runs):
        train, val, _ = logs[3 * i: 3 * i + 3]
        _check_log(train, ("step", "loss"), f"{run['run']}.train_loss_curve")
        _check_log(val, ("step", "loss"), f"{run['run']}.val_loss_curve")
        color = variants.get(run["variant"]).color
        style = LINESTYLES[seeds.index(run["seed"]) % len(LINESTYLES)]
        ax.plot(train["step"], train["loss"], color=color, alpha=0.4, lw=1, ls=style)
        ax.plot(val["step"], val["loss"], color=color, lw=2, marker="o", ms=3, ls=style,
                label=run["run"])
    ax.set(xlabel="step", ylabel="loss (nats per token)",
           title="Training (thin) and validation loss (thick)")
    ax.legend(fontsize=6 if len(runs) > 8 else 7, ncol=1 + len(runs) // 16)
    fig.tight_layout()
    return fig


def plot_bpb_scatter(document_bits: pd.DataFrame) -> Figure:
    """Per-story bits per byte of each word-order pair, at the first size and lowest seed."""
    first = document_bits.iloc[0]
    at_size = document_bits[document_bits["size"] == first["size"]]
    seed = at_size["seed"].min()
    group = at_size[at_size["seed"] == seed]
    present = set(group["variant"])
    fig, ax = _pyplot().subplots(figsize=(5.5, 5.5))
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
           title=f"Validation stories, {first['size']} seed {seed} "
                 f"(n={group['doc'].nunique()})")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_delta(arrow: dict) -> Figure:
    """Every size's deltas (percent) with their intervals over seeds and stories; each
    seed's own delta as a small dot."""
    entries = [(size, d) for size in arrow["sizes"] for d in size["deltas"]]
    fig, ax = _pyplot().subplots(figsize=(7, 1.5 + 0.6 * max(1, len(entries))))
    if entries:
        labels = [f"{d['variant']} vs {d['partner']}, {s['size']}\n({d['unit']}, "
                  f"{d['n_seeds']} seed{'s' if d['n_seeds'] > 1 else ''})" for s, d in entries]
        for y, (_, d) in enumerate(entries):
            color = variants.get(d["variant"]).color
            ax.errorbar([100 * d["delta"]], [y], fmt="o", capsize=4, color=color,
                        xerr=[[100 * (d["delta"] - d["low"])], [100 * (d["high"] - d["delta"])]])
            ax.scatter([100 * p["delta"] for p in d["per_seed"]], [y + 0.2] * len(d["per_seed"]),
                       s=10, color=color, alpha=0.6)
        ax.set_yticks(range(len(entries)), labels)
        ax.invert_yaxis()
    ax.axvline(0, color="grey", lw=1, ls="--")
    ax.set(xlabel="delta (%): positive = backward is harder",
           title="Arrow-of-time asymmetry (dots: single seeds)")
    fig.tight_layout()
    return fig


def _sweep_axis(ax: Axes, rows: Sequence[Mapping[str, Any]], x: str, line: str, *,
                log: bool) -> int:
    """Plot delta against ``x``, one line per (pair, ``line``) value; the points drawn."""
    groups: dict[tuple[str, Any], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["pair"], row[line]), []).append(row)
    lines = sorted({key[1] for key in groups}, key=str)
    drawn = 0
    for (pair, value), points in groups.items():
        points = sorted(points, key=lambda r: r[x])
        color = variants.get(pair.split(" vs ")[0]).color
        marker = MARKERS[lines.index(value) % len(MARKERS)]
        xs = [p[x] for p in points]
        ys = [100 * p["delta"] for p in points]
        errors = [[100 * (p["delta"] - p["low"]) for p in points],
                  [100 * (p["high"] - p["delta"]) for p in points]]
        ax.errorbar(xs, ys, yerr=errors, fmt=f"{marker}-", capsize=4, color=color,
                    label=f"{pair}, {line.replace('seq_len', 'context')} {value}")
        drawn += len(points)
    ax.axhline(0, color="grey", lw=1, ls="--")
    if log and rows:
        ax.set_xscale("log")
    ax.legend(fontsize=7)
    return drawn


def plot_sweep(arrow: dict) -> Figure:
    """The Arrows of Time figure: each pair's delta with its interval against parameter
    count (sizes of one context length joined) and against context length (sizes of one
    preset joined)."""
    sweeps = arrow["sweeps"]
    fig, (by_params, by_context) = _pyplot().subplots(1, 2, figsize=(11, 4.5))
    _sweep_axis(by_params, sweeps["by_params"], "n_params", "seq_len", log=True)
    by_params.set(xlabel="parameters", ylabel="delta (%): positive = backward is harder",
                  title="Delta against model size")
    _sweep_axis(by_context, sweeps["by_context"], "seq_len", "preset", log=True)
    by_context.set(xlabel="context length (tokens)", title="Delta against context length")
    fig.tight_layout()
    return fig


def plot_training_curves(training: dict, floor: dict) -> Figure:
    """Left: each pair's delta (with interval) at every evaluation step, against the
    tokens seen in training, one line per size. Right: each variant's bits per byte on
    the curve stories, with the floor of those stories as a line (when there is one)."""
    fig, (ax, levels) = _pyplot().subplots(1, 2, figsize=(14, 5))
    _plot_levels(levels, training, floor)
    for i, size in enumerate(training["sizes"]):
        series: dict[str, list[tuple[float, Mapping[str, Any]]]] = {}
        for point in size["points"]:
            for d in point["deltas"]:
                series.setdefault(f"{d['variant']} vs {d['partner']}", []).append(
                    (point["tokens"] or point["step"], d))
        for pair, points in series.items():
            color = variants.get(pair.split(" vs ")[0]).color
            xs = [x for x, _ in points]
            ax.plot(xs, [100 * d["delta"] for _, d in points], color=color,
                    marker=MARKERS[i % len(MARKERS)], ls=LINESTYLES[i % len(LINESTYLES)],
                    label=f"{pair}, {size['size']}")
            ax.fill_between(xs, [100 * d["low"] for _, d in points],
                            [100 * d["high"] for _, d in points], color=color, alpha=0.15)
    ax.axhline(0, color="grey", lw=1, ls="--")
    ax.set(xlabel="training tokens", ylabel="delta (%)",
           title=f"Delta during training ({training['n_docs']} validation stories)")
    if training["sizes"]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _plot_levels(ax: Axes, training: dict, floor: dict) -> None:
    for i, size in enumerate(training["sizes"]):
        for variant in variants.NAMES:
            points = [(p["tokens"] or p["step"], p["bpb"][variant]) for p in size["points"]
                      if variant in p["bpb"]]
            if points:
                ax.plot(*zip(*points, strict=True), color=variants.get(variant).color,
                        marker=MARKERS[i % len(MARKERS)], ls=LINESTYLES[i % len(LINESTYLES)],
                        label=f"{variant}, {size['size']}")
    curve = floor.get("curve") if floor["available"] else None
    if curve:
        ax.axhline(curve["bpb"], color="black", lw=1.5,
                   label=f"floor {curve['bpb']:.4f} (storyworld entropy, upper bound)")
    ax.set(xlabel="training tokens", ylabel="bits per byte", yscale="log",
           title="Bits per byte during training" + ("" if curve else " (no floor)"))
    if training["sizes"] or curve:
        ax.legend(fontsize=7)
