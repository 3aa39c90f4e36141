"""Evaluation throughput: tokens per second of evaluate_loss and document_bits.

Rerun with defaults (the project's default model, preset small from conf/base, vocab
4096; 50k validation tokens; CPU, plus CUDA when present):

    python benchmarks/bench_evaluate.py
    python benchmarks/bench_evaluate.py --tokens 1_000_000 --preset stories15m \
        --vocab 32000 --devices cuda

The store holds synthetic documents (random ids, 100-300 tokens, like TinyStories
stories); a random-init model costs the same per token as a trained one. Each figure
is the best of --repeats runs after a one-batch warm-up.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from corpus import PRESET_HELP, preset_model
from machine import cpu_model as cpu_name

from backstory.data.token_store import TokenStore
from backstory.data.token_writer import DocBatch, write_token_store
from backstory.evaluation.metrics import document_bits, evaluate_loss
from backstory.lm.model import Transformer


def synthetic_store(path: Path, n_tokens: int, vocab_size: int, seed: int) -> TokenStore:
    """BOS + random story documents of 100-300 tokens, n_tokens in all."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(100, 301, size=n_tokens // 100 + 1)
    lengths = lengths[: int(np.searchsorted(np.cumsum(lengths), n_tokens)) + 1]
    tokens = rng.integers(3, vocab_size, size=int(lengths.sum()), dtype=np.uint16)
    tokens[np.cumsum(lengths) - lengths] = 1  # each document starts with BOS
    spans = np.stack([np.ones_like(lengths), lengths], axis=1)
    batch = DocBatch(tokens, lengths, spans, (lengths - 1) * 4)  # ~4 bytes per token
    attrs = {"variant": "forward", "layout": "bos+story", "vocab_size": vocab_size,
             "bos_id": 1, "eos_id": 2, "tokenizer_sha256": "bench", "corpus_fingerprint": "bench"}
    write_token_store(path, [batch], attrs=attrs)
    return TokenStore(path)


def best_seconds(run: Callable[[], object], warm_up: Callable[[], object], repeats: int,
                 device: str) -> float:
    warm_up()  # allocator, kernels, page cache: kept out of the figure
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_device(args: argparse.Namespace, store: TokenStore, device: str) -> None:
    torch.manual_seed(0)
    config = preset_model(args.preset, args.vocab)
    model = Transformer(config).to(device).eval()
    label = torch.cuda.get_device_name() if device == "cuda" else f"cpu x{torch.get_num_threads()}"
    print(f"[{device}] {label}; model {model.num_parameters() / 1e6:.2f}M params")
    one_batch = args.seq_len * args.batch_size
    for order in ("forward", "backward"):
        def run(order: str = order, max_tokens: int | None = None) -> object:
            return evaluate_loss(model, store, seq_len=args.seq_len, batch_size=args.batch_size,
                                 max_tokens=max_tokens, token_order=order)
        seconds = best_seconds(run, lambda run=run: run(max_tokens=one_batch), args.repeats,
                               device)
        print(f"  evaluate_loss {order:8s}: {store.n_tokens / seconds:12,.0f} tokens/s "
              f"({seconds:.2f} s for {store.n_tokens:,} tokens)")

    def bits(docs: list[int] | None = None) -> object:
        return document_bits(model, store, seq_len=args.seq_len, batch_size=args.batch_size,
                             docs=docs)
    seconds = best_seconds(bits, lambda: bits(list(range(args.batch_size))), args.repeats, device)
    print(f"  document_bits forward : {store.n_tokens / seconds:12,.0f} tokens/s "
          f"({seconds:.2f} s, {store.n_docs:,} documents)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=50_000)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--preset", default="small", help=PRESET_HELP)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--devices", nargs="+", default=None,
                        help="default: cpu, and cuda when available")
    args = parser.parse_args()
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"machine: {os.cpu_count()} cores, {cpu_name()}; torch {torch.__version__}")
    args.seq_len = preset_model(args.preset, args.vocab).max_seq_len
    print(f"settings: {args.tokens:,} tokens, seq_len {args.seq_len}, batch {args.batch_size}, "
          f"vocab {args.vocab}, preset {args.preset}")
    with tempfile.TemporaryDirectory() as tmp:
        store = synthetic_store(Path(tmp) / "val.h5", args.tokens, args.vocab, seed=0)
        with torch.inference_mode():
            for device in devices:
                bench_device(args, store, device)
        store.close()


if __name__ == "__main__":
    main()
