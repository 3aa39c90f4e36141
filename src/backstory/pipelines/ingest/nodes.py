"""Ingest nodes: thin adapters from Kedro parameters to the corpus and tokenizer modules.

The heavy work runs in the datasets' ``save``: ``raw_corpus`` writes the files of the
plan ``acquire_corpus`` returns and ``stories`` cleans the raw corpus into the story
table (in parallel, resumable, committed as one unit); ``report_ingest`` then copies
the report the table committed with its partitions.
"""

from __future__ import annotations

import logging

from backstory.data.corpus.raw_store import RawCorpus, RawCorpusPlan
from backstory.data.corpus.sources import CorpusConfig, plan_corpus
from backstory.data.corpus.splits import SplitRule
from backstory.data.corpus.story_table import CleanPlan, IngestConfig, StoryTable, story_texts
from backstory.data.tokenizer import TokenizerConfig
from backstory.params import build

logger = logging.getLogger(__name__)


def acquire_corpus(corpus: dict, ingest: dict) -> RawCorpusPlan:
    """The raw files of the configured corpus (published files are downloaded first)."""
    config = build(CorpusConfig, corpus, "corpus")
    return plan_corpus(config, workers=build(IngestConfig, ingest, "ingest").workers)


def clean_corpus(raw_corpus: RawCorpus, ingest: dict, split: dict) -> CleanPlan:
    """How to clean the raw corpus into the story table (the stories dataset runs it)."""
    config = build(IngestConfig, ingest, "ingest")
    return CleanPlan(raw_corpus, config.settings(SplitRule.from_params(split)), config.workers)


def report_ingest(stories: StoryTable) -> dict:
    """The ingest report, exactly as the story table committed it."""
    report = stories.report
    logger.info("corpus fingerprint %s; split %s", report["corpus_fingerprint"][:16],
                report["split"]["strategy"])
    return report


def fit_tokenizer(stories: StoryTable, tokenizer: dict) -> bytes:
    """The shared sentencepiece model, trained on the training stories as written."""
    return TokenizerConfig.from_params(tokenizer).train(story_texts(stories, "train"))
