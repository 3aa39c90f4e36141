"""Compare nodes: thin adapters from the runs' persisted outputs to the evaluation layer.

Runs are compared within a group: the runs of one size (preset and context) and one
seed, which differ only in their variant. Every group is scored on the same validation
stories. The generated-story parts of the report (coherence, instruction following)
use the lead group: the experiment's first size at its lowest seed.

Node inputs that vary with the experiment (one model per run, one token store per text
variant) arrive positionally; the pipeline binds ``runs`` (their identities, in the same
order) and ``sources``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from backstory import variants
from backstory.data.corpus.story_table import StoryTable, iter_records
from backstory.data.text import make_instruction
from backstory.data.tokenizer import Tokenizer
from backstory.data.tokens import TokenStore
from backstory.evaluation.compare import (
    CompareConfig,
    check_same_stories,
    generate_batched,
    score_texts,
    story_tokens_per_doc,
)
from backstory.evaluation.instructions import instruction_checks, instruction_shares
from backstory.evaluation.metrics import covered_documents, document_bits, resolve_device
from backstory.evaluation.sampling import ending_prompt, opening_prompt
from backstory.evaluation.stats import bootstrap_delta
from backstory.lm.checkpoint import TrainedModel, build_model
from backstory.lm.model import Transformer
from backstory.lm.orders import permutation_seed_of

logger = logging.getLogger(__name__)

LN2 = math.log(2.0)
# How a generated story is prompted, by the writing variant's mode (backstory.variants).
PROMPTS = {
    "completion": "the story's first sentence",
    "ending": "the story's last sentence (written backwards)",
    "ending, token order backward": "the story's last sentence (written backwards, in tokens)",
    "instruction": "an instruction naming the summary and the words",
}
FREE = "free"  # suffix of the baseline source: a completion model told nothing
GROUP_KEYS = ("size", "seed")


def _model(trained: TrainedModel, device: str) -> Transformer:
    return build_model(trained).to(resolve_device(device)).eval()


def _by_run(runs: Sequence[Mapping[str, Any]], items: Sequence[Any]) -> dict[str, Any]:
    if len(runs) != len(items):
        raise ValueError(f"{len(items)} inputs for {len(runs)} runs")
    return {run["run"]: item for run, item in zip(runs, items, strict=True)}


def _size(run: Mapping[str, Any]) -> str:
    context = run.get("context")
    return run["preset"] if context is None else f"{run['preset']}-c{context}"


def lead_group(runs: Sequence[Mapping[str, Any]]) -> tuple[str, int]:
    """(size, seed) of the group whose models write the report's stories."""
    first = _size(runs[0])
    return first, min(run["seed"] for run in runs if _size(run) == first)


