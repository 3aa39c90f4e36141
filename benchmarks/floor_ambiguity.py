"""Measure the floor of the evaluation stories and how much source_bits overstate it.

Rerun with (after `kedro run --pipelines ingest`, default parameters)::

    python benchmarks/floor_ambiguity.py              # the 256 evaluation stories, ~3 min
    python benchmarks/floor_ambiguity.py --n 1000

Takes the first ``--n`` validation stories of the story table (the evaluation stories),
regenerates each from (seed, index), checks it is the table's story with the table's
``source_bits``, and prints the floor (sum of source_bits / UTF-8 bytes) and the
single-site estimate of the bits by which the derivations overstate the texts
(``storyworld.exact.single_site_excess``), with the floor that estimate corrects to.
"""

from __future__ import annotations

import argparse
import os
import time

from backstory.data.corpus import storyworld as sw
from backstory.data.corpus.story_table import StoryTable
from backstory.data.corpus.storyworld import exact


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", default="data/02_intermediate/stories")
    parser.add_argument("--n", type=int, default=256, help="evaluation stories")
    parser.add_argument("--n-stories", type=int, default=20_000, help="corpus.n_stories")
    parser.add_argument("--shard-size", type=int, default=5_000, help="corpus.shard_size")
    parser.add_argument("--seed", type=int, default=sw.DEFAULT_SEED, help="corpus.seed")
    args = parser.parse_args()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average {load}")
    starts = {name: start for name, start, _ in sw.shard_plan(args.n_stories, args.shard_size)}
    source = excess = n_bytes = 0.0
    n, began = 0, time.perf_counter()
    for row in StoryTable(args.table).records("val"):
        if n == args.n:
            break
        index = starts[row["shard"]] + row["record"]
        record = sw.generate_record(args.seed, index)
        if record["story"].strip() != row["story"] or record["source_bits"] != row["source_bits"]:
            raise SystemExit(f"{row['shard']}:{row['record']} is not record {index} of seed "
                             f"{args.seed}: pass the corpus parameters of this table")
        source += record["source_bits"]
        excess += exact.single_site_excess(args.seed, index)
        n_bytes += len(row["story"].encode("utf-8"))
        n += 1
    print(f"{n} stories, {n_bytes:,.0f} bytes, {time.perf_counter() - began:.0f} s")
    print(f"floor (source_bits): {source:,.1f} bits, {source / n:.2f} bits/story, "
          f"{source / n_bytes:.4f} bits per byte")
    print(f"single-site overstatement: {excess:,.1f} bits, {excess / n:.2f} bits/story "
          f"({100 * excess / source:.2f}%)")
    print(f"corrected floor (estimate): {(source - excess) / n_bytes:.4f} bits per byte")


if __name__ == "__main__":
    main()
