"""Reading the validated story table back: the records of one split, in a stable order."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pandas as pd


def iter_stories(stories: dict[str, Callable[[], pd.DataFrame]], split: str) -> Iterator[dict]:
    """Yield the records of one split, partition by partition, in a stable order."""
    for name in sorted(stories):
        frame = stories[name]()
        for row in frame[frame["split"] == split].itertuples(index=False):
            record = row._asdict()
            record["words"] = [str(w) for w in record["words"]]
            record["features"] = [str(f) for f in record["features"]]
            yield record