def lead_runs(runs: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """The lead group's runs that take part in the generated-story comparison, by
    variant, in registry order (``Variant.in_story_comparison``: a permuted model writes
    no stories, and one with its own tokenizer reads none of the shared tokenizer's)."""
    size, seed = lead_group(runs)
    found = {run["variant"]: run for run in runs if _size(run) == size and run["seed"] == seed}
    left_out = [v for v in found if not variants.get(v).in_story_comparison]
    if left_out:
        logger.info("generated-story comparison leaves out %s (no reading order, or a "
                    "tokenizer of their own); their deltas are in the arrow-of-time report",
                    ", ".join(left_out))
    return {v: found[v] for v in variants.NAMES
            if v in found and variants.get(v).in_story_comparison}


def story_readers(lead: Mapping[str, Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Lead runs that can score a plain story: every variant without an instruction."""
    return [run for variant, run in lead.items() if not variants.get(variant).instruct]


def story_sources(writers: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Generated-story sources: name -> (the variant that writes it, how it is prompted).

    Each writer writes in its own mode; the first completion writer also writes from
    nothing (``<variant>_free``), a baseline that is told nothing.
    """
    sources = {v: (v, PROMPTS[variants.get(v).mode]) for v in writers}
    completion = [v for v in writers if variants.get(v).mode == "completion"]
    if completion:
        sources[f"{completion[0]}_{FREE}"] = (completion[0], "nothing (BOS only)")
    return sources


def _model_info(run: Mapping[str, Any], trained: TrainedModel) -> dict[str, Any]:
    return {
        **run,
        "size": _size(run),
        "token_order": variants.get(run["variant"]).token_order,
        "steps": trained.meta.get("steps"),
        "n_params": sum(int(t.numel()) for t in trained.state_dict.values()),
    }


# ------------------------------------------------------------------ arrow of time


def score_validation_documents(
    compare: dict, *inputs: TrainedModel | TokenStore, runs: Sequence[Mapping[str, Any]],
    sources: Sequence[str],
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Bits of every compared validation story under each run's model, per document.

    ``inputs`` are the runs' models (in ``runs`` order), then the validation stores of
    the text variants in ``sources``; a run is scored on its variant's token source.
    """
    config = CompareConfig.from_params(compare)
    models = _by_run(runs, inputs[: len(runs)])
    stores = dict(zip(sources, inputs[len(runs):], strict=True))
    n_docs = min(covered_documents(store, config.max_tokens) for store in stores.values())
    check_same_stories(stores, n_docs)
    n_bytes = next(iter(stores.values())).doc_bytes[:n_docs]
    frames, info = [], {}
    for run in tqdm(runs, desc="compare: score validation", unit="model"):
        trained, store = models[run["run"]], stores[variants.get(run["variant"]).token_source]
        info[run["run"]] = _model_info(run, trained)
        model = _model(trained, config.device)
        bits = document_bits(model, store, seq_len=model.config.max_seq_len,
                             batch_size=config.batch_size,
                             token_order=info[run["run"]]["token_order"], docs=range(n_docs),
                             permutation_seed=permutation_seed_of(trained.meta))
        frames.append(pd.DataFrame({
            "run": run["run"], "variant": run["variant"], "size": _size(run),
            "seed": run["seed"], "doc": np.arange(n_docs), "n_bytes": n_bytes, "bits": bits,
            "story_tokens": story_tokens_per_doc(store, n_docs),
        }))
    logger.info("Scored %d validation stories under %d models", n_docs, len(runs))
    return pd.concat(frames, ignore_index=True), info


def _level(rows: pd.DataFrame) -> dict[str, float]:
    bits = rows["bits"].sum()
    return {"bpb": float(bits / rows["n_bytes"].sum()),
            "nats_per_token": float(bits * LN2 / rows["story_tokens"].sum())}


def _delta(variant: str, partner: str, group: pd.DataFrame, config: CompareConfig
           ) -> dict[str, Any]:
    spec = variants.get(variant)
    ours = group[group["variant"] == variant].sort_values("doc")
    theirs = group[group["variant"] == partner].sort_values("doc")
    # Same stories: the ratio of mean bits is the ratio of bits per byte. Same tokens
    # (token order): nats per document compare as nats per token.
    scale = LN2 if spec.delta == "token_order" else 1.0
    entry = bootstrap_delta(ours["bits"].to_numpy() * scale, theirs["bits"].to_numpy() * scale,
                            n_boot=config.n_boot, confidence=config.confidence,
                            seed=config.seed)
    level = "nats_per_token" if spec.delta == "token_order" else "bpb"
    entry.update(kind=spec.delta, backward=variant, forward=partner,
                 unit="nats per token" if spec.delta == "token_order" else "bits per byte",
                 backward_level=_level(ours)[level], forward_level=_level(theirs)[level])
    return entry


def measure_arrow_of_time(document_bits: pd.DataFrame, models: dict, compare: dict
                          ) -> dict[str, Any]:
    """Per-run levels and, per group, each variant's delta against its partner."""
    config = CompareConfig.from_params(compare)
    groups = []
    for (size, seed), group in document_bits.groupby(list(GROUP_KEYS), sort=False):
        present = list(dict.fromkeys(group["variant"]))
        levels = {v: _level(group[group["variant"] == v]) for v in present}
        deltas = []
        for variant in present:
            partner = variants.get(variant).compares_with
            if partner is None:
                continue
            if partner not in present:
                logger.warning("%s/s%s: no %s run to compare %s with", size, seed, partner,
                               variant)
                continue
            deltas.append(_delta(variant, partner, group, config))
            logger.info("%s s%s %s vs %s: %+.4f [%+.4f, %+.4f]", size, seed, variant, partner,
                        deltas[-1]["delta"], deltas[-1]["low"], deltas[-1]["high"])
        groups.append({"size": size, "seed": int(seed), "levels": levels, "deltas": deltas})
    return {"n_docs": int(document_bits["doc"].nunique()), "groups": groups, "models": models}


# ------------------------------------------------------------- generated stories


def _records(stories: StoryTable, n: int) -> list[dict]:
    records = []
    for record in iter_records(stories, "val"):
        if len(records) == n:
            break
        records.append(record)
    if not records:
        raise ValueError("the stories hold no validation records to prompt from")
    if len(records) < n:
        logger.warning("compare.n_stories=%d but only %d validation records", n, len(records))
    return records


def _prompt(source: str, variant: str, record: Mapping[str, Any], template: str) -> str:
    spec = variants.get(variant)
    if source.endswith(f"_{FREE}"):
        return ""
    if spec.instruct:
        return make_instruction(record["summary"], record["words"], record["features"], template)
    return ending_prompt(record["story"]) if spec.writes_backwards else opening_prompt(
        record["story"])


def generate_comparison_stories(
    compare: dict, tokenizer: Tokenizer, stories: StoryTable,
    *models: TrainedModel, runs: Sequence[Mapping[str, Any]],
) -> pd.DataFrame:
    """One story per (validation record, source), plus the real story, as a long table.

    ``models`` are the lead group's models (``runs``); each writes in its own mode.
    """
    config = CompareConfig.from_params(compare)
    by_variant = {run["variant"]: trained for run, trained in zip(runs, models, strict=True)}
    records = _records(stories, config.n_stories)
    # Words as one space-separated string: table previews cannot show list cells.
    bases = [{"record": i, "summary": r["summary"], "words": " ".join(r["words"]),
              "reference": r["story"]} for i, r in enumerate(records)]
    rows = [base | {"source": "real", "prompt": "", "text": r["story"], "n_new_tokens": 0,
                    "stopped": True} for base, r in zip(bases, records, strict=True)]
    sources = story_sources(list(by_variant))
    for source, (variant, _) in tqdm(sources.items(), desc="compare: generate", unit="source"):
        model = _model(by_variant[variant], config.device)
        prompts = [_prompt(source, variant, r, config.instruction_template) for r in records]
        samples = generate_batched(model, tokenizer, prompts, variant=variant,
                                   batch_size=config.generate_batch_size, seed=config.seed,
                                   max_new_tokens=config.max_new_tokens,
                                   temperature=config.temperature, top_k=config.top_k,
                                   top_p=config.top_p)
        rows += [base | {key: sample[key] for key in ("prompt", "text", "n_new_tokens", "stopped")}
                 | {"source": source} for base, sample in zip(bases, samples, strict=True)]
    logger.info("Generated %d stories from %d validation records", len(rows) - len(records),
                len(records))
    return pd.DataFrame(rows).sort_values(["record", "source"], kind="stable",
                                          ignore_index=True)


def score_coherence(
    compare: dict, tokenizer: Tokenizer, generated: pd.DataFrame, *models: TrainedModel,
    runs: Sequence[Mapping[str, Any]],
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Every story (generated or real) scored by the lead group's models that read plain
    stories (``runs``), each reading it its own way.

    A generated story can be empty (the model ended it at once): it has no bytes to score,
    so its scores are NaN and it is counted as ``n_empty`` of its source.
    """
    config = CompareConfig.from_params(compare)
    table = generated[["record", "source", "prompt", "text"]].copy()
    scored = table["text"].str.strip() != ""
    texts = list(table.loc[scored, "text"])
    table["n_bytes"] = 0
    readers = []
    for run, trained in zip(runs, models, strict=True):
        variant = run["variant"]
        readers.append(variant)
        bits, n_bytes = score_texts(_model(trained, config.device), tokenizer, texts,
                                    variant=variant, batch_size=config.batch_size)
        table[f"{variant}_bits"] = np.nan
        table.loc[scored, f"{variant}_bits"] = bits
        table.loc[scored, "n_bytes"] = n_bytes
    for variant in readers:
        table[f"{variant}_bpb"] = table[f"{variant}_bits"] / table["n_bytes"].where(scored)
    return {"readers": readers, "sources": _coherence_summary(table, readers)}, table


def _coherence_summary(table: pd.DataFrame, readers: list[str]) -> dict[str, dict[str, Any]]:
    summary = {}
    for source, rows in table.groupby("source", sort=True):
        n_bytes = rows["n_bytes"].sum()
        entry: dict[str, Any] = {"n": int(len(rows)), "n_empty": int((rows["n_bytes"] == 0).sum()),
                                 "mean_bytes": float(rows["n_bytes"].mean())}
        for variant in readers:
            # None (JSON null) when every story of the source was empty
            entry[f"{variant}_bpb"] = (float(rows[f"{variant}_bits"].sum() / n_bytes)
                                       if n_bytes else None)
        summary[str(source)] = entry
    return summary


def check_instruction_following(generated: pd.DataFrame) -> dict[str, Any]:
    """Shares of stories using all required words / naming all summary characters."""
    shares = {}
    for source, rows in generated.groupby("source", sort=True):
        records = [{"words": r.words.split(), "summary": r.summary, "story": r.reference}
                   for r in rows.itertuples(index=False)]
        shares[str(source)] = instruction_shares(list(rows["text"]), records)
    first = generated[generated["source"] == "real"].iloc[0]
    example = instruction_checks(first["text"], {"words": first["words"].split(),
                                                 "summary": first["summary"],
                                                 "story": first["reference"]})
    return {"shares": shares, "example_requirements": {k: example[k] for k in ("words",
                                                                             "characters")}}


# ------------------------------------------------------------------------ report


def build_report(arrow: dict, coherence: dict, instructions: dict, compare: dict
                 ) -> tuple[dict[str, Any], str]:
    """The comparison report as JSON and as Markdown."""
    config = CompareConfig.from_params(compare)
    settings = {k: v for k, v in sorted(config.to_dict().items()) if k != "device"}
    report = {"arrow_of_time": arrow, "coherence": coherence,
              "instruction_following": instructions, "settings": settings}
    return report, report_markdown(report)


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _pct(x: float) -> str:
    return f"{100 * x:+.2f}%"


def _delta_line(d: Mapping[str, Any]) -> str:
    return (f"| {d['backward']} vs {d['forward']} | {d['unit']} | {d['backward_level']:.4f} | "
            f"{d['forward_level']:.4f} | {_pct(d['delta'])} | "
            f"[{_pct(d['low'])}, {_pct(d['high'])}] |")


def _group_lines(group: Mapping[str, Any], models: Mapping[str, Any]) -> list[str]:
    lines = [f"### {group['size']}, seed {group['seed']}", "",
             "| variant | token order | steps | parameters | bits per byte | "
             "nats per story token |", "|---|---|---|---|---|---|"]
    for variant in (v for v in variants.NAMES if v in group["levels"]):
        level = group["levels"][variant]
        info = next(m for m in models.values() if m["variant"] == variant
                    and m["size"] == group["size"] and m["seed"] == group["seed"])
        lines.append(f"| {variant} | {info['token_order']} | {info['steps']} | "
                     f"{info['n_params']:,} | {level['bpb']:.4f} | "
                     f"{level['nats_per_token']:.4f} |")
    lines += ["", "| pair | unit | backward | forward | delta | interval |",
              "|---|---|---|---|---|---|", *(_delta_line(d) for d in group["deltas"])]
    if not group["deltas"]:
        lines.append("| (no pair of a variant and its partner in this group) | | | | | |")
    return [*lines, ""]


def report_markdown(report: Mapping[str, Any]) -> str:
    """A readable Markdown rendering of the report."""
    arrow = report["arrow_of_time"]
    settings = report["settings"]
    lines = ["# Run comparison", "",
             f"## Arrow of time ({arrow['n_docs']} validation stories, the same for every model)",
             "", "delta = E[x_bw - x_fw] / (0.5 E[x_bw + x_fw]) over documents; "
             f"{100 * settings['confidence']:.0f}% bootstrap interval over documents "
             f"({settings['n_boot']} resamples), within one training seed.", ""]
    for group in arrow["groups"]:
        lines += _group_lines(group, arrow["models"])
    readers = report["coherence"]["readers"]
    lines += ["## Coherence of generated stories (bits per byte; lower reads as more likely)",
              "", "| stories | n | empty | " + " | ".join(f"{r} model" for r in readers) + " |",
              "|---|---|---|" + "---|" * len(readers)]
    for source, row in report["coherence"]["sources"].items():
        cells = " | ".join(_num(row[f"{r}_bpb"]) for r in readers)
        lines.append(f"| {source} | {row['n']} | {row['n_empty']} | {cells} |")
    lines += ["", "## Instruction following", "",
              "| stories | n | uses all words | names the characters | both |",
              "|---|---|---|---|---|"]
    for source, row in report["instruction_following"]["shares"].items():
        lines.append(f"| {source} | {row['n']} | {row['uses_words']:.0%} | "
                     f"{row['names_characters']:.0%} | {row['both']:.0%} |")
    sources = story_sources([s for s in report["instruction_following"]["shares"]
                             if s in variants.REGISTRY])
    lines += ["", "Prompts: " + "; ".join(f"{s}: {how}" for s, (_, how) in sources.items())
              + ".", ""]
    return "\n".join(lines)
