"""The default run's corpus and token stores, built once for the benchmarks and cached.

The settings are read from conf/base (corpus, split, tokenizer and the forward block's
text settings), and the domain code the ingest and export nodes call builds the stores:
storyworld shards -> clean_file -> tokenizer on the training stories -> encode_documents
-> H5 token stores, for the ``forward`` and ``reversed`` variants. The stores land in
``<cache>/<hash of the settings>/`` and are reused by later benchmark runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from backstory import experiment, variants
from backstory.data.corpus import clean, storyworld
from backstory.data.corpus.splits import SplitRule
from backstory.data.documents import encode_documents
from backstory.data.token_store import TokenStore
from backstory.data.token_writer import write_token_store
from backstory.data.tokenizer import Tokenizer, TokenizerConfig
from backstory.lm.model import ModelConfig

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf" / "base"
VARIANTS = ("forward", "reversed")
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "backstory-bench"  # --cache of the benchmarks
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stores:
    train: TokenStore
    val: TokenStore


def conf(name: str) -> dict:
    """One conf/base parameters file as a dict."""
    return yaml.safe_load((CONF / f"parameters_{name}.yml").read_text())


def lm_block(variant: str, preset: str = "small") -> dict:
    """The run ``<variant>.<preset>.s1337``'s merged settings as conf/base declares them
    (model, train, evaluate; ``backstory.experiment``'s one merge), plus its text block."""
    parameters = {}
    for path in sorted(CONF.glob("parameters*.yml")):
        parameters.update(yaml.safe_load(path.read_text()) or {})
    run = experiment.RunSpec(variant, preset, 1337)
    block = experiment.run_settings(parameters, run)
    block["text"] = experiment.text_settings(parameters, run.token_source)
    return block


def preset_model(preset: str, vocab_size: int, **changes: Any) -> ModelConfig:
    """The model of ``preset`` as conf/base declares it (its merged run settings), with a
    benchmark's own ``changes`` (e.g. a longer context)."""
    return ModelConfig(vocab_size=vocab_size, **(lm_block("forward", preset)["model"] | changes))


PRESET_HELP = "model shape: a preset of conf/base/parameters_runs.yml"


def default_stores(cache: Path) -> tuple[dict[str, Stores], Tokenizer]:
    """Forward and reversed train/val stores of the default run's corpus (built if absent)."""
    ingest = conf("ingest")
    corpus = ingest["corpus"]
    if corpus["source"] != "storyworld":
        raise ValueError("the benchmark corpus is the storyworld default; conf/base has "
                         f"corpus.source={corpus['source']!r}")
    settings = {"corpus": corpus, "split": ingest["split"], "tokenizer": ingest["tokenizer"],
                "text": {v: lm_block(v)["text"] for v in VARIANTS}}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(cache) / f"corpus-{key}"
    paths = {(v, s): folder / f"{v}-{s}.h5" for v in VARIANTS for s in ("train", "val")}
    tokenizer_path = folder / "tokenizer.model"
    if not (tokenizer_path.exists() and all(p.exists() for p in paths.values())):
        _build(folder, settings, paths, tokenizer_path)
    tokenizer = Tokenizer.from_bytes(tokenizer_path.read_bytes())
    stores = {v: Stores(TokenStore(paths[v, "train"]), TokenStore(paths[v, "val"]))
              for v in VARIANTS}
    return stores, tokenizer


def _build(folder: Path, settings: dict, paths: dict, tokenizer_path: Path) -> None:
    start = time.perf_counter()
    corpus, split = settings["corpus"], settings["split"]
    records, summaries = [], []
    plan = storyworld.shard_plan(int(corpus["n_stories"]), int(corpus["shard_size"]))
    for name, first, stop in sorted(plan):  # the pipeline reads shards in name order
        result = clean.clean_file(name, storyworld.shard_bytes(int(corpus["seed"]), first, stop),
                                  on_bad_record="raise", split=SplitRule.from_params(split))
        summaries.append(result.summary())
        records += pd.DataFrame(clean.to_columns(result.records)).to_dict("records")
    report = clean.merge_reports(summaries)
    model = TokenizerConfig.from_params(settings["tokenizer"]).train(
        r["story"] for r in records if r["split"] == "train")
    tokenizer = Tokenizer.from_bytes(model)
    folder.mkdir(parents=True, exist_ok=True)
    for variant in VARIANTS:
        text = settings["text"][variant]
        for part in ("train", "val"):
            chosen = (r for r in records if r["split"] == part)
            attrs = {"variant": variant, "split": part,
                     "layout": variants.get(variant).layout,
                     "vocab_size": tokenizer.vocab_size, "bos_id": tokenizer.bos_id,
                     "eos_id": tokenizer.eos_id, "tokenizer_sha256": tokenizer.sha256,
                     "corpus_fingerprint": report["corpus_fingerprint"]}
            batches = encode_documents(chosen, tokenizer, variant=variant,
                                       templates=text["templates"], seed=int(text["seed"]),
                                       batch_size=int(text["batch_size"]), num_threads=1)
            write_token_store(paths[variant, part], batches, attrs=attrs)
    tokenizer_path.write_bytes(model)
    logger.warning("built the benchmark corpus in %s (%.0f s)", folder,
                   time.perf_counter() - start)
