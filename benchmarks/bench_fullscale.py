"""Full-scale data pipeline: ingest, tokenizer training and every variant's token export.

Rerun with (about an hour on 2 cores and ~35 GB of disk for the defaults; run it niced):

    nice python benchmarks/bench_fullscale.py
    python benchmarks/bench_fullscale.py --sizes 20000 100000 --text-mb 50   # a quick look

For each corpus size a throw-away copy of the project (storyworld records in shards of
100,000, like the real data00..data49) is run through Kedro one step at a time, each
step in its own child process: acquire (generate the raw shards), clean (story table
and report), tokenizer training, then the token export of each exporting variant
(train and validation stores). A sampler adds up the resident memory of the whole
process tree (the Kedro process and its worker processes) every 0.2 s, so the peak it
prints is what the machine had to hold, workers included. Then, on the largest corpus,
the forward training export runs with 1 and with 2 worker processes in turn (the
speedup of the parallel export). Last, `<|endoftext|>` text files of `--text-mb` MB
made of real stories are cleaned into a story table (peak memory against file size).

The figures go to stdout and, with --out, to a JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from machine import describe as machine  # noqa: E402

from tests.project import make_project  # noqa: E402  (the same project copy the tests use)

VARIANTS = ("forward", "reversed", "instruct")
ENV = os.environ | {"KEDRO_DISABLE_TELEMETRY": "1", "DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "1",
                    "PYTHONPATH": str(REPO / "src")}
REAL = Path("/work/shared/data/tinystories-real")


class TreeSampler:
    """Peak of the summed RSS of a process and all its descendants, sampled in a thread."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                processes = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                return
            total = 0
            for process in processes:
                try:
                    total += process.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 1e6


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_step(command: list[str], cwd: Path) -> dict:
    """Run one child process: wall time, CPU seconds and peak RSS of its process tree.

    CPU seconds count the child and every worker it waited for; divided by the wall
    time they say how many cores the step actually got on a shared machine.
    """
    cpu_before = _children_cpu()
    started = time.perf_counter()
    log = tempfile.TemporaryFile()
    out = tempfile.TemporaryFile()
    child = subprocess.Popen(command, cwd=cwd, env=ENV, stdout=out, stderr=log)
    sampler = TreeSampler(child.pid)
    code = child.wait()
    peak = sampler.stop()
    seconds = time.perf_counter() - started
    cpu = _children_cpu() - cpu_before
    out.seek(0)
    stdout = out.read().decode(errors="replace")
    if code != 0:
        log.seek(0)
        sys.stderr.write(stdout[-3000:] + log.read().decode(errors="replace")[-6000:])
        raise SystemExit(f"step failed ({code}): {' '.join(command)}")
    return {"seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
            "peak_tree_rss_mb": round(peak), "stdout": stdout}


def kedro(*args: str) -> list[str]:
    return [sys.executable, "-m", "kedro", "run", "--env", "base", *args]


def bench_size(size: int, shard_size: int, vocab: int, max_sentences: int, work: Path,
               variants: tuple[str, ...] = VARIANTS) -> dict:
    root = make_project(work / f"project-{size}", {"parameters_ingest.yml": {
        "corpus": {"n_stories": size, "shard_size": shard_size},
        "tokenizer": {"vocab_size": vocab, "max_sentences": max_sentences},
    }})
    steps = {
        "acquire (generate shards)": kedro("--pipelines", "ingest", "--nodes", "acquire_corpus"),
        "clean (story table + report)": kedro("--pipelines", "ingest", "--nodes",
                                              "clean_corpus,report_ingest"),
        "tokenizer training": kedro("--pipelines", "ingest", "--nodes", "fit_tokenizer"),
    }
    for variant in variants:
        steps[f"export {variant} (train + val)"] = kedro(
            "--pipelines", variant, "--nodes",
            f"{variant}.export_train_tokens,{variant}.export_val_tokens")
    figures: dict = {"size": size, "steps": {}}
    for name, command in steps.items():
        result = run_step(command, root)
        result.pop("stdout")
        figures["steps"][name] = result
        print(f"  {size:>9,} | {name:<30} | {result['seconds']:>8.1f} s | "
              f"{result['cpu_seconds'] / result['seconds']:4.2f} cores | "
              f"peak {result['peak_tree_rss_mb']:>6,} MB", flush=True)
    report = json.loads((root / "data/08_reporting/ingest_report.json").read_text())
    stores = {}
    for variant in variants:
        for split in ("train", "val"):
            path = root / f"data/05_model_input/{variant}/{split}.h5"
            stores[f"{variant}.{split}"] = round(path.stat().st_size / 1e6)
    figures["n_kept"] = report["n_kept"]
    figures["store_mb"] = stores
    figures["raw_mb"] = round(sum(p.stat().st_size for p in (root / "data/01_raw/corpus").glob(
        "*.json")) / 1e6)
    figures["root"] = str(root)
    return figures


