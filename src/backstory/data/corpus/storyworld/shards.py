"""storyworld records as JSON shards: stable bytes and the shard plan."""

from __future__ import annotations

import json

from backstory import params
from backstory.data.corpus.storyworld.stories import generate_records


def shard_bytes(seed: int, start: int, stop: int) -> bytes:
    """One JSON shard (a JSON array of records [start, stop)), UTF-8, stable bytes."""
    records = generate_records(seed, start, stop)
    # json.dumps with fixed options: key order is insertion order, so bytes are stable.
    return json.dumps(records, ensure_ascii=False).encode("utf-8")


def shard_plan(n_stories: int, shard_size: int) -> list[tuple[str, int, int]]:
    """Shard file names and record ranges: [("data00.json", 0, shard_size), ...].

    Numbers have at least two digits, like the real set, and more when there are over
    100 shards, so the names always sort in record order.
    """
    params.check_int("", "n_stories", n_stories, 0)
    params.check_int("", "shard_size", shard_size, 1)
    n_shards = -(-n_stories // shard_size)
    width = max(2, len(str(n_shards - 1)))
    return [
        (f"data{k:0{width}d}.json", k * shard_size, min((k + 1) * shard_size, n_stories))
        for k in range(n_shards)
    ]
