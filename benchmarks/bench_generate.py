"""Generation speed with and without the KV cache, and training-step throughput.

Random weights, llama2.c's 15M shape (dim 288, 6 layers, 6 heads) with a 4096-token
vocabulary. Prints new tokens per second for cached and uncached generation at
batch 1 and 8, their ratio, and forward+backward tokens per second. On a machine
with CUDA the same figures are repeated with a bfloat16 model.

The uncached baseline is quadratic in length and dominates the run time: the
default run took 33 s on a 16-core Xeon (with an H100) and 4-5 minutes on 2 shared
AMD EPYC cores; pass --new-tokens 128 for a quicker look.

Rerun:  python benchmarks/bench_generate.py [--new-tokens 256] [--batches 1 8]
                                            [--device cpu|cuda|all] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from corpus import PRESET_HELP, preset_model
from machine import cpu_model

from backstory.lm.generate import generate
from backstory.lm.model import Transformer


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(args: argparse.Namespace, device: torch.device, dtype: torch.dtype
                ) -> Transformer:
    torch.manual_seed(0)
    cfg = preset_model(args.preset, args.vocab, max_seq_len=args.prompt_len + args.new_tokens)
    return Transformer(cfg).to(device=device, dtype=dtype).eval()


def time_generate(model: Transformer, batch: int, args: argparse.Namespace,
                  use_cache: bool, device: torch.device) -> float:
    """New tokens per second (all rows), sampling at temperature 1."""
    prompts = [[1] + [(7 * row + i) % args.vocab for i in range(args.prompt_len - 1)]
               for row in range(batch)]
    generate(model, prompts, max_new_tokens=4, use_cache=use_cache)  # warm-up
    sync(device)
    start = time.perf_counter()
    out = generate(model, prompts, max_new_tokens=args.new_tokens, use_cache=use_cache)
    sync(device)
    elapsed = time.perf_counter() - start
    return sum(len(row) for row in out) / elapsed


def time_train_step(model: Transformer, args: argparse.Namespace,
                    device: torch.device) -> float:
    """Forward+backward tokens per second at batch x seq_len."""
    model.train()
    seq = model.config.max_seq_len
    tokens = torch.randint(0, args.vocab, (args.train_batch, seq + 1), device=device)
    x, y = tokens[:, :-1], tokens[:, 1:]
    model(x, y)[1].backward()  # warm-up
    sync(device)
    start = time.perf_counter()
    for _ in range(args.train_steps):
        model.zero_grad(set_to_none=True)
        model(x, y)[1].backward()
    sync(device)
    model.eval()
    return args.train_batch * seq * args.train_steps / (time.perf_counter() - start)


def run_device(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> None:
    model = build_model(args, device, dtype)
    print(f"\n== {device.type} {str(dtype).removeprefix('torch.')}: "
          f"{model.num_parameters() / 1e6:.2f}M parameters, prompt {args.prompt_len}, "
          f"{args.new_tokens} new tokens")
    for batch in args.batches:
        cached = time_generate(model, batch, args, True, device)
        plain = time_generate(model, batch, args, False, device)
        print(f"batch {batch:3d}: cache {cached:9.1f} tok/s | no cache {plain:9.1f} tok/s | "
              f"speedup {cached / plain:5.1f}x")
    rate = time_train_step(model, args, device)
    print(f"forward+backward: {rate:,.0f} tok/s (batch {args.train_batch} x seq "
          f"{model.config.max_seq_len}, {args.train_steps} steps)")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--prompt-len", type=int, default=8)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--preset", default="stories15m", help=PRESET_HELP)
    p.add_argument("--train-batch", type=int, default=4)
    p.add_argument("--train-steps", type=int, default=2)
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (one-token decode steps are too small to share)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    print(f"torch {torch.__version__}; {os.cpu_count()} cores ({cpu_model()}), "
          f"{torch.get_num_threads()} torch threads")
    if args.device in ("cpu", "all"):
        run_device(args, torch.device("cpu"), torch.float32)
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name(0)}")
        run_device(args, torch.device("cuda"), torch.bfloat16)
    elif args.device == "cuda":
        print("CUDA not available")
    print(f"\nbenchmark wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
