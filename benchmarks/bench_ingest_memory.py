"""Peak memory of ingest + H5 export through Kedro at two corpus sizes.

Runs `kedro run --pipeline reversed --to-outputs reversed.train_tokens,reversed.val_tokens`
in a throw-away copy of the project for each size and prints the child process's peak
RSS. Ingest holds one raw shard at a time and the export streams documents into the H5
writer, so the peak should stay flat as the corpus grows. Tokenizer training holds its
training stories in memory up to `tokenizer.max_sentences`, so that cap is set below
both sizes to measure the rest.

    python benchmarks/bench_ingest_memory.py
    python benchmarks/bench_ingest_memory.py --sizes 20000 80000 --shard-size 5000
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.project import make_project  # noqa: E402  (the same project copy the tests use)


def peak_rss_of_run(root: Path) -> tuple[float, float]:
    """Run the export slice in `root`; return (peak RSS in MB, seconds)."""
    command = [sys.executable, "-m", "kedro", "run", "--env", "base", "--pipelines", "reversed",
               "--to-outputs", "reversed.train_tokens,reversed.val_tokens"]
    env = os.environ | {"KEDRO_DISABLE_TELEMETRY": "1", "DVC_NO_ANALYTICS": "1"}
    started = time.perf_counter()
    # A fresh interpreter per size: getrusage(RUSAGE_CHILDREN) keeps the largest child.
    probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
             "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", probe, *command], cwd=root, env=env,
                         check=True, capture_output=True, text=True)
    return int(out.stdout.strip()) / 1024, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 40_000])
    parser.add_argument("--shard-size", type=int, default=5_000)
    parser.add_argument("--max-sentences", type=int, default=5_000)
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}; "
          f"shards of {args.shard_size:,} stories; tokenizer.max_sentences "
          f"{args.max_sentences:,}")
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            params = {"parameters_ingest.yml": {
                "corpus": {"n_stories": size, "shard_size": args.shard_size},
                "tokenizer": {"max_sentences": args.max_sentences},
            }}
            root = make_project(Path(tmp) / "project", params)
            peak, seconds = peak_rss_of_run(root)
            tokens = sum(p.stat().st_size for p in (root / "data/05_model_input").rglob("*.h5"))
            print(f"{size:>7,} stories: peak RSS {peak:,.0f} MB, {seconds:.1f} s, "
                  f"H5 files {tokens / 1e6:.1f} MB")
    print(f"(this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")


if __name__ == "__main__":
    main()
