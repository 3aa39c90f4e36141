"""The cross-run report: levels, deltas, sweeps and training curves from the runs' scores.

Inputs are what each run's evaluation persisted: its per-story scores on the shared
evaluation stories (``evaluate.score_stories``), its metrics (size, steps, tokens), and
the per-story bits its training wrote at every evaluation step (``evaluation.curve``).
Nothing is scored here, so the report scales to any number of runs.

Runs are grouped by **size** (preset and context length); inside a size, the runs of
one variant at different seeds are replicates. Every variant the registry pairs with a
partner (``compares_with``, ``delta``) gets its delta against that partner, paired by
seed, with an interval over seeds and stories (``evaluation.stats``). The size and
context sweeps are these deltas read across sizes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from backstory import params, variants
from backstory.evaluation.stats import (
    DOCUMENTS_ONLY,
    SEEDS_AND_DOCUMENTS,
    delta_interval,
    ratio,
    seed_document_interval,
    share_interval,
)

logger = logging.getLogger(__name__)

LN2 = math.log(2.0)
UNITS = {"word_order": "bits per byte", "token_order": "nats per token"}
LEVELS = {"word_order": "bpb", "token_order": "nats_per_token"}
RUN_KEYS = ("run", "variant", "preset", "context", "seed")


class ReportError(ValueError):
    """Runs whose outputs do not fit together (other stories, missing columns...)."""


@dataclass(frozen=True)
class Statistics:
    """How intervals are made (``compare`` parameters)."""

    n_boot: int
    confidence: float
    seed: int
    convergence_tolerance: float  # converged: doubling the training tokens moved the
                                  # validation loss by less than this (relative)

    def __post_init__(self) -> None:
        params.check_int("compare", "n_boot", self.n_boot, 10)
        params.check_int("compare", "seed", self.seed, 0)
        params.check_number("compare", "confidence", self.confidence, 0.0, 1.0, low_open=True,
                            high_open=True)
        params.check_number("compare", "convergence_tolerance", self.convergence_tolerance, 0.0,
                            low_open=True)

    def interval(self) -> dict[str, Any]:
        return {"n_boot": self.n_boot, "confidence": self.confidence, "seed": self.seed}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def size_name(preset: str, context: int | None) -> str:
    """A run's size: its preset, with the context length when the run sets one."""
    return preset if context is None else f"{preset}-c{context}"


# ------------------------------------------------------------------ the runs' tables


