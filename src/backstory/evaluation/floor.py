"""The floor: the bits per byte below which no model of storyworld text can go.

Every storyworld record carries ``source_bits``, -log2 of the probability of the draws
that made its story (``storyworld.engine.Source``). Over the evaluation stories, the
sum of those bits divided by the stories' UTF-8 bytes is the floor, shared by forward,
reversed and backward; what it bounds, exactly, and its measured overstatement
(``storyworld.exact``): docs/results.md, "The floor". Real data has no ``source_bits``,
and so no floor; the report says so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from backstory import variants
from backstory.data.documents import record_key
from backstory.evaluation.report import Statistics, compared_pairs, seed_doc_matrix
from backstory.evaluation.stats import ratio, seed_document_interval

COVERS = ("the story text only, in the bytes the runs' bits per byte divide by (an instruct "
          "document's prompt is not counted, and is not given to the floor either: an "
          "instruct model may go below it by what the prompt tells of the story)")
EXACTNESS = ("an upper bound: the bits of each story's derivation, which overstate the text's "
             "bits where draws leave no mark in the text (storyworld.exact measures it)")


def no_floor(reason: str) -> dict[str, Any]:
    return {"available": False, "reason": reason}


def floor_of(records: Iterable[Mapping[str, Any]], documents: pd.DataFrame,
             curve_docs: Iterable[int] = ()) -> dict[str, Any]:
    """The floor of the evaluation stories of ``documents`` (the compare document_bits),
    from their ``source_bits`` in ``records`` (the story table's validation records);
    also over ``curve_docs``, the stories the training curves score.

    Raises ValueError when a story is missing from the records or its bytes differ.
    """
    stories = documents.drop_duplicates("doc").sort_values("doc")
    wanted = dict(zip(stories["story"], stories["n_bytes"], strict=True))
    found: dict[str, float | None] = {}
    for record in records:
        key = record_key(dict(record))
        if key not in wanted:
            continue
        n_bytes = len(str(record["story"]).encode("utf-8"))
        if n_bytes != wanted[key]:
            raise ValueError(f"story {key} holds {n_bytes} bytes in the story table but "
                             f"{wanted[key]} in the runs' scores; evaluate the runs again")
        found[key] = record.get("source_bits")
        if len(found) == len(wanted):
            break
    missing = [k for k in wanted if k not in found]
    if missing:
        raise ValueError(f"{len(missing)} evaluation stories (first {missing[0]}) are not "
                         "validation stories of the story table; evaluate the runs again")
    without = [k for k, bits in found.items() if bits is None]
    if without:
        return no_floor(f"{len(without)} of {len(wanted)} evaluation stories carry no "
                        "source_bits (real data, or storyworld records written before "
                        "source_bits existed): their entropy is unknown")
    per_story = stories[["doc", "story", "n_bytes"]].assign(
        source_bits=[float(found[k]) for k in stories["story"]])
    curve = per_story[per_story["doc"].isin(set(curve_docs))]
    return {"available": True, **_bpb(per_story),
            "curve": _bpb(curve) if len(curve) else None,
            "covers": COVERS, "exactness": EXACTNESS,
            "per_story": per_story.to_dict(orient="records")}


def _bpb(per_story: pd.DataFrame) -> dict[str, Any]:
    bits, n_bytes = float(per_story["source_bits"].sum()), int(per_story["n_bytes"].sum())
    return {"n_stories": len(per_story), "bits": bits, "n_bytes": n_bytes,
            "bpb": bits / n_bytes}


def excess_over_floor(documents: pd.DataFrame, floor: Mapping[str, Any], stats: Statistics
                      ) -> dict[str, Any]:
    """Per size: each variant's bits per byte, its excess over the floor (absolute, in
    bits per byte, with an interval over seeds and stories, and relative to the floor),
    and each registry pair's excess ratio (the variant's excess bits / its partner's)."""
    if not floor["available"]:
        return no_floor(floor["reason"])
    source = pd.DataFrame(floor["per_story"]).set_index("doc")["source_bits"]
    sizes = []
    for size, group in documents.groupby("size", sort=False):
        present = [v for v in variants.NAMES if v in set(group["variant"])]
        excess, levels = {}, {}
        for v in present:
            rows = group[group["variant"] == v]
            seeds = sorted(rows["seed"].unique())
            bits = seed_doc_matrix(rows, "bits", seeds)
            n_bytes = seed_doc_matrix(rows, "n_bytes", seeds)
            docs = sorted(rows["doc"].unique())
            excess[v] = bits - source.loc[docs].to_numpy()[None, :]  # (seeds, docs)
            entry = seed_document_interval(excess[v], n_bytes, ratio, **stats.interval())
            floor_bpb = float(source.loc[docs].sum() / n_bytes[0].sum())
            levels[v] = {"seeds": [int(s) for s in seeds],
                         "bpb": float(bits.sum() / n_bytes.sum()), "floor_bpb": floor_bpb,
                         "excess": entry["estimate"], "low": entry["low"],
                         "high": entry["high"], "method": entry["method"],
                         "relative": entry["estimate"] / floor_bpb}
        ratios = []
        for v in compared_pairs(present):
            partner = variants.get(v).compares_with
            seeds = sorted(set(levels[v]["seeds"]) & set(levels[partner]["seeds"]))
            if not seeds:
                continue
            ours = excess[v][[levels[v]["seeds"].index(s) for s in seeds]]
            theirs = excess[partner][[levels[partner]["seeds"].index(s) for s in seeds]]
            entry = seed_document_interval(ours, theirs, ratio, **stats.interval())
            ratios.append({"variant": v, "partner": partner, "ratio": entry["estimate"],
                           "low": entry["low"], "high": entry["high"],
                           "method": entry["method"], "n_seeds": len(seeds)})
        sizes.append({"size": str(size), "levels": levels, "ratios": ratios})
    return {"available": True, "bpb": floor["bpb"], "n_stories": floor["n_stories"],
            "covers": floor["covers"], "exactness": floor["exactness"], "sizes": sizes}


def floor_lines(excess: Mapping[str, Any] | None) -> list[str]:
    """The report's section on the floor (Markdown lines)."""
    if excess is None:
        return []
    lines = ["## The floor: how far above storyworld's entropy each model stays", ""]
    if not excess["available"]:
        return [*lines, f"No floor for this corpus: {excess['reason']}.", ""]
    lines += [f"Floor of the {excess['n_stories']} evaluation stories: "
              f"**{excess['bpb']:.4f} bits per byte**, the same for every variant (word "
              "reversal is a bijection, backward reads the same tokens). It covers "
              f"{excess['covers']}; it is {excess['exactness']}. Excess = a run's bits per byte "
              "minus the floor; excess ratio = a variant's excess bits / its partner's, paired "
              "by seed, with the intervals of the deltas.", ""]
    for size in excess["sizes"]:
        lines += [f"### {size['size']}", "",
                  "| variant | bits per byte | excess | interval | excess / floor |",
                  "|---|---|---|---|---|"]
        for v, level in size["levels"].items():
            lines.append(f"| {v} | {level['bpb']:.4f} | {level['excess']:.4f} | "
                         f"[{level['low']:.4f}, {level['high']:.4f}] | "
                         f"{100 * level['relative']:.1f}% |")
        if size["ratios"]:
            lines += ["", "| pair | excess ratio | interval | seeds |", "|---|---|---|---|"]
            for r in size["ratios"]:
                lines.append(f"| {r['variant']} vs {r['partner']} | {r['ratio']:.3f} | "
                             f"[{r['low']:.3f}, {r['high']:.3f}] | {r['n_seeds']} |")
        lines.append("")
    return lines
