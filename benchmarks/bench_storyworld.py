"""Benchmark the storyworld generator: stories per second on one core, and corpus variety.

Rerun with:

    python benchmarks/bench_storyworld.py              # 20,000 stories, best of 3
    python benchmarks/bench_storyworld.py --n 5000 --repeats 5

Prints the machine (cores, CPU model, load), the generation rate (wall clock and CPU time
of this single-threaded process; the best of the repeats, since other work on the machine
only ever slows a run down), the JSON shard rate, and corpus_stats of the default seed.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

from machine import cpu_model

from backstory.data.corpus import storyworld as sw


def timed(fn, repeats: int) -> tuple[float, float]:
    """Best wall-clock and best CPU seconds of `repeats` calls of fn."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="stories per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs; the best one counts")
    parser.add_argument("--seed", type=int, default=sw.DEFAULT_SEED)
    args = parser.parse_args()

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"machine: {os.cpu_count()} cores, {cpu_model()}, load average {load}")
    print(f"python {platform.python_version()}, one process, one thread")

    wall, cpu = timed(lambda: sw.generate_records(args.seed, 0, args.n), args.repeats)
    print(
        f"generate_records: {args.n} stories, best of {args.repeats}: "
        f"{args.n / wall:,.0f} stories/s wall, {args.n / cpu:,.0f} stories/s CPU time"
    )

    size = len(sw.shard_bytes(args.seed, 0, args.n))
    wall, _ = timed(lambda: sw.shard_bytes(args.seed, 0, args.n), 1)
    print(
        f"shard_bytes: {args.n} stories, {size / 1e6:.1f} MB, {args.n / wall:,.0f} stories/s, "
        f"{size / 1e6 / wall:.1f} MB/s"
    )

    stats = sw.corpus_stats(sw.generate_records(args.seed, 0, args.n))
    print(f"corpus_stats(seed={args.seed}, n={stats['n']}):")
    print(f"  distinct_story_share {stats['distinct_story_share']:.4f}")
    print(f"  distinct_words {stats['distinct_words']}")
    print(f"  n_plot_shapes_used {stats['n_plot_shapes_used']} of {len(sw.PLOTS)}")
    print(f"  words_per_story_mean {stats['words_per_story_mean']:.1f}")
    print(f"  feature_counts {stats['feature_counts']}")


if __name__ == "__main__":
    main()
