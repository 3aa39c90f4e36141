"""Compare nodes: thin adapters from the variants' persisted outputs to backstory.evaluation.compare."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from backstory.data.text import make_instruction
from backstory.data.tokenizer import Tokenizer
from backstory.data.tokens import TokenStore
from backstory.evaluation.compare import (
    bootstrap_delta,
    check_same_stories,
    generate_batched,
    instruction_checks,
    instruction_shares,
    score_texts,
    story_tokens_per_doc,
    token_order_pairs,
)
from backstory.evaluation.metrics import covered_documents, document_bits, resolve_device
from backstory.evaluation.sampling import ending_prompt, opening_prompt
from backstory.lm.checkpoint import TrainedModel, build_model
from backstory.lm.model import Transformer
from backstory.pipelines.ingest.nodes import iter_stories

logger = logging.getLogger(__name__)

VARIANTS = ("forward", "reversed", "instruct", "backward")
# What each generated column holds: the variant that wrote it and how it was prompted.
SOURCES = {
    "forward": ("forward", "the story's first sentence"),
    "reversed": ("reversed", "the story's last sentence (written backwards)"),
    "instruct": ("instruct", "an instruction naming the summary and the words"),
    "forward_free": ("forward", "nothing (BOS only): a baseline that is told nothing"),
}
LN2 = math.log(2.0)


def _model(trained: TrainedModel, device: str) -> Transformer:
    return build_model(trained).to(resolve_device(device)).eval()


def _model_info(trained: TrainedModel) -> dict[str, Any]:
    lineage = trained.meta.get("lineage", {})
    return {
        "layout": lineage.get("layout"),
        "token_order": str(trained.meta.get("train_config", {}).get("token_order", "forward")),
        "steps": trained.meta.get("steps"),
        "n_params": sum(int(t.numel()) for t in trained.state_dict.values()),
    }


# ------------------------------------------------------------------ arrow of time


def score_validation_documents(
    forward_model: TrainedModel, reversed_model: TrainedModel, instruct_model: TrainedModel,
    backward_model: TrainedModel, forward_val: TokenStore, reversed_val: TokenStore,
    instruct_val: TokenStore, backward_val: TokenStore, compare: dict,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Bits of every compared validation story under each variant's model, per document.

    ``backward_val`` is forward's store: the backward model reads the same tokens.
    """
    models = dict(zip(VARIANTS, (forward_model, reversed_model, instruct_model,
                                 backward_model), strict=True))
    stores = dict(zip(VARIANTS, (forward_val, reversed_val, instruct_val, backward_val),
                      strict=True))
    n_docs = min(covered_documents(store, compare.get("max_tokens")) for store in stores.values())
    check_same_stories(stores, n_docs)
    table = pd.DataFrame({"doc": np.arange(n_docs), "n_bytes": forward_val.doc_bytes[:n_docs]})
    info = {}
    for variant in tqdm(VARIANTS, desc="compare: score validation", unit="model"):
        info[variant] = _model_info(models[variant])
        model = _model(models[variant], compare.get("device", "auto"))
        table[f"{variant}_bits"] = document_bits(
            model, stores[variant], seq_len=model.config.max_seq_len,
            batch_size=int(compare["batch_size"]), token_order=info[variant]["token_order"],
            docs=range(n_docs),
        )
        table[f"{variant}_tokens"] = story_tokens_per_doc(stores[variant], n_docs)
    logger.info("Scored %d validation stories under %d models", n_docs, len(VARIANTS))
    return table, info


def _level(table: pd.DataFrame, variant: str) -> dict[str, float]:
    bits = table[f"{variant}_bits"].sum()
    return {
        "bpb": float(bits / table["n_bytes"].sum()),
        "nats_per_token": float(bits * LN2 / table[f"{variant}_tokens"].sum()),
    }


def _delta(x_bw: np.ndarray, x_fw: np.ndarray, compare: dict) -> dict[str, Any]:
    return bootstrap_delta(x_bw, x_fw, n_boot=int(compare["n_boot"]),
                           confidence=float(compare["confidence"]), seed=int(compare["seed"]))


