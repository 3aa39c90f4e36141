"""storyworld: a seeded generator of simple children's stories in the TinyStories format.

First runs, CI and offline users cannot reach the Hugging Face hub, so the project ships
this generator. It writes records in exactly the TinyStories_all_data JSON shard schema
(note the key ``"prompt:"`` with its colon)::

    {"story": ..., "instruction": {"prompt:": ..., "words": [verb, noun, adjective],
     "features": [...]}, "summary": ..., "source": "storyworld"}

How a story is made: record ``i`` draws everything from ``random.Random(f"{seed}:{i}")``,
so it depends only on ``(seed, i)`` and shards can be made lazily, in any order. A plan
picks a plot shape (``PLOTS``), a cast, an object, a place, the three words and the
features; the plot's teller then writes paragraphs from sentence templates. The metadata
is true of the text: the three words appear verbatim, and each listed feature leaves its
marker (see ``FEATURE_MARKERS``) while unlisted ones leave none of theirs.

The package: ``engine`` (the teller and the drawing helpers), ``fields`` (cast, object,
place and incidental draws), ``plots`` (the fourteen plot
bodies), ``stories`` (planning and writing one record), ``shards`` (JSON shard bytes and
the shard plan), ``stats`` (variety figures) and ``lexicon`` (the word lists).
"""

from __future__ import annotations

from backstory.data.corpus.storyworld import (
    engine,
    fields,
    lexicon,
    plots,
    shards,
    stats,
    stories,
)
from backstory.data.corpus.storyworld.engine import (
    CONFLICT_WORDS,
    DEFAULT_SEED,
    FEATURE_MARKERS,
    FEATURES,
    FORESHADOW_MARKER,
    HAPPY_WORDS,
    MORAL_MARKER,
    SAD_WORDS,
    SOURCE,
    TWIST_MARKERS,
    Plot,
)
from backstory.data.corpus.storyworld.plots import PLOT_NAMES, PLOTS, classify_plot
from backstory.data.corpus.storyworld.shards import shard_bytes, shard_plan
from backstory.data.corpus.storyworld.stats import corpus_stats, words_of
from backstory.data.corpus.storyworld.stories import (
    StoryPlan,
    generate_record,
    generate_records,
    plan_story,
)

# The generator's source, module by module: its digest is part of every shard's identity.
MODULES = (engine, lexicon, fields, plots, stories, shards)

__all__ = [
    "CONFLICT_WORDS", "DEFAULT_SEED", "FEATURE_MARKERS", "FEATURES", "FORESHADOW_MARKER",
    "HAPPY_WORDS", "MODULES", "MORAL_MARKER", "PLOTS", "PLOT_NAMES", "SAD_WORDS", "SOURCE",
    "TWIST_MARKERS", "Plot", "StoryPlan", "classify_plot", "corpus_stats", "generate_record",
    "generate_records", "plan_story", "shard_bytes", "shard_plan", "stats", "words_of",
]
