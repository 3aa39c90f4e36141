"""Compare nodes: thin adapters from the runs' persisted outputs to the evaluation layer.

Every run's evaluation persisted its per-story bits on the shared evaluation stories,
and its training the bits of the first of those stories at every evaluation step; the
report reads them (``backstory.evaluation.report``) and scores nothing again. Runs are
grouped by size (preset and context); the seeds of a size are replicates. The
generated-story parts of the report (coherence, instruction following) use the lead
group: the experiment's first size at its lowest seed.

Node inputs that vary with the experiment (a few datasets per run) arrive positionally;
the pipeline binds ``runs`` (their identities, in the same order).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from tqdm import tqdm

from backstory import variants
from backstory.data.corpus.story_table import StoryTable, iter_records
from backstory.data.text import make_instruction
from backstory.data.tokenizer import Tokenizer
from backstory.evaluation import report as reporting
from backstory.evaluation.compare import CompareConfig, generate_batched, score_texts
from backstory.evaluation.curve import curve_frame
from backstory.evaluation.floor import excess_over_floor, floor_lines, floor_of
from backstory.evaluation.instructions import instruction_checks, instruction_hits
from backstory.evaluation.metrics import resolve_device
from backstory.evaluation.sampling import ending_prompt, opening_prompt, prompt_kind
from backstory.lm import orders
from backstory.lm.checkpoint import TrainedModel, build_model
from backstory.lm.generate import SamplingConfig
from backstory.lm.model import Transformer

logger = logging.getLogger(__name__)

# How a generated story is prompted, by the writer's prompt kind (sampling.prompt_kind)
# and token order.
PROMPTS = {
    ("opening", "forward"): "the story's first sentence",
    ("ending", "forward"): "the story's last sentence (written backwards)",
    ("ending", "backward"): "the story's last sentence (written backwards, in tokens)",
    ("instruction", "forward"): "an instruction naming the summary and the words",
}
FREE = "free"  # suffix of the baseline source: a completion model told nothing
PER_RUN = ("metrics", "document_bits", "eval_curve")  # what the report reads of each run


def _model(trained: TrainedModel, device: str) -> Transformer:
    return build_model(trained).to(resolve_device(device)).eval()


def lead_group(runs: Sequence[Mapping[str, Any]]) -> tuple[str, int]:
    """(size, seed) of the group whose models write the report's stories."""
    first = reporting.size_name(runs[0]["preset"], runs[0].get("context"))
    seeds = [run["seed"] for run in runs
             if reporting.size_name(run["preset"], run.get("context")) == first]
    return first, min(seeds)