def run_info(run: Mapping[str, Any], metrics: Mapping[str, Any]) -> dict[str, Any]:
    """What the report needs to know of one run, from its identity and metrics.json."""
    missing = [k for k in ("n_params", "seq_len", "steps", "eval_stories") if k not in metrics]
    if missing:
        raise ReportError(f"metrics of {run['run']} lack {missing}; evaluate the run again")
    steps = metrics["steps"]
    tokens = metrics.get("tokens_seen")
    return {
        **{k: run.get(k) for k in RUN_KEYS},
        "size": size_name(run["preset"], run.get("context")),
        "token_order": variants.get(run["variant"]).token_order,
        "n_params": int(metrics["n_params"]), "seq_len": int(metrics["seq_len"]),
        "steps": steps, "tokens_per_step": (tokens // steps) if tokens and steps else None,
        "val_bpb": metrics.get("val_bpb"), "eval_stories": metrics["eval_stories"],
        "machine": metrics.get("machine"), "cooldowns": metrics.get("cooldowns"),
    }


def shared_stories(tables: Mapping[str, pd.DataFrame]) -> list[str]:
    """The stories every run was scored on: the longest common prefix, which must agree.

    Every run scores the first ``evaluate.n_stories`` validation stories in table order,
    so two runs' stories are one list, or one a prefix of the other (a run evaluated on
    fewer); anything else is an error naming both runs.
    """
    if not tables:
        raise ReportError("no runs to compare")
    items = list(tables.items())
    n = min(len(table) for _, table in items)
    first_run, first = items[0]
    ids = list(first["story"][:n])
    for run, table in items[1:]:
        other = list(table["story"][:n])
        if other != ids:
            at = next(i for i, (a, b) in enumerate(zip(ids, other, strict=True)) if a != b)
            raise ReportError(
                f"{run} and {first_run} were not evaluated on the same validation stories "
                f"(story {at}: {other[at]} vs {ids[at]}); evaluate every run on one story "
                "table (evaluate.n_stories set in run_defaults only)")
    counts = {len(table) for table in tables.values()}
    if len(counts) > 1:
        logger.warning("runs were evaluated on %s stories; comparing the first %d, which "
                       "all of them share", sorted(counts), n)
    return ids


def document_table(infos: Mapping[str, Mapping[str, Any]], tables: Mapping[str, pd.DataFrame]
                   ) -> pd.DataFrame:
    """One row per (run, shared story): the run's identity and the story's scores."""
    ids = shared_stories(tables)
    frames = []
    for run, table in tables.items():
        info = infos[run]
        rows = table.iloc[: len(ids)][["doc", "story", "n_bytes", "story_tokens", "bits"]]
        frames.append(rows.assign(run=run, variant=info["variant"], size=info["size"],
                                  seed=int(info["seed"])))
    columns = ["run", "variant", "size", "seed", "doc", "story", "n_bytes", "story_tokens",
               "bits"]
    return pd.concat(frames, ignore_index=True)[columns]


def curve_table(infos: Mapping[str, Mapping[str, Any]], curves: Mapping[str, pd.DataFrame],
                documents: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, evaluation step, curve story): bits, bytes and tokens seen.

    Only the stories every run's curve holds at every one of its steps are kept.
    """
    sizes = documents.drop_duplicates("doc").set_index("doc")["n_bytes"]
    common: set[int] | None = None
    for curve in curves.values():
        for _, rows in curve.groupby("step"):
            docs = set(rows["doc"])
            common = docs if common is None else common & docs
    if not common:
        return pd.DataFrame(columns=["run", "variant", "size", "seed", "step", "tokens",
                                     "doc", "bits", "n_bytes"])
    keep = sorted(d for d in common if d in sizes.index)
    frames = []
    for run, curve in curves.items():
        info = infos[run]
        rows = curve[curve["doc"].isin(keep)]
        tokens = rows["step"] * (info["tokens_per_step"] or 0)
        frames.append(rows.assign(run=run, variant=info["variant"], size=info["size"],
                                  seed=int(info["seed"]), tokens=tokens,
                                  n_bytes=sizes.loc[rows["doc"]].to_numpy()))
    columns = ["run", "variant", "size", "seed", "step", "tokens", "doc", "bits", "n_bytes"]
    return pd.concat(frames, ignore_index=True)[columns].sort_values(
        ["run", "step", "doc"], ignore_index=True)


def seed_doc_matrix(rows: pd.DataFrame, column: str, seeds: Sequence[int]) -> np.ndarray:
    """(seeds, documents) array of ``column``, rows in ``seeds`` order, columns by doc."""
    table = rows.pivot(index="seed", columns="doc", values=column)
    return table.loc[list(seeds)].to_numpy(dtype=np.float64)


# ------------------------------------------------------------------ levels and deltas


def _levels(rows: pd.DataFrame, stats: Statistics) -> dict[str, Any]:
    """Bits per byte and nats per story token of one variant at one size, per seed and
    over seeds."""
    seeds = sorted(rows["seed"].unique())
    bits = seed_doc_matrix(rows, "bits", seeds)
    bpb = seed_document_interval(bits, seed_doc_matrix(rows, "n_bytes", seeds), ratio,
                                 **stats.interval())
    npt = seed_document_interval(bits * LN2, seed_doc_matrix(rows, "story_tokens", seeds), ratio,
                                 **stats.interval())
    return {"seeds": [int(s) for s in seeds], "bpb": bpb, "nats_per_token": npt,
            "runs": sorted(rows["run"].unique())}


def _deltas(present: Sequence[str], rows: pd.DataFrame, stats: Statistics
            ) -> Iterator[dict[str, Any]]:
    """The delta of each registry pair among the ``present`` variants of ``rows`` that
    share a seed."""
    for variant in compared_pairs(present):
        entry = _delta(variant, rows, stats)
        if entry is not None:
            yield entry


def _delta(variant: str, rows: pd.DataFrame, stats: Statistics) -> dict[str, Any] | None:
    spec = variants.get(variant)
    ours = rows[rows["variant"] == variant]
    theirs = rows[rows["variant"] == spec.compares_with]
    seeds = sorted(set(ours["seed"]) & set(theirs["seed"]))
    if not seeds:
        return None
    unpaired = sorted(set(ours["seed"]) ^ set(theirs["seed"]))
    if unpaired:
        logger.warning("%s vs %s: seeds %s have no partner run; they are left out",
                       variant, spec.compares_with, unpaired)
    bw, fw = seed_doc_matrix(ours, "bits", seeds), seed_doc_matrix(theirs, "bits", seeds)
    entry = delta_interval(bw, fw, **stats.interval())
    per_seed = []
    for i, seed in enumerate(seeds):
        one = delta_interval(bw[i:i + 1], fw[i:i + 1], **stats.interval())
        per_seed.append({"seed": int(seed), "delta": one["estimate"], "low": one["low"],
                         "high": one["high"]})
    return {"variant": variant, "partner": spec.compares_with, "kind": spec.delta,
            "unit": UNITS[spec.delta], "delta": entry["estimate"], "low": entry["low"],
            "high": entry["high"], "method": entry["method"], "n_seeds": entry["n_seeds"],
            "n_docs": entry["n_docs"], "seeds": [int(s) for s in seeds],
            "se_seeds": entry["se_seeds"], "se_documents": entry["se_documents"],
            "df": entry["df"], "per_seed": per_seed, "unpaired_seeds": [int(s) for s in unpaired],
            "excludes_zero": bool(entry["low"] > 0 or entry["high"] < 0)}


def compared_pairs(present: Sequence[str]) -> list[str]:
    """Variants present whose registry partner is present too, in registry order."""
    chosen = []
    for name in variants.NAMES:
        spec = variants.get(name)
        if name in present and spec.compares_with is not None:
            if spec.compares_with in present:
                chosen.append(name)
            else:
                logger.warning("no %s run to compare %s with", spec.compares_with, name)
    return chosen


def arrow_of_time(documents: pd.DataFrame, infos: Mapping[str, Mapping[str, Any]],
                  stats: Statistics) -> dict[str, Any]:
    """Per size: each variant's levels (per seed and over seeds) and each registry pair's
    delta with its interval."""
    sizes = []
    for size, group in documents.groupby("size", sort=False):
        members = [infos[r] for r in group["run"].unique()]
        present = [v for v in variants.NAMES if v in set(group["variant"])]
        levels = {v: _levels(group[group["variant"] == v], stats) for v in present}
        deltas = list(_deltas(present, group, stats))
        for entry in deltas:
            level = LEVELS[entry["kind"]]
            entry.update(level=levels[entry["variant"]][level]["estimate"],
                         partner_level=levels[entry["partner"]][level]["estimate"])
            logger.info("%s %s vs %s: %+.4f [%+.4f, %+.4f] (%s)", size, entry["variant"],
                        entry["partner"], entry["delta"], entry["low"], entry["high"],
                        entry["method"])
        sizes.append({
            "size": str(size), "preset": members[0]["preset"], "context": members[0]["context"],
            "seq_len": members[0]["seq_len"],
            "n_params": {v: _one(infos, group, v, "n_params") for v in present},
            "steps": {v: _one(infos, group, v, "steps") for v in present},
            "levels": levels, "deltas": deltas,
        })
    return {"n_docs": int(documents["doc"].nunique()), "sizes": sizes,
            "methods": {"seeds and documents": SEEDS_AND_DOCUMENTS,
                        "one seed": DOCUMENTS_ONLY}}


def _one(infos: Mapping[str, Mapping[str, Any]], group: pd.DataFrame, variant: str, key: str
         ) -> Any:
    values = {infos[r][key] for r in group.loc[group["variant"] == variant, "run"].unique()}
    return values.pop() if len(values) == 1 else sorted(values)


def sweeps(arrow: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The deltas across sizes: against parameter count (sizes sharing a context length)
    and against context length (sizes sharing a preset), one row per (size, pair)."""
    rows = []
    for size in arrow["sizes"]:
        for d in size["deltas"]:
            n_params = size["n_params"][d["partner"]]
            rows.append({"size": size["size"], "preset": size["preset"],
                         "seq_len": size["seq_len"],
                         "n_params": n_params if isinstance(n_params, int) else n_params[0],
                         "pair": f"{d['variant']} vs {d['partner']}", "kind": d["kind"],
                         "unit": d["unit"], "delta": d["delta"], "low": d["low"],
                         "high": d["high"], "n_seeds": d["n_seeds"], "method": d["method"]})
    by_params = sorted(rows, key=lambda r: (r["seq_len"], r["pair"], r["n_params"]))
    by_context = sorted(rows, key=lambda r: (r["preset"], r["pair"], r["seq_len"]))
    return {"by_params": by_params, "by_context": by_context}


# ------------------------------------------------------------------ training curves


def _run_bpb(rows: pd.DataFrame) -> float:
    return float(rows["bits"].sum() / rows["n_bytes"].sum())


def training_curves(curves: pd.DataFrame, stats: Statistics) -> dict[str, Any]:
    """Per size and evaluation step: each variant's bpb (mean over seeds) and each
    registry pair's delta with its interval."""
    result: dict[str, Any] = {"n_docs": int(curves["doc"].nunique()) if len(curves) else 0,
                              "sizes": []}
    if not len(curves):
        return result
    for size, group in curves.groupby("size", sort=False):
        present = [v for v in variants.NAMES if v in set(group["variant"])]
        points = []
        for step, at in group.groupby("step"):
            levels = {}
            for v in present:
                rows = at[at["variant"] == v]
                if len(rows):
                    levels[v] = float(np.mean([_run_bpb(r) for _, r in rows.groupby("seed")]))
            deltas = [{k: entry[k] for k in ("variant", "partner", "kind", "delta", "low",
                                             "high", "method", "n_seeds")}
                      for entry in _deltas([v for v in present if v in levels], at, stats)]
            tokens = at["tokens"].max()
            points.append({"step": int(step), "tokens": int(tokens) if tokens else None,
                           "bpb": levels, "deltas": deltas})
        result["sizes"].append({"size": str(size), "points": points})
    return result


# ------------------------------------------------------------------ convergence

VERDICTS = {"converged": "converged", "falling": "still falling: train longer",
            "rising": "rising: overfitting, train shorter", None: "not checked"}


def doubling(cooldowns: Sequence[Mapping[str, Any]] | None, tolerance: float
             ) -> dict[str, Any]:
    """Whether a run had converged: doubling its training tokens moved its validation
    loss by less than ``tolerance`` (relative).

    ``cooldowns`` are the run's lengths, each trained to the end of its cooldown
    (``meta["cooldowns"]`` of a wsd run: steps, tokens, validation loss on the run's
    fixed validation windows, so a relative change of loss is one of bits per byte).
    The test compares the longest length with the one of half its tokens. A loss that
    rose by more than the tolerance is overfitting (too many epochs): the answer moved
    too, so the run is not converged either; a shorter run is the better one.
    """
    lengths = {int(c["tokens"]): c for c in cooldowns or [] if c.get("val_loss") is not None}
    longest = max(lengths, default=None)
    if longest is None or longest % 2 or longest // 2 not in lengths:
        return {"verdict": None, "from_tokens": None, "to_tokens": longest,
                "relative_change": None}
    before, after = lengths[longest // 2]["val_loss"], lengths[longest]["val_loss"]
    change = (after - before) / before
    verdict = "converged" if abs(change) < tolerance else "falling" if change < 0 else "rising"
    return {"verdict": verdict, "from_tokens": longest // 2, "to_tokens": longest,
            "relative_change": float(change)}


def convergence(infos: Mapping[str, Mapping[str, Any]], stats: Statistics) -> dict[str, Any]:
    """Per run, the doubling test (``doubling``); per size, how many runs passed it."""
    runs = {run: doubling(info.get("cooldowns"), stats.convergence_tolerance)
            for run, info in infos.items()}
    sizes: dict[str, dict[str, Any]] = {}
    for run, info in infos.items():
        entry = sizes.setdefault(info["size"], {"n_runs": 0, "n_checked": 0, "n_converged": 0})
        entry["n_runs"] += 1
        entry["n_checked"] += runs[run]["verdict"] is not None
        entry["n_converged"] += runs[run]["verdict"] == "converged"
    return {"tolerance": stats.convergence_tolerance, "runs": runs, "sizes": sizes}


# ------------------------------------------------------------------ instructions


def instruction_intervals(hits: Mapping[str, Mapping[str, Sequence[bool]]], stats: Statistics
                          ) -> dict[str, dict[str, Any]]:
    """Per source: each requirement's share of stories with a bootstrap interval."""
    result = {}
    for source, checks in hits.items():
        entry: dict[str, Any] = {}
        for name, values in checks.items():
            entry[name] = share_interval(values, **stats.interval())
        result[source] = entry
    return result


# ------------------------------------------------------------------ machines


def machines(infos: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The distinct machines the runs were evaluated on, with the runs of each."""
    found: list[dict[str, Any]] = []
    for run, info in infos.items():
        facts = info.get("machine") or {}
        for entry in found:
            if entry["facts"] == facts:
                entry["runs"].append(run)
                break
        else:
            found.append({"facts": facts, "runs": [run]})
    return found


# ------------------------------------------------------------------ Markdown


def _pct(x: float) -> str:
    return f"{100 * x:+.2f}%"


def _interval(entry: Mapping[str, Any], *, percent: bool = False) -> str:
    show = _pct if percent else (lambda v: f"{v:.4f}")
    return f"[{show(entry['low'])}, {show(entry['high'])}]"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _method(method: str, n_seeds: int) -> str:
    return method if method == DOCUMENTS_ONLY else f"{method} ({n_seeds} seeds)"


def _size_lines(size: Mapping[str, Any]) -> list[str]:
    seeds = sorted({s for level in size["levels"].values() for s in level["seeds"]})
    params_text = ", ".join(f"{v} {n:,}" if isinstance(n, int) else f"{v} {n}"
                            for v, n in size["n_params"].items())
    lines = [f"### {size['size']}: context {size['seq_len']}, seeds "
             f"{', '.join(map(str, seeds))}", "", f"Parameters: {params_text}.", "",
             "| variant | token order | steps | bits per byte, per seed | bits per byte | "
             "interval | nats per story token | interval |", "|---|---|---|---|---|---|---|---|"]
    for variant, level in size["levels"].items():
        per_seed = ", ".join(f"s{s}: {v:.4f}" for s, v in
                             zip(level["seeds"], level["bpb"]["per_seed"], strict=True))
        bpb, npt = level["bpb"], level["nats_per_token"]
        lines.append(f"| {variant} | {variants.get(variant).token_order} | "
                     f"{size['steps'][variant]} | {per_seed} | {bpb['estimate']:.4f} | "
                     f"{_interval(bpb)} | {npt['estimate']:.4f} | {_interval(npt)} |")
    lines += ["", "| pair | unit | level | partner | delta per seed | delta | interval | "
              "interval covers | excludes 0 |", "|---|---|---|---|---|---|---|---|---|"]
    for d in size["deltas"]:
        per_seed = ", ".join(f"s{p['seed']}: {_pct(p['delta'])}" for p in d["per_seed"])
        lines.append(f"| {d['variant']} vs {d['partner']} | {d['unit']} | {d['level']:.4f} | "
                     f"{d['partner_level']:.4f} | {per_seed} | {_pct(d['delta'])} | "
                     f"{_interval(d, percent=True)} | {_method(d['method'], d['n_seeds'])} | "
                     f"{'yes' if d['excludes_zero'] else 'no'} |")
    if not size["deltas"]:
        lines.append("| (no variant with its partner at this size) | | | | | | | | |")
    return [*lines, ""]


def _sweep_lines(arrow: Mapping[str, Any]) -> list[str]:
    rows = arrow["sweeps"]["by_params"]
    if not rows:
        return []
    lines = ["## Sweeps: the delta against model size and context length", "",
             "| pair | context | size | parameters | delta | interval | interval covers |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['pair']} | {r['seq_len']} | {r['size']} | {r['n_params']:,} | "
                     f"{_pct(r['delta'])} | {_interval(r, percent=True)} | "
                     f"{_method(r['method'], r['n_seeds'])} |")
    lines += ["", "Plotted against parameter count (sizes of one context length joined) and "
              "against context length (sizes of one preset joined) in `sweep.png`.", ""]
    return lines


def _curve_lines(training: Mapping[str, Any]) -> list[str]:
    if not training["sizes"]:
        return ["## Training: no evaluation curves (evaluate.curve_stories is 0)", ""]
    lines = ["## Training: the delta against training tokens", "",
             f"At every evaluation step of training, each run scored the first "
             f"{training['n_docs']} evaluation stories (the same stories at every step and "
             "in every run).", ""]
    for size in training["sizes"]:
        lines += [f"### {size['size']}", ""]
        pairs = sorted({f"{d['variant']} vs {d['partner']}" for p in size["points"]
                        for d in p["deltas"]})
        present = [v for v in variants.NAMES if any(v in p["bpb"] for p in size["points"])]
        lines += ["| step | tokens | " + " | ".join(f"{v} bpb" for v in present) + " | "
                  + " | ".join(pairs) + " |",
                  "|---|---|" + "---|" * (len(present) + len(pairs))]
        for point in size["points"]:
            deltas = {f"{d['variant']} vs {d['partner']}": d for d in point["deltas"]}
            cells = [_num(point["bpb"].get(v)) for v in present]
            cells += [f"{_pct(deltas[p]['delta'])} {_interval(deltas[p], percent=True)}"
                      if p in deltas else "" for p in pairs]
            tokens = f"{point['tokens']:,}" if point["tokens"] else "n/a"
            lines.append(f"| {point['step']} | {tokens} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _convergence_lines(found: Mapping[str, Any]) -> list[str]:
    tolerance = found["tolerance"]
    lines = ["## Convergence: does doubling the training tokens move the answer?", "",
             "A run has **converged** when doubling its training tokens moved its validation "
             f"loss by less than {100 * tolerance:g}% (relative; `compare."
             "convergence_tolerance`). Both lengths are full warmup-stable-decay runs; the "
             "longer one continues the shorter one's stable phase from its kept checkpoint "
             "(docs/results.md, \"Convergence\"). Runs not trained to two such lengths are "
             "not checked.", "",
             "| size | runs | checked | converged |", "|---|---|---|---|"]
    for size, n in found["sizes"].items():
        lines.append(f"| {size} | {n['n_runs']} | {n['n_checked']} | {n['n_converged']} |")
    lines += ["", "| run | tokens | doubled to | change of validation loss | verdict |",
              "|---|---|---|---|---|"]
    for run, c in found["runs"].items():
        change = "n/a" if c["relative_change"] is None else f"{100 * c['relative_change']:+.2f}%"
        before = "n/a" if c["from_tokens"] is None else f"{c['from_tokens']:,}"
        after = "n/a" if c["to_tokens"] is None else f"{c['to_tokens']:,}"
        lines.append(f"| {run} | {before} | {after} | {change} | {VERDICTS[c['verdict']]} |")
    return [*lines, ""]


def _machine_lines(found: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = ["## Where these figures come from", ""]
    for entry in found:
        f = entry["facts"]
        lines.append(f"- {f.get('cpu', '?')}, torch {f.get('torch', '?')}, ATen CPU capability "
                     f"{f.get('cpu_capability', '?')}"
                     + (f", GPU {f['gpu']}" if f.get("gpu") else "")
                     + f": {len(entry['runs'])} run(s)")
    return [*lines, ""]


def report_markdown(report: Mapping[str, Any], prompts: Mapping[str, str],
                    after_levels: Sequence[str] = ()) -> str:
    """A readable Markdown rendering of the report (``prompts``: how each source was
    prompted; ``after_levels``: lines of a section that follows the levels and deltas)."""
    arrow = report["arrow_of_time"]
    settings = report["settings"]
    lines = ["# Run comparison", "",
             f"## Arrow of time ({arrow['n_docs']} validation stories, the same for every run)",
             "", "delta = E[x_bw - x_fw] / (0.5 E[x_bw + x_fw]) over stories, where x is a "
             "story's bits under a model, paired by seed. Intervals "
             f"({100 * settings['confidence']:.0f}%): with several seeds, over seeds and "
             "stories (t interval, seed spread plus a bootstrap over stories, "
             f"{settings['n_boot']} resamples); with one seed, over stories only "
             "(\"documents only, one seed\": it does not cover another training seed).", ""]
    for size in arrow["sizes"]:
        lines += _size_lines(size)
    lines += after_levels
    lines += _sweep_lines(arrow)
    lines += _curve_lines(report["training_curves"])
    lines += _convergence_lines(report["convergence"])
    readers = report["coherence"]["readers"]
    lines += ["## Coherence of generated stories (bits per byte; lower reads as more likely)",
              "", "| stories | n | empty | " + " | ".join(f"{r} model" for r in readers) + " |",
              "|---|---|---|" + "---|" * len(readers)]
    for source, row in report["coherence"]["sources"].items():
        cells = " | ".join(_num(row[f"{r}_bpb"]) for r in readers)
        lines.append(f"| {source} | {row['n']} | {row['n_empty']} | {cells} |")
    following = report["instruction_following"]
    instructed = following["instructed"]
    lines += ["", "## Instruction following", "",
              f"Instruct-layout variants: {', '.join(instructed) or 'none'}. Shares of stories "
              f"with a {100 * settings['confidence']:.0f}% bootstrap interval over the stories.",
              "", "| stories | n | uses all words | names the characters | both |",
              "|---|---|---|---|---|"]
    for source, row in following["shares"].items():
        cells = " | ".join(f"{row[k]['share']:.0%} [{row[k]['low']:.0%}, {row[k]['high']:.0%}]"
                           for k in ("uses_words", "names_characters", "both"))
        name = f"**{source}**" if source in instructed else source
        lines.append(f"| {name} | {row['uses_words']['n']} | {cells} |")
    lines += ["", "Prompts: " + "; ".join(f"{s}: {how}" for s, how in prompts.items()) + ".",
              ""]
    lines += _imported_lines(report.get("imported", {}))
    lines += _machine_lines(report["machines"])
    return "\n".join(lines)


def imported_models(externals: Sequence[Mapping[str, Any]],
                    metrics: Sequence[Mapping[str, Any]], eval_sha256: str | None
                    ) -> dict[str, dict[str, Any]]:
    """Imported models' levels on the evaluation stories, by name: bits per byte compare
    with the runs' (the same stories), nats per token only within one tokenizer."""
    table = {}
    for external, m in zip(externals, metrics, strict=True):
        stories = m.get("eval_stories", {})
        if eval_sha256 is not None and stories.get("sha256") != eval_sha256:
            raise ValueError(f"imported model {external['external']} was scored on other stories "
                             f"({stories.get('sha256')}) than the runs ({eval_sha256}); "
                             "evaluate it again")
        table[external["external"]] = {
            "variant": external["variant"], "val_bpb": m["val_bpb"],
            "story_nats_per_token": m["story_nats_per_token"], "n_docs": m["n_docs"],
            "n_params": m.get("n_params"), "vocab_size": m.get("vocab_size"),
            "imported_from": (m.get("lineage") or {}).get("imported_from"),
        }
    return table


def _imported_lines(imported: Mapping[str, Mapping[str, Any]]) -> list[str]:
    if not imported:
        return []
    lines = ["## Imported models", "",
             "Scored on the same evaluation stories, each in its own tokens: bits per byte "
             "compare with the runs'; nats per token only between models of one tokenizer.",
             "", "| model | read as | parameters | vocabulary | bits per byte | "
             "nats per story token | stories |", "|---|---|---|---|---|---|---|"]
    for name, row in imported.items():
        params = "n/a" if row["n_params"] is None else f"{row['n_params']:,}"
        lines.append(f"| {name} | {row['variant']} | {params} | {row['vocab_size']} | "
                     f"{row['val_bpb']:.4f} | {row['story_nats_per_token']:.4f} | "
                     f"{row['n_docs']} |")
    return [*lines, ""]
