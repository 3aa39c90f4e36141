"""Variety figures of storyworld (or any TinyStories-format) records."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping

from backstory.data.corpus.storyworld.engine import FEATURES
from backstory.data.corpus.storyworld.plots import classify_plot

_WORD_RE = re.compile(r"[a-z]+(?:'[a-z]+)?")

def words_of(text: str) -> list[str]:
    """Lowercased word tokens (letters with an inner apostrophe), as counted by corpus_stats."""
    return _WORD_RE.findall(text.lower())


def corpus_stats(records: Iterable[Mapping]) -> dict:
    """Variety figures of records, generated or read back from a shard.

    Returns n, distinct_story_share (distinct stripped stories / n), distinct_words
    (lower-cased word tokens, see words_of), n_plot_shapes_used (plots that classify_plot
    finds in the summaries; other sources' summaries count for none),
    words_per_story_mean and feature_counts (per name in FEATURES).
    """
    n = 0
    stories: set[str] = set()
    vocab: set[str] = set()
    plots: set[str] = set()
    n_words = 0
    features: Counter[str] = Counter()
    for n, record in enumerate(records, start=1):
        story = record.get("story") if isinstance(record, Mapping) else None
        if not isinstance(story, str):
            raise ValueError(f"record {n - 1} has no 'story' string: {str(record)[:80]!r}")
        stories.add(story.strip())
        tokens = words_of(story)
        n_words += len(tokens)
        vocab.update(tokens)
        plot = classify_plot(record.get("summary", ""))
        if plot:
            plots.add(plot)
        features.update(record.get("instruction", {}).get("features", []))
    return {
        "n": n,
        "distinct_story_share": len(stories) / n if n else 0.0,
        "distinct_words": len(vocab),
        "n_plot_shapes_used": len(plots),
        "words_per_story_mean": n_words / n if n else 0.0,
        "feature_counts": {f: features.get(f, 0) for f in FEATURES},
    }
