"""Benchmark the ingest cleaning step: throughput of ``clean_file`` and peak memory.

Rerun with::

    python benchmarks/bench_ingest.py                     # defaults, well under a minute
    python benchmarks/bench_ingest.py --records 100000 --shard-records 20000 --sizes 4 16 32

Part 1 cleans one generated JSON shard (``--records`` records of TinyStories
size, prompt included) and prints records/s and MB/s, best of ``--repeats``.
Part 2 writes ``max(--sizes)`` shards to a temporary folder, then for each
size cleans that many shards one after another in a fresh process (the way
the ingest pipeline does, one file at a time, keeping only the per-file
summary) and prints the process's peak RSS: it should stay flat as the
corpus grows, bounded by one shard.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from corpus import conf
from machine import describe as machine

from backstory.data.corpus.clean import clean_file, merge_reports
from backstory.data.corpus.readers import read_json_shard
from backstory.data.corpus.splits import SplitRule

SPLIT = SplitRule.from_params(conf("ingest")["split"])  # conf/base's split, as the pipeline's

WORDS = (
    "the a little big happy sad dog cat girl boy mom dad ball tree park sun day play run jump "
    "see want said was went found and but so then one very they he she it to with in on red "
    "blue toy friend home smile help share kind fun look good bird fly sky water boat swim"
).split()
FEATURES = ["Dialogue", "BadEnding", "MoralValue", "Twist", "Foreshadowing", "Conflict"]


def make_record(rng: random.Random) -> dict:
    """A synthetic record shaped like TinyStories_all_data (about 1.3 kB of JSON)."""
    sentences = [
        " ".join(rng.choices(WORDS, k=rng.randint(6, 14))).capitalize() + "."
        for _ in range(rng.randint(8, 16))
    ]
    story = "\n\n" + " ".join(sentences[:5]) + "\n\n" + " ".join(sentences[5:])
    words = rng.sample(WORDS, 3)
    prompt = (
        "Write a short story (3-5 paragraphs) which only uses very simple words that a 3 year "
        f'old child would understand. The story should use the verb "{words[0]}", the noun '
        f'"{words[1]}" and the adjective "{words[2]}". Remember to only use simple words!'
        "\n\nPossible story:"
    )
    return {
        "story": story,
        "instruction": {
            "prompt:": prompt,
            "words": words,
            "features": rng.sample(FEATURES, rng.randint(0, 2)),
        },
        "summary": sentences[0] + " " + sentences[-1],
        "source": rng.choice(["GPT-4", "GPT-3.5"]),
    }


def make_shard(n_records: int, seed: int) -> bytes:
    rng = random.Random(seed)
    return json.dumps([make_record(rng) for _ in range(n_records)]).encode("utf-8")



def bench_throughput(n_records: int, repeats: int) -> None:
    data = make_shard(n_records, seed=0)
    megabytes = len(data) / 1e6
    parse = min(
        _timed(lambda: sum(1 for _ in read_json_shard(data, "data00.json"))) for _ in range(repeats)
    )
    best = min(
        _timed(lambda: clean_file("data00.json", data, on_bad_record="raise", split=SPLIT))
        for _ in range(repeats)
    )
    print(f"shard: {n_records} records, {megabytes:.1f} MB")
    print(_rate("json parse only", parse, n_records, megabytes))
    print(_rate("clean_file", best, n_records, megabytes))
    real = 5_000_000 * best / n_records
    print(f"extrapolated to the real corpus (5M records): about {real / 60:.1f} min on one core")


def _rate(label: str, seconds: float, n_records: int, megabytes: float) -> str:
    return (
        f"{label:<16}: {seconds:.3f} s  "
        f"({n_records / seconds:,.0f} records/s, {megabytes / seconds:.1f} MB/s)"
    )


def _timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def bench_memory(sizes: list[int], shard_records: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench_ingest_") as folder:
        for index in range(max(sizes)):
            Path(folder, f"data{index:02d}.json").write_bytes(
                make_shard(shard_records, seed=index + 1)
            )
        shard_mb = Path(folder, "data00.json").stat().st_size / 1e6
        print(
            "\npeak RSS, cleaning shards one after another "
            f"({shard_records} records, {shard_mb:.1f} MB each):"
        )
        for size in sizes:
            result = subprocess.run(
                [sys.executable, __file__, "--rss-worker", folder, "--rss-shards", str(size)],
                check=True,
                capture_output=True,
                text=True,
            )
            figures = json.loads(result.stdout)
            print(
                f"{size:3d} shards, {figures['n_kept']:8,d} records: "
                f"peak RSS {figures['peak_mb']:.0f} MB "
                f"(after imports {figures['base_mb']:.0f} MB), {figures['seconds']:.1f} s"
            )


def rss_worker(folder: str, n_shards: int) -> None:
    """Clean ``n_shards`` shards of ``folder`` in order, keeping only the summaries."""
    base_mb = _peak_rss_mb()
    start = time.perf_counter()
    rows = []
    for index in range(n_shards):
        path = Path(folder, f"data{index:02d}.json")
        result = clean_file(path.name, path.read_bytes(), on_bad_record="raise", split=SPLIT)
        rows.append(result.summary())
        del result
    report = merge_reports(rows)
    figures = {
        "n_kept": report["n_kept"],
        "peak_mb": _peak_rss_mb(),
        "base_mb": base_mb,
        "seconds": time.perf_counter() - start,
    }
    print(json.dumps(figures))


def _peak_rss_mb() -> float:
    """Peak resident memory of this process in MB.

    Linux's VmHWM is per process image; getrusage's ru_maxrss would also count
    the parent's memory inherited through fork and exec.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1e3  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak / 1e3  # bytes on macOS, kB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--records", type=int, default=20_000, help="records in the throughput shard"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (best is kept)")
    parser.add_argument(
        "--shard-records", type=int, default=10_000, help="records per shard (memory)"
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[4, 16], help="corpus sizes in shards"
    )
    parser.add_argument("--rss-worker", help=argparse.SUPPRESS)
    parser.add_argument("--rss-shards", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_worker:
        rss_worker(args.rss_worker, args.rss_shards)
        return
    print(f"machine: {machine()}")
    bench_throughput(args.records, args.repeats)
    bench_memory(args.sizes, args.shard_records)


if __name__ == "__main__":
    main()