SPEEDUP = """
import json, sys, time
from backstory.data.corpus.story_table import StoryTable
from backstory.data.documents import StoryDocuments
from backstory.data.token_export import write_token_store_parallel
from backstory.data.tokenizer import Tokenizer
from backstory.data.token_format import WRITER_ATTRS
from backstory.data.token_store import TokenStore
root, workers, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
table = StoryTable(root + "/data/02_intermediate/stories")
tokenizer = Tokenizer.from_file(root + "/data/06_models/tokenizer/tokenizer.model")
import yaml  # the project's text settings, as its export node reads them
text = yaml.safe_load(open(root + "/conf/base/parameters_runs.yml"))["text"]["defaults"]
documents = StoryDocuments(table, "train", tokenizer, variant="forward",
                           **{k: v for k, v in text.items() if k != "workers"})
# The pipeline's own attributes, so the bytes can be compared with its store.
with TokenStore(root + "/data/05_model_input/forward/train.h5") as store:
    attrs = {k: v for k, v in store.attrs.items() if k not in WRITER_ATTRS}
import resource
started = time.perf_counter()
summary = write_token_store_parallel(out, documents, attrs=attrs, workers=workers)
own, workers_usage = (resource.getrusage(who) for who in
                      (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
print(json.dumps(summary | {"seconds": time.perf_counter() - started,
                            "cpu_parent": own.ru_utime + own.ru_stime,
                            "cpu_workers": workers_usage.ru_utime + workers_usage.ru_stime}))
"""


def bench_speedup(root: Path) -> dict:
    """Forward training export on 1 core (1 worker) then on 2 cores (2 workers).

    Each run is pinned with taskset to its cores, so the 1-core run cannot borrow the
    second core through sentencepiece threads.
    """
    results = {}
    for workers, cores in ((1, "0"), (2, "0,1")):
        out = root / f"data/05_model_input/speedup-{workers}.h5"
        step = run_step(["taskset", "-c", cores, sys.executable, "-c", SPEEDUP, str(root),
                         str(workers), str(out)], root)
        step |= json.loads(step.pop("stdout").strip().splitlines()[-1])
        results[workers] = step
        print(f"  forward train export, {workers} worker(s) on core(s) {cores}: "
              f"{step['seconds']:.1f} s, {step['cpu_seconds']:.1f} CPU s "
              f"({step['cpu_seconds'] / step['seconds']:.2f} cores), "
              f"peak {step['peak_tree_rss_mb']:,} MB", flush=True)
        same = out.read_bytes() == (root / "data/05_model_input/forward/train.h5").read_bytes()
        results[f"identical_to_pipeline_{workers}"] = same
        out.unlink()
    ratio = results[1]["seconds"] / results[2]["seconds"]
    # On cores of its own, the 2-worker run takes its parent's CPU time (start, assembly)
    # plus half its workers' (the partitions are shared out one at a time).
    one = results[1]["cpu_parent"] + results[1]["cpu_workers"]
    two = results[2]["cpu_parent"] + results[2]["cpu_workers"] / 2
    print(f"  speedup 2 vs 1 worker, wall time: {ratio:.2f}x; from CPU time on free cores: "
          f"{one / two:.2f}x (1 worker: {one:.1f} CPU s; 2 workers: parent "
          f"{results[2]['cpu_parent']:.1f} + workers {results[2]['cpu_workers']:.1f} CPU s); "
          f"stores identical to the pipeline's: "
          f"{results['identical_to_pipeline_1'] and results['identical_to_pipeline_2']}")
    return {"one_worker": results[1], "two_workers": results[2], "speedup": round(ratio, 2),
            "speedup_from_cpu_time": round(one / two, 2),
            "identical": results["identical_to_pipeline_1"]
            and results["identical_to_pipeline_2"]}