def lead_runs(runs: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """The lead group's runs that take part in the generated-story comparison, by
    variant, in registry order (``_in_story_comparison``: a permuted model writes
    no stories, and one with its own tokenizer reads none of the shared tokenizer's)."""
    size, seed = lead_group(runs)
    found = {run["variant"]: run for run in runs
             if reporting.size_name(run["preset"], run.get("context")) == size
             and run["seed"] == seed}
    left_out = [v for v in found if not _in_story_comparison(v)]
    if left_out:
        logger.info("generated-story comparison leaves out %s (no reading order, or a "
                    "tokenizer of their own); their deltas are in the arrow-of-time report",
                    ", ".join(left_out))
    return {v: found[v] for v in variants.NAMES if v in found and _in_story_comparison(v)}


def _in_story_comparison(variant: str) -> bool:
    """Whether a model of ``variant`` writes stories and reads the shared tokenizer's."""
    spec = variants.get(variant)
    return orders.get(spec.token_order).writes and spec.tokenizer == "shared"


def story_readers(lead: Mapping[str, Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Lead runs that can score a plain story: every variant without an instruction."""
    return [run for variant, run in lead.items() if not variants.get(variant).instruct]


def story_sources(writers: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Generated-story sources: name -> (the variant that writes it, how it is prompted).

    Each writer writes in its own mode; the first completion writer also writes from
    nothing (``<variant>_free``), a baseline that is told nothing.
    """
    sources = {v: (v, PROMPTS[prompt_kind(v), variants.get(v).token_order]) for v in writers}
    completion = [v for v in writers if prompt_kind(v) == "opening"]
    if completion:
        sources[f"{completion[0]}_{FREE}"] = (completion[0], "nothing (BOS only)")
    return sources


# ------------------------------------------------------------------ the runs' scores


def collect_scores(*inputs: Any, runs: Sequence[Mapping[str, Any]]
                   ) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """Each run's facts, per-story bits on the shared stories and training curve.

    ``inputs`` are, for each run in ``runs`` order, its metrics, its per-story scores
    and its evaluation curve (``PER_RUN``).
    """
    width = len(PER_RUN)
    if len(inputs) != width * len(runs):
        raise ValueError(f"{len(inputs)} inputs for {len(runs)} runs ({width} per run)")
    infos, tables, curves = {}, {}, {}
    for i, run in enumerate(runs):
        metrics, documents, curve = inputs[width * i: width * (i + 1)]
        infos[run["run"]] = reporting.run_info(run, metrics)
        tables[run["run"]] = documents
        curves[run["run"]] = curve_frame(curve, f"{run['run']}.eval_curve")
    documents = reporting.document_table(infos, tables)
    logger.info("Read the scores of %d runs on %d shared validation stories", len(runs),
                documents["doc"].nunique())
    return infos, documents, reporting.curve_table(infos, curves, documents)


def measure_arrow_of_time(document_bits: pd.DataFrame, models: dict, compare: dict
                          ) -> dict[str, Any]:
    """Per size: levels per variant and seed, deltas with intervals; and the sweeps."""
    stats = CompareConfig.from_params(compare).statistics()
    arrow = reporting.arrow_of_time(document_bits, models, stats)
    arrow["sweeps"] = reporting.sweeps(arrow)
    return arrow


def measure_floor(stories: StoryTable, document_bits: pd.DataFrame, eval_curves: pd.DataFrame
                  ) -> dict[str, Any]:
    """The floor (storyworld's entropy in bits per byte) of the shared evaluation stories,
    and of the stories the training curves score; no floor for a corpus without it."""
    floor = floor_of(iter_records(stories, "val"), document_bits, set(eval_curves["doc"]))
    if floor["available"]:
        logger.info("Floor of the %d evaluation stories: %.4f bits per byte",
                    floor["n_stories"], floor["bpb"])
    else:
        logger.warning("No floor: %s", floor["reason"])
    return floor


def measure_excess(document_bits: pd.DataFrame, floor: dict, compare: dict) -> dict[str, Any]:
    """Per size: each variant's excess over the floor and each pair's excess ratio."""
    stats = CompareConfig.from_params(compare).statistics()
    return excess_over_floor(document_bits, floor, stats)


def measure_training_curves(eval_curves: pd.DataFrame, compare: dict) -> dict[str, Any]:
    """Per size and evaluation step: bpb per variant and deltas."""
    return reporting.training_curves(eval_curves, CompareConfig.from_params(compare).statistics())


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
    kind = prompt_kind(variant)
    if source.endswith(f"_{FREE}"):
        return ""
    if kind == "instruction":
        return make_instruction(record["summary"], record["words"], record["features"], template)
    return ending_prompt(record["story"]) if kind == "ending" else opening_prompt(
        record["story"])


def generate_comparison_stories(
    compare: dict, evaluate: dict, tokenizer: Tokenizer, stories: StoryTable,
    *models: TrainedModel, runs: Sequence[Mapping[str, Any]],
) -> pd.DataFrame:
    """One story per (validation record, source), plus the real story, as a long table.

    ``models`` are the lead group's models (``runs``); each writes in its own mode,
    sampled as ``evaluate`` (run_defaults.evaluate) says.
    """
    config = CompareConfig.from_params(compare)
    sampling = SamplingConfig.of(evaluate)
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
                                   batch_size=config.generate_batch_size, sampling=sampling,
                                   seed=config.seed)
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
        table[f"{variant}_bits"] = float("nan")
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


def check_instruction_following(generated: pd.DataFrame, compare: dict) -> dict[str, Any]:
    """Per source: the share of stories using all required words, naming all summary
    characters, and both, each with a bootstrap interval over the stories."""
    stats = CompareConfig.from_params(compare).statistics()
    hits = {}
    for source, rows in generated.groupby("source", sort=True):
        records = [{"words": r.words.split(), "summary": r.summary, "story": r.reference}
                   for r in rows.itertuples(index=False)]
        hits[str(source)] = instruction_hits(list(rows["text"]), records)
    first = generated[generated["source"] == "real"].iloc[0]
    example = instruction_checks(first["text"], {"words": first["words"].split(),
                                                 "summary": first["summary"],
                                                 "story": first["reference"]})
    writers = {s: w for s, (w, _) in story_sources(
        [s for s in hits if s in variants.REGISTRY]).items()}
    instructed = [s for s, w in writers.items() if variants.get(w).instruct
                  and not s.endswith(f"_{FREE}")]
    return {"shares": reporting.instruction_intervals(hits, stats), "instructed": instructed,
            "example_requirements": {k: example[k] for k in ("words", "characters")}}


# ------------------------------------------------------------------------ report


def list_imported_models(models: dict, *metrics: Mapping[str, Any],
                         externals: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The imported models' levels (``metrics``: theirs, in ``externals`` order), checked
    to be on the runs' evaluation stories."""
    shas = {info.get("eval_stories", {}).get("sha256") for info in models.values()}
    return reporting.imported_models(externals, metrics, next(iter(shas)) if len(shas) == 1
                                     else None)


def build_report(arrow: dict, training: dict, coherence: dict, instructions: dict,
                 models: dict, floor_excess: dict, compare: dict, evaluate: dict,
                 imported: dict | None = None) -> tuple[dict[str, Any], str]:
    """The comparison report as JSON and as Markdown (its settings: ``compare`` and the
    sampling of its stories, from ``evaluate``)."""
    config = CompareConfig.from_params(compare)
    used = config.to_dict() | SamplingConfig.of(evaluate).to_dict()
    settings = {k: v for k, v in sorted(used.items()) if k != "device"}
    report = {"arrow_of_time": arrow, "training_curves": training,
              "convergence": reporting.convergence(models, config.statistics()),
              "coherence": coherence, "instruction_following": instructions, "models": models,
              "machines": reporting.machines(models), "settings": settings,
              "floor": floor_excess}
    if imported:
        report["imported"] = imported
    prompts = story_sources([s for s in instructions["shares"] if s in variants.REGISTRY])
    return report, reporting.report_markdown(report, {s: how for s, (_, how) in prompts.items()},
                                             floor_lines(floor_excess))