def measure_arrow_of_time(document_bits: pd.DataFrame, models: dict, compare: dict
                          ) -> dict[str, Any]:
    """Per-variant levels and the asymmetry deltas with their bootstrap intervals."""
    levels = {v: _level(document_bits, v) for v in VARIANTS}
    # Same stories, same bytes: the ratio of mean bits is the ratio of bits per byte.
    word_order = _delta(document_bits["reversed_bits"].to_numpy(),
                        document_bits["forward_bits"].to_numpy(), compare)
    word_order.update(backward="reversed", forward="forward", unit="bits per byte",
                      backward_level=levels["reversed"]["bpb"],
                      forward_level=levels["forward"]["bpb"])
    token_order = []
    for fw, bw in token_order_pairs(models):
        # The same tokens under both models: nats per token compare directly.
        entry = _delta(document_bits[f"{bw}_bits"].to_numpy() * LN2,
                       document_bits[f"{fw}_bits"].to_numpy() * LN2, compare)
        entry.update(backward=bw, forward=fw, unit="nats per token",
                     backward_level=levels[bw]["nats_per_token"],
                     forward_level=levels[fw]["nats_per_token"])
        token_order.append(entry)
    logger.info("Word-order delta (reversed vs forward): %+.4f [%+.4f, %+.4f]",
                word_order["delta"], word_order["low"], word_order["high"])
    return {"n_docs": int(len(document_bits)), "levels": levels, "models": models,
            "word_order": word_order, "token_order": token_order}


# ------------------------------------------------------------- generated stories


def _records(stories: dict[str, Callable[[], pd.DataFrame]], n: int) -> list[dict]:
    records = []
    for record in iter_stories(stories, "val"):
        if len(records) == n:
            break
        records.append(record)
    if not records:
        raise ValueError("the stories hold no validation records to prompt from")
    if len(records) < n:
        logger.warning("compare.n_stories=%d but only %d validation records", n, len(records))
    return records


def _prompt(source: str, record: Mapping[str, Any], template: str) -> str:
    if source == "forward":
        return opening_prompt(record["story"])
    if source == "reversed":
        return ending_prompt(record["story"])
    if source == "instruct":
        return make_instruction(record["summary"], record["words"], record["features"], template)
    return ""


def generate_comparison_stories(
    forward_model: TrainedModel, reversed_model: TrainedModel, instruct_model: TrainedModel,
    tokenizer: Tokenizer, stories: dict[str, Callable[[], pd.DataFrame]], compare: dict,
) -> pd.DataFrame:
    """One story per (validation record, source), plus the real story, as a long table."""
    device = compare.get("device", "auto")
    models = {"forward": _model(forward_model, device), "reversed": _model(reversed_model, device),
              "instruct": _model(instruct_model, device)}
    records = _records(stories, int(compare["n_stories"]))
    sampling = {key: compare[key] for key in ("max_new_tokens", "temperature", "top_k", "top_p")}
    # Words as one space-separated string: table previews cannot show list cells.
    bases = [{"record": i, "summary": r["summary"], "words": " ".join(r["words"]),
              "reference": r["story"]} for i, r in enumerate(records)]
    rows = [base | {"source": "real", "prompt": "", "text": r["story"], "n_new_tokens": 0,
                    "stopped": True} for base, r in zip(bases, records, strict=True)]
    for source, (variant, _) in tqdm(SOURCES.items(), desc="compare: generate", unit="source"):
        prompts = [_prompt(source, r, compare["instruction_template"]) for r in records]
        samples = generate_batched(models[variant], tokenizer, prompts, variant=variant,
                                   batch_size=int(compare["generate_batch_size"]),
                                   seed=int(compare["seed"]), **sampling)
        rows += [base | {key: sample[key] for key in ("prompt", "text", "n_new_tokens", "stopped")}
                 | {"source": source} for base, sample in zip(bases, samples, strict=True)]
    logger.info("Generated %d stories from %d validation records", len(rows) - len(records),
                len(records))
    return pd.DataFrame(rows).sort_values(["record", "source"], kind="stable",
                                          ignore_index=True)


