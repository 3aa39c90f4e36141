"""Decode speed: KV-cached steps (dynamic, static, compiled, CUDA graph) vs full recompute.

Random weights in llama2.c's stories15M shape (dim 288, 6 layers, 6 heads, context
512 so that an 8-token prompt plus 256 new tokens fit) with a 4096-token vocabulary.
For each batch size, prints new tokens per second of greedy generation of
``--new-tokens`` tokens with every decode step of ``backstory.lm.decode`` and with no
cache at all (the whole prefix recomputed each step), and each cached mode's speedup
over the recompute. Before timing, each mode's logits over 32 steps are checked against
the recompute's (max abs difference printed) and its greedy tokens against the dynamic
cache's (agreement printed; bf16 rounding can flip a near-tie late in a sequence).
The first generate call of every mode is a warm-up (it also compiles).

Issue 11's GPU goal: cached decoding at least 5x faster than recompute at 256 new
tokens. No GPU was available when this script was written: its CUDA figures are for
the lead to take on a GPU machine.

    python benchmarks/bench_decode.py --device cuda                 # bf16, all modes
    python benchmarks/bench_decode.py --device cpu --threads 1 --modes dynamic static
"""

from __future__ import annotations

import argparse
import time

import torch
from corpus import PRESET_HELP, preset_model
from machine import describe

from backstory.lm.decode import DECODE_STEPS, Stepper
from backstory.lm.generate import generate
from backstory.lm.model import Transformer


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> Transformer:
    torch.manual_seed(0)
    config = preset_model(args.preset, args.vocab, max_seq_len=args.context)
    return Transformer(config).to(device=device, dtype=dtype).eval()


def prompts(batch: int, length: int, vocab: int) -> list[list[int]]:
    return [[1] + [(7 * row + 3 * i) % vocab for i in range(length - 1)] for row in range(batch)]


@torch.no_grad()
def logits_gap(model: Transformer, batch: int, args: argparse.Namespace, mode: str) -> float:
    """Max |logits| difference over 32 steps between ``mode`` and a full recompute."""
    device = model.tok_embeddings.weight.device
    tokens = torch.randint(3, args.vocab, (batch, args.prompt_len + 32), device=device,
                           generator=torch.Generator(device).manual_seed(1))
    full, _ = model(tokens)
    cache = model.new_cache(batch)
    model(tokens[:, :args.prompt_len], cache=cache)
    step = Stepper(model, cache, mode)
    got = torch.stack([step(tokens[:, t:t + 1]) for t in range(args.prompt_len, tokens.shape[1])],
                      dim=1)
    return float((got.float() - full[:, args.prompt_len:].float()).abs().max())


def rate(model: Transformer, batch: int, args: argparse.Namespace, **kwargs) -> tuple[float, list]:
    device = model.tok_embeddings.weight.device
    rows = prompts(batch, args.prompt_len, args.vocab)
    generate(model, rows, max_new_tokens=4, temperature=0.0, **kwargs)  # warm-up / compile
    sync(device)
    start = time.perf_counter()
    out = generate(model, rows, max_new_tokens=args.new_tokens, temperature=0.0, **kwargs)
    sync(device)
    return sum(len(r) for r in out) / (time.perf_counter() - start), out


def run_device(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> None:
    model = build(args, device, dtype)
    modes = [m for m in args.modes if m != "cuda_graph" or device.type == "cuda"]
    print(f"\n== {device} {str(dtype).removeprefix('torch.')}: "
          f"{model.num_parameters() / 1e6:.2f}M parameters, prompt {args.prompt_len}, "
          f"{args.new_tokens} new tokens, greedy")
    for batch in args.batches:
        plain, _ = rate(model, batch, args, use_cache=False)
        print(f"batch {batch}: recompute {plain:,.1f} tok/s")
        reference = None
        for mode in modes:
            gap = logits_gap(model, batch, args, mode)
            speed, out = rate(model, batch, args, decode_step=mode)
            reference = out if reference is None else reference
            agree = sum(a == b for r, s in zip(out, reference, strict=True)
                        for a, b in zip(r, s, strict=False)) / sum(len(r) for r in reference)
            print(f"batch {batch}: {mode:>10} {speed:10,.1f} tok/s = {speed / plain:5.1f}x "
                  f"recompute | logits vs recompute max |diff| {gap:.2e} | greedy tokens "
                  f"agree with the first mode {agree:.1%}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--modes", nargs="+", choices=DECODE_STEPS, default=list(DECODE_STEPS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompt-len", type=int, default=8)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--preset", default="stories15m", help=PRESET_HELP)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.prompt_len + max(args.new_tokens, 32) > args.context:
        raise SystemExit("--prompt-len + --new-tokens must fit in --context")
    print(f"machine: {describe()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("CUDA is not available here; use --device cpu")
        print(f"GPU: {torch.cuda.get_device_name()}")
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        run_device(args, torch.device("cuda"), dtype)
    else:
        run_device(args, torch.device("cpu"), torch.float32)


if __name__ == "__main__":
    main()
