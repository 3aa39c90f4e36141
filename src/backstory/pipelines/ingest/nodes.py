"""Ingest nodes: thin adapters from Kedro data to the corpus and tokenizer modules."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pandas as pd

from backstory.data.corpus import clean, download, storyworld
from backstory.data.stories import iter_stories
from backstory.data.tokenizer import train_tokenizer

logger = logging.getLogger(__name__)

SOURCES = ("storyworld", "tinystories", "local")
LOCAL_SUFFIXES = (".json", ".txt")
STORY_COLUMNS = list(clean.TABLE_COLUMNS)


def acquire_corpus(corpus: dict) -> dict[str, Callable[[], bytes]]:
    """Name every raw corpus file and how to get its bytes (saved lazily, one at a time)."""
    source = corpus.get("source")
    if source == "storyworld":
        return _storyworld_files(corpus)
    if source == "tinystories":
        return _tinystories_files(corpus)
    if source == "local":
        return _local_files(corpus)
    raise ValueError(f"corpus.source must be one of {', '.join(SOURCES)}; got {source!r}")


def _storyworld_files(corpus: dict) -> dict[str, Callable[[], bytes]]:
    n_stories, seed = int(corpus["n_stories"]), int(corpus["seed"])
    plan = storyworld.shard_plan(n_stories, int(corpus["shard_size"]))
    logger.info("storyworld: %d stories (seed %d) in %d shards", n_stories, seed, len(plan))
    return {name: partial(storyworld.shard_bytes, seed, start, stop) for name, start, stop in plan}


def _tinystories_files(corpus: dict) -> dict[str, Callable[[], bytes]]:
    cache = Path(corpus["download_dir"])
    archive = download.download(
        corpus["url"], cache / Path(corpus["url"]).name, sha256=corpus["sha256"]
    )
    shards = download.safe_extract(archive, cache / "extracted")
    max_shards = corpus.get("max_shards")
    if max_shards is not None:
        shards = shards[: int(max_shards)]
    logger.info("tinystories: %d shards from %s", len(shards), archive)
    return {path.name: path.read_bytes for path in shards}


def _local_files(corpus: dict) -> dict[str, Callable[[], bytes]]:
    folder = corpus.get("path")
    if not folder or not Path(folder).is_dir():
        raise ValueError(f"corpus.path must name a folder of TinyStories files; got {folder!r}")
    files = sorted(p for p in Path(folder).iterdir() if p.suffix in LOCAL_SUFFIXES)
    if not files:
        raise ValueError(f"corpus.path {folder!r} holds no {' or '.join(LOCAL_SUFFIXES)} files")
    logger.info("local: %d files from %s", len(files), folder)
    return {path.name: path.read_bytes for path in files}


def _clean(name: str, load: Callable[[], bytes], ingest: dict, split: dict) -> clean.CleanResult:
    return clean.clean_file(
        name,
        load(),
        on_bad_record=ingest["on_bad_record"],
        val_fraction=float(split["val_fraction"]),
    )


def _stories_frame(result: clean.CleanResult) -> pd.DataFrame:
    return pd.DataFrame(clean.to_columns(result.records), columns=STORY_COLUMNS)


def clean_corpus(
    raw_corpus: dict[str, Callable[[], bytes]], ingest: dict, split: dict
) -> tuple[dict[str, Callable[[], pd.DataFrame]], dict]:
    """Validate every raw file into a stories table (one partition per file) and a report.

    The report pass holds one file at a time; the tables are produced again lazily
    while Kedro saves them, so memory stays bounded by one shard.
    """
    per_file = []
    for name in sorted(raw_corpus):
        result = _clean(name, raw_corpus[name], ingest, split)
        per_file.append(result.summary())
    report = clean.merge_reports(per_file)
    logger.info(
        "ingest: %d records read, %d kept (%d train, %d val), %d skipped",
        report["n_read"], report["n_kept"], report["n_train"], report["n_val"],
        report["n_skipped_records"],
    )
    tables = {
        Path(name).stem: partial(_table_of, name, raw_corpus[name], ingest, split)
        for name in raw_corpus
    }
    return tables, report


def _table_of(name: str, load: Callable[[], bytes], ingest: dict, split: dict) -> pd.DataFrame:
    return _stories_frame(_clean(name, load, ingest, split))


def fit_tokenizer(stories: dict[str, Callable[[], pd.DataFrame]], tokenizer: dict) -> bytes:
    """Train the shared sentencepiece model on the forward training stories."""
    texts = (record["story"] for record in iter_stories(stories, "train"))
    return train_tokenizer(
        texts,
        vocab_size=int(tokenizer["vocab_size"]),
        model_type=tokenizer["model_type"],
        max_sentences=int(tokenizer["max_sentences"]),
    )