def score_coherence(
    forward_model: TrainedModel, reversed_model: TrainedModel, tokenizer: Tokenizer,
    generated: pd.DataFrame, compare: dict,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Every story (generated or real) scored by the forward and by the reversed model.

    A generated story can be empty (the model ended it at once): it has no bytes to score,
    so its scores are NaN and it is counted as ``n_empty`` of its source.
    """
    table = generated[["record", "source", "prompt", "text"]].copy()
    scored = table["text"].str.strip() != ""
    texts = list(table.loc[scored, "text"])
    for form, trained in (("forward", forward_model), ("reversed", reversed_model)):
        model = _model(trained, compare.get("device", "auto"))
        bits, n_bytes = score_texts(model, tokenizer, texts, variant=form,
                                    batch_size=int(compare["batch_size"]))
        table[f"{form}_bits"] = np.nan
        table.loc[scored, f"{form}_bits"] = bits
        table["n_bytes"] = 0
        table.loc[scored, "n_bytes"] = n_bytes
    table["forward_bpb"] = table["forward_bits"] / table["n_bytes"].where(scored)
    table["reversed_bpb"] = table["reversed_bits"] / table["n_bytes"].where(scored)
    return {"sources": _coherence_summary(table)}, table


def _coherence_summary(table: pd.DataFrame) -> dict[str, dict[str, Any]]:
    summary = {}
    for source, rows in table.groupby("source", sort=True):
        n_bytes = rows["n_bytes"].sum()
        summary[str(source)] = {
            "n": int(len(rows)),
            "n_empty": int((rows["n_bytes"] == 0).sum()),
            # None (JSON null) when every story of the source was empty
            "forward_bpb": float(rows["forward_bits"].sum() / n_bytes) if n_bytes else None,
            "reversed_bpb": float(rows["reversed_bits"].sum() / n_bytes) if n_bytes else None,
            "mean_bytes": float(rows["n_bytes"].mean()),
        }
    return summary


def check_instruction_following(generated: pd.DataFrame) -> dict[str, Any]:
    """Shares of stories using all required words / naming all summary characters."""
    shares = {}
    for source in ("instruct", "forward_free", "forward", "real"):
        rows = generated[generated["source"] == source]
        records = [{"words": r.words.split(), "summary": r.summary, "story": r.reference}
                   for r in rows.itertuples(index=False)]
        shares[source] = instruction_shares(list(rows["text"]), records)
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
    report = {"arrow_of_time": arrow, "coherence": coherence,
              "instruction_following": instructions,
              "settings": {k: compare[k] for k in sorted(compare) if k != "device"}}
    return report, report_markdown(report)


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _pct(x: float) -> str:
    return f"{100 * x:+.2f}%"


def _delta_line(d: Mapping[str, Any]) -> str:
    return (f"| {d['backward']} vs {d['forward']} | {d['unit']} | {d['backward_level']:.4f} | "
            f"{d['forward_level']:.4f} | {_pct(d['delta'])} | "
            f"[{_pct(d['low'])}, {_pct(d['high'])}] |")


def report_markdown(report: Mapping[str, Any]) -> str:
    """A readable Markdown rendering of the report."""
    arrow = report["arrow_of_time"]
    lines = ["# Variant comparison", "",
             f"## Arrow of time ({arrow['n_docs']} validation stories, the same for every model)",
             "", "| variant | token order | steps | bits per byte | nats per story token |",
             "|---|---|---|---|---|"]
    for variant, level in arrow["levels"].items():
        info = arrow["models"][variant]
        lines.append(f"| {variant} | {info['token_order']} | {info['steps']} | "
                     f"{level['bpb']:.4f} | {level['nats_per_token']:.4f} |")
    d = arrow["word_order"]
    lines += ["", f"delta = E[x_bw - x_fw] / (0.5 E[x_bw + x_fw]); "
              f"{100 * d['confidence']:.0f}% bootstrap interval over documents "
              f"({d['n_boot']} resamples).", "",
              "| pair | unit | backward | forward | delta | interval |",
              "|---|---|---|---|---|---|",
              _delta_line(d), *(_delta_line(t) for t in arrow["token_order"])]
    if not arrow["token_order"]:
        lines += ["", "No backward token-order model was trained (train.token_order: backward "
                  "on a layout that also has a forward-order model), so no token-order delta."]
    lines += ["", "## Coherence of generated stories (bits per byte; lower reads as more likely)",
              "", "| stories | n | empty | forward model | reversed model |",
              "|---|---|---|---|---|"]
    for source, row in report["coherence"]["sources"].items():
        lines.append(f"| {source} | {row['n']} | {row['n_empty']} | {_num(row['forward_bpb'])} | "
                     f"{_num(row['reversed_bpb'])} |")
    lines += ["", "## Instruction following", "",
              "| stories | n | uses all words | names the characters | both |",
              "|---|---|---|---|---|"]
    for source, row in report["instruction_following"]["shares"].items():
        lines.append(f"| {source} | {row['n']} | {row['uses_words']:.0%} | "
                     f"{row['names_characters']:.0%} | {row['both']:.0%} |")
    lines += ["", "Prompts: " + "; ".join(f"{s}: {how}" for s, (_, how) in SOURCES.items()) + ".",
              ""]
    return "\n".join(lines)