TEXT_INGEST = """
import sys
from pathlib import Path
from backstory.data.corpus.raw_store import write_raw_corpus
from backstory.data.corpus.sources import DEFAULT_HUB, CorpusConfig, plan_corpus
from backstory.data.corpus.splits import SplitRule
from backstory.data.corpus.story_table import CleanPlan, IngestConfig, build_story_table
source, work = Path(sys.argv[1]), Path(sys.argv[2])
config = CorpusConfig("local", 0, 0, 1, "all_data", DEFAULT_HUB, "", None, str(source))
import yaml  # conf/base's ingest settings (the benchmark runs in the repository)
conf = yaml.safe_load(Path("conf/base/parameters_ingest.yml").read_text())
ingest = IngestConfig(**conf["ingest"])
raw = write_raw_corpus(work / "raw", plan_corpus(config, workers=ingest.workers))
settings = ingest.settings(SplitRule.from_params(conf["split"]))
table = build_story_table(work / "stories", CleanPlan(raw, settings, ingest.workers))
print(table.report["n_kept"])
"""


def bench_text(megabytes: int, work: Path) -> dict:
    stories = json.loads((REAL / "stories_100.json").read_text()) + json.loads(
        (REAL / "stories_50_more.json").read_text())
    source = work / f"text-{megabytes}"
    source.mkdir()
    path = source / "TinyStories-train.txt"
    target = megabytes * 1_000_000
    with open(path, "w") as handle:
        written, index = 0, 0
        while written < target:
            chunk = "".join(f"{stories[(index + k) % len(stories)]} ({index + k})\n<|endoftext|>\n"
                            for k in range(10_000))
            handle.write(chunk)
            written += len(chunk.encode())
            index += 10_000
    size_mb = path.stat().st_size / 1e6
    step = run_step([sys.executable, "-c", TEXT_INGEST, str(source),
                     str(work / f"out-{megabytes}")], REPO)
    step.pop("stdout")
    print(f"  text file {size_mb:,.0f} MB: clean {step['seconds']:.1f} s, "
          f"peak {step['peak_tree_rss_mb']:,} MB", flush=True)
    return {"file_mb": round(size_mb), **step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 5_000_000])
    parser.add_argument("--shard-size", type=int, default=100_000)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--max-sentences", type=int, default=200_000)
    parser.add_argument("--text-mb", type=int, nargs="*", default=[600, 2200])
    parser.add_argument("--speedup-size", type=int, default=None,
                        help="only measure the 1- vs 2-core export on a corpus of this size")
    parser.add_argument("--reuse", type=Path, default=None,
                        help="with --speedup-size: a project kept by an earlier --keep run")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the projects afterwards")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"storyworld shards of {args.shard_size:,}; vocab {args.vocab}; tokenizer on the "
          f"first {args.max_sentences:,} training stories; ingest and export use every core")
    holder = None if args.workdir else tempfile.TemporaryDirectory(prefix="bench_fullscale_")
    work = args.workdir or Path(holder.name)
    work.mkdir(parents=True, exist_ok=True)
    figures: dict = {"machine": machine(), "sizes": [], "text": []}
    try:
        if args.speedup_size:
            if args.reuse:
                result = {"root": str(args.reuse)}
            else:
                result = bench_size(args.speedup_size, args.shard_size, args.vocab,
                                    args.max_sentences, work, variants=("forward",))
            figures["speedup"] = bench_speedup(Path(result["root"])) | {
                "size": args.speedup_size}
            args.sizes, args.text_mb = [], []
            if not args.keep:
                subprocess.run(["rm", "-rf", result["root"]], check=True)
        for size in args.sizes:
            result = bench_size(size, args.shard_size, args.vocab, args.max_sentences, work)
            figures["sizes"].append(result)
            if size == max(args.sizes):
                figures["speedup"] = bench_speedup(Path(result["root"]))
            if not args.keep:
                subprocess.run(["rm", "-rf", result["root"]], check=True)
        for megabytes in args.text_mb:
            figures["text"].append(bench_text(megabytes, work))
    finally:
        if holder is not None and not args.keep:
            holder.cleanup()
    if args.out:
        args.out.write_text(json.dumps(figures, indent=1) + "\n")
        print(f"figures written to {args.out}")


if __name__ == "__main__":
    main()
