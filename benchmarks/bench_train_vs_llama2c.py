"""CPU training throughput side by side with llama2.c's train.py: same tokens, same shape.

Both sides train the shipped small shape (dim 128, 4 layers, 4 heads, 2 kv heads,
multiple_of 32, context 256, batch 16, the default run's 2048-token vocabulary) in
float32 without torch.compile, each in its own process with OMP_NUM_THREADS set, on the
default run's forward training stream: backstory reads the H5 token store, llama2.c
the same tokens written as its uint16 shard (``data/tok2048/data01.bin``; the
validation stream is ``data00.bin``, which llama2.c uses only for its step-0 loss).
Runs alternate (A B, then B A, ...) so that a change in the machine's load hits both
sides alike; every run prints the 1-minute load average before it started. Tokens/s
are measured after ``--warmup`` steps over the rest: llama2.c from the step times it
prints, backstory from its speed log. The ratio is backstory / llama2.c per pair.

llama2.c is not part of this project: pass a checkout of karpathy/llama2.c (its
train.py, model.py, tinystories.py, export.py, configurator.py and tokenizer.py are
copied to a temporary folder and run there). ``--load N`` starts N busy processes for
the duration, to measure a loaded machine on purpose. ``--clock cpu`` makes both sides
time their steps with the process's CPU time instead of the wall clock (each side's own
timer is pointed at ``time.process_time``): with one thread that is the work a step
costs whatever else the machine runs, so 1-thread ratios can be taken on a busy machine.

    python benchmarks/bench_train_vs_llama2c.py --llama2c /tmp/llama2.c
    python benchmarks/bench_train_vs_llama2c.py --llama2c /tmp/llama2.c --threads 1 2 \\
        --ours default fast --pairs 3 --steps 60 --load 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from corpus import DEFAULT_CACHE, default_stores, lm_block
from machine import core_fp32_peak, describe

from backstory.lm.model import ModelConfig, Transformer

LLAMA2C_FILES = ("train.py", "model.py", "tinystories.py", "export.py", "configurator.py",
                 "tokenizer.py")
# backstory's settings per label, over conf/base's forward block; each side gets the
# run's thread count as train.num_threads unless its settings name one. "default": as
# shipped; "fused-loss": the fused chunked cross-entropy; "2-processes": two
# DistributedDataParallel processes (gloo) of one thread each, half the batch each;
# "bf16": bfloat16 autocast (train.dtype); "compile": torch.compile (inductor's C++
# backend on the CPU; its compile time falls in the warmup steps, not in the rate).
OURS = {"default": {}, "fused-loss": {"loss_chunk": 1024},
        "2-processes": {"nproc_per_node": 2, "num_threads": 1},
        "bf16": {"dtype": "bfloat16"}, "compile": {"compile": True},
        "bf16+compile": {"dtype": "bfloat16", "compile": True}}
STEP_LINE = re.compile(r"^(\d+) \| loss [\d.]+ \| lr \S+ \| ([\d.]+)ms")


def busy() -> None:
    while True:
        pass


def run_side(command: list[str], folder: Path, threads: int) -> str:
    """Run one side in its own process with ``threads`` OpenMP threads; its stdout."""
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if done.returncode != 0:
        raise SystemExit(f"{command[:3]} failed in {folder}:\n{done.stderr[-3000:]}")
    return done.stdout


def llama2c_rate(folder: Path, threads: int, steps: int, warmup: int, shape: dict,
                 clock: str) -> float:
    # train.py times its steps with time.time(); for --clock cpu it reads process time.
    run = ("import runpy, time\n"
           + ("time.time = time.process_time\n" if clock == "cpu" else "")
           + "runpy.run_path('train.py', run_name='__main__')")
    args = [sys.executable, "-c", run, "--vocab_source=custom",
            f"--vocab_size={shape['vocab_size']}", f"--dim={shape['dim']}",
            f"--n_layers={shape['n_layers']}", f"--n_heads={shape['n_heads']}",
            f"--n_kv_heads={shape['n_kv_heads']}", f"--multiple_of={shape['multiple_of']}",
            f"--max_seq_len={shape['max_seq_len']}", f"--batch_size={shape['batch_size']}",
            "--gradient_accumulation_steps=1", f"--max_iters={steps}",
            "--eval_interval=1000000", "--eval_iters=1", "--log_interval=1",
            "--compile=False", "--device=cpu", "--dtype=float32", "--out_dir=out"]
    out = run_side(args, folder, threads)
    times = {int(m[1]): float(m[2]) / 1000 for m in map(STEP_LINE.match, out.splitlines()) if m}
    measured = [times[i] for i in range(warmup, steps)]
    return len(measured) * shape["batch_size"] * shape["max_seq_len"] / sum(measured)


OURS_WORKER = """
import json, sys, tempfile, time
if {clock!r} == "cpu":
    time.perf_counter = time.process_time  # the speed log's clock
from pathlib import Path
import pandas as pd
sys.path.insert(0, {bench!r})
from corpus import default_stores, lm_block
from backstory.lm.model import ModelConfig
from backstory.lm.training import SPEED_LOG, TrainConfig, train
stores, _ = default_stores(Path({cache!r}))
block = lm_block("forward")
train_settings = {{**block["train"], "num_threads": {threads}, "max_steps": {steps},
                  "log_interval": 1, "eval_interval": {steps}, "checkpoint_interval": {steps},
                  "warmup_steps": min(block["train"]["warmup_steps"], {steps}),
                  "eval_batches": 1, "device": "cpu", "dtype": "float32", "compile": False,
                  "resume": False, **{overrides!r}}}
