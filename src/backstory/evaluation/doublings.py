"""The answer against training tokens: one row per size and length of a doubled grid.

A warmup-stable-decay grid is trained in passes of doubling length, and the compare report
of each pass is kept as ``pass<k>/report.json`` (``backstory grid``). Read
side by side, they say whether a delta shrinks, holds or grows as the models train, how
far each variant stays above the floor, and how much the last doubling still moved the
runs' validation loss (the convergence test).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from backstory import variants
from backstory.core.errors import UserError

PASS_FOLDER = re.compile(r"pass(\d+)")
NEEDED = ("models", "arrow_of_time", "convergence")  # what a compare report holds


def pass_reports(folder: Path) -> list[dict[str, Any]]:
    """The reports kept in ``folder/pass<k>/report.json``, in pass order."""
    found = sorted((int(m.group(1)), path) for path in folder.glob("pass*/report.json")
                   if (m := PASS_FOLDER.fullmatch(path.parent.name)))
    if not found:
        raise UserError(f"{folder} holds no pass<k>/report.json (the compare reports that "
                        "backstory grid keeps after each pass)")
    reports = []
    for _, path in found:
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise UserError(f"{path} is no readable compare report: {err}") from err
        missing = [key for key in NEEDED if key not in report]
        if missing:
            raise UserError(f"{path} is no compare report of this version (no {missing})")
        reports.append(report)
    return reports


def length_rows(reports: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per report and size: training tokens per run, seeds, deltas, excess over the floor
    and the convergence verdicts. Raises UserError when a size's runs differ in tokens."""
    rows = []
    for report in reports:
        floors = {s["size"]: s for s in report.get("floor", {}).get("sizes", [])}
        for size in report["arrow_of_time"]["sizes"]:
            name = size["size"]
            runs = [r for r, m in report["models"].items() if m["size"] == name]
            tokens = {report["models"][r]["steps"] * report["models"][r]["tokens_per_step"]
                      for r in runs}
            if len(tokens) != 1:
                raise UserError(f"the {name} runs of one report trained on different numbers "
                                f"of tokens ({sorted(tokens)}); rerun the pass")
            checked = [report["convergence"]["runs"][r] for r in runs
                       if report["convergence"]["runs"].get(r, {}).get("verdict") is not None]
            rows.append({
                "size": name, "tokens": tokens.pop(),
                "seeds": max(len(level["seeds"]) for level in size["levels"].values()),
                "deltas": {f"{d['variant']} vs {d['partner']} ({d['unit']})": d
                           for d in size["deltas"]},
                "excess": {v: level["excess"]
                           for v, level in floors.get(name, {}).get("levels", {}).items()},
                "excess_ratios": {f"{r['variant']} / {r['partner']} excess": r
                                  for r in floors.get(name, {}).get("ratios", [])},
                "converged": sum(c["verdict"] == "converged" for c in checked),
                "checked": len(checked),
                "change": [c["relative_change"] for c in checked],
            })
    return rows


def length_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """``rows`` as a markdown table: deltas with their 95% intervals, excess over the floor
    in bits per byte and its ratio within each pair, and how far the doubling that reached
    the row moved the runs' validation loss."""
    pairs = list(dict.fromkeys(p for row in rows for p in row["deltas"]))
    excess = [v for v in variants.NAMES if any(v in row["excess"] for row in rows)]
    ratios = list(dict.fromkeys(r for row in rows for r in row["excess_ratios"]))
    head = ["size", "tokens per run", "seeds", *pairs, *(f"{v} excess" for v in excess), *ratios,
            "runs converged", "validation loss moved by this doubling"]
    lines = [_row(head), "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["size"], f"{row['tokens'] / 1e6:.1f}M", str(row["seeds"])]
        for pair in pairs:
            d = row["deltas"].get(pair)
            cells.append(f"{100 * d['delta']:+.1f}% [{100 * d['low']:+.1f}, "
                         f"{100 * d['high']:+.1f}]" if d else "")
        cells += [f"{row['excess'][v]:.3f}" if v in row["excess"] else "" for v in excess]
        cells += [_ratio(row["excess_ratios"].get(r)) for r in ratios]
        change = row["change"]
        cells += [f"{row['converged']} of {row['checked']}" if row["checked"] else "not checked",
                  f"{100 * min(change):+.1f}% to {100 * max(change):+.1f}%" if change else ""]
        lines.append(_row(cells))
    return lines


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _ratio(found: Mapping[str, Any] | None) -> str:
    if found is None:
        return ""
    return f"{found['ratio']:.2f} [{found['low']:.2f}, {found['high']:.2f}]"


def seed_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each seed's delta per pair at every length of ``rows``, a table per size: whether a
    seed keeps its place as the runs train (a seed not trained to a length reads "-")."""
    tables = []
    for size in dict.fromkeys(row["size"] for row in rows):
        mine = [row for row in rows if row["size"] == size]
        pairs = list(dict.fromkeys(p for row in mine for p in row["deltas"]))
        lengths = ", ".join(f"{row['tokens'] / 1e6:.1f}M" for row in mine)
        head = [f"{size} seed", *(f"{pair} at {lengths} tokens" for pair in pairs)]
        per_seed = [{pair: {s["seed"]: s["delta"] for s in row["deltas"][pair]["per_seed"]}
                     for pair in row["deltas"]} for row in mine]
        seeds = sorted({seed for found in per_seed for by in found.values() for seed in by})
        lines = [_row(head), "|" + "---|" * len(head)]
        for seed in seeds:
            cells = [str(seed)] + [", ".join(
                f"{100 * found[pair][seed]:+.1f}%" if seed in found.get(pair, {}) else "-"
                for found in per_seed) for pair in pairs]
            lines.append(_row(cells))
        tables.append(lines)
    return [line for i, lines in enumerate(tables) for line in ([""] if i else []) + lines]