model = ModelConfig(vocab_size=stores["forward"].train.vocab_size, **block["model"])
with tempfile.TemporaryDirectory() as tmp:
    train(model, TrainConfig.from_params(train_settings), stores["forward"].train,
          stores["forward"].val, Path(tmp), progress=False)
    log = pd.read_csv(Path(tmp) / SPEED_LOG).set_index("step")
start, end = log.loc[{warmup}, "elapsed_s"], log.loc[{steps}, "elapsed_s"]
tokens = ({steps} - {warmup}) * train_settings["batch_size"] * model.max_seq_len
print(json.dumps({{"tokens_per_s": tokens / (end - start)}}))
"""


def ours_rate(cache: Path, threads: int, steps: int, warmup: int, overrides: dict,
              clock: str) -> float:
    code = OURS_WORKER.format(bench=str(Path(__file__).parent), cache=str(cache), clock=clock,
                              overrides=overrides, steps=steps, warmup=warmup, threads=threads)
    out = run_side([sys.executable, "-c", code], Path.cwd(), threads)
    return json.loads(out.strip().splitlines()[-1])["tokens_per_s"]


def prepare_llama2c(checkout: Path, folder: Path, stores) -> None:
    for name in LLAMA2C_FILES:
        if not (checkout / name).exists():
            raise SystemExit(f"{checkout} has no {name}: pass a checkout of karpathy/llama2.c")
        shutil.copy(checkout / name, folder / name)
    shards = folder / "data" / f"tok{stores.train.vocab_size}"
    shards.mkdir(parents=True)
    np.asarray(stores.val.tokens, dtype=np.uint16).tofile(shards / "data00.bin")
    np.asarray(stores.train.tokens, dtype=np.uint16).tofile(shards / "data01.bin")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama2c", type=Path, required=True, help="a karpathy/llama2.c checkout")
    parser.add_argument("--threads", nargs="+", type=int, default=[2])
    parser.add_argument("--ours", nargs="+", choices=sorted(OURS), default=list(OURS))
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--load", type=int, default=0, help="busy processes to run alongside")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="time steps by the wall clock or by process CPU time")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="windows per step on both sides (default: conf/base's)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args()
    stores, _ = default_stores(args.cache)
    block = lm_block("forward")
    # conf/base names only the preset's shape; ModelConfig holds llama2.c's constants.
    model = ModelConfig(vocab_size=stores["forward"].train.vocab_size, **block["model"])
    shape = {**model.to_dict(), "n_kv_heads": model.kv_heads,
             "batch_size": args.batch_size or block["train"]["batch_size"]}
    print(f"machine: {describe()}")
    # The same shape trains on both sides, so one FLOP count per token serves both.
    flops = Transformer(model).flops_per_token(model.max_seq_len)
    peak = core_fp32_peak()
    print(f"one core's float32 peak, measured (2048^3 sgemm, 1 thread, CPU clock): "
          f"{peak / 1e9:.1f} GFLOP/s; {flops / 1e6:.2f} MFLOP per token trained")
    print(f"shape: {shape}; {args.steps} steps per run, rate over steps {args.warmup}-"
          f"{args.steps} by the {args.clock} clock; {args.load} busy processes alongside")
    hogs = [multiprocessing.Process(target=busy, daemon=True) for _ in range(args.load)]
    for hog in hogs:
        hog.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            prepare_llama2c(args.llama2c, Path(tmp), stores["forward"])
            for threads in args.threads:
                run_pairs(args, threads, Path(tmp), shape, flops / (threads * peak))
    finally:
        for hog in hogs:
            hog.terminate()


def run_pairs(args: argparse.Namespace, threads: int, folder: Path, shape: dict,
              utilisation_per_token: float) -> None:
    """Alternate the sides; print rates, ratios and CPU utilisation (tokens/s times
    FLOPs per token over the cores' float32 peak, as MFU on a GPU)."""
    rates: dict[str, list[float]] = {"llama2.c": [], **{label: [] for label in args.ours}}
    sides = ["llama2.c", *args.ours]
    for pair in range(args.pairs):
        order = sides if pair % 2 == 0 else sides[::-1]
        for side in order:
            load = os.getloadavg()[0]
            if side == "llama2.c":
                rate = llama2c_rate(folder, threads, args.steps, args.warmup, shape, args.clock)
            else:
                rate = ours_rate(args.cache, threads, args.steps, args.warmup,
                                 {**OURS[side], "batch_size": shape["batch_size"]}, args.clock)
            rates[side].append(rate)
            print(f"  {threads} thread(s), pair {pair + 1}, {side}: {rate:,.0f} tokens/s "
                  f"(load {load:.2f})", flush=True)
    base = rates["llama2.c"]
    def utilisation(rates: list[float]) -> str:
        return f"CPU utilisation {statistics.median(rates) * utilisation_per_token:.1%}"

    print(f"{threads} thread(s): llama2.c median {statistics.median(base):,.0f} tokens/s, "
          f"{utilisation(base)}")
    for label in args.ours:
        ratios = [ours / theirs for ours, theirs in zip(rates[label], base, strict=True)]
        print(f"{threads} thread(s): backstory {label} {OURS[label] or '(conf/base)'} median "
              f"{statistics.median(rates[label]):,.0f} tokens/s; ratio to llama2.c per pair "
              f"{', '.join(f'{r:.2f}' for r in ratios)}, median {statistics.median(ratios):.2f}; "
              f"{utilisation(rates[label])}")


if __name__ == "__main__":
    main()
