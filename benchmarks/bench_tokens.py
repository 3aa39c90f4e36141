"""Token store throughput: H5 write, random-window reads, sequential-window reads.

Rerun with defaults (50M tokens, about 300 MB of temporary disk next to --dir):

    python benchmarks/bench_tokens.py
    python benchmarks/bench_tokens.py --tokens 10_000_000 --seq-len 512 --dir /data/tmp

Synthetic documents (random ids, about 200 tokens each, like a TinyStories story) are
made before timing, so the write figure measures the writer only. Reads run on a file
that was just written, so it is in the page cache: these are warm-cache figures.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import h5py
import numpy as np
from machine import cpu_model

from backstory.data.token_store import TokenStore
from backstory.data.token_writer import DocBatch, write_token_store
from backstory.lm.training.loop import random_windows

MEAN_DOC_TOKENS = 200  # about one TinyStories story with a 32k vocabulary



def make_batches(n_tokens: int, batch_tokens: int, vocab_size: int, seed: int) -> list[DocBatch]:
    """Synthetic DocBatches totalling `n_tokens`, story = everything after the BOS."""
    rng = np.random.default_rng(seed)
    batches, made = [], 0
    while made < n_tokens:
        size = min(batch_tokens, n_tokens - made)
        lengths = rng.integers(MEAN_DOC_TOKENS // 2, MEAN_DOC_TOKENS * 3 // 2, size=size)
        lengths = lengths[np.cumsum(lengths) <= size]
        lengths = np.append(lengths, size - lengths.sum())  # last doc takes the remainder
        tokens = rng.integers(0, vocab_size, size=size, dtype=np.uint16)
        spans = np.stack([np.minimum(lengths, 1), lengths], axis=1)
        batches.append(DocBatch(tokens, lengths, spans, lengths * 4))
        made += size
    return batches


def timed(label: str, n_tokens: int, run: Callable[[], object]) -> float:
    """Run once, print Mtok/s, return seconds."""
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    print(
        f"{label:<28} {n_tokens / 1e6:8.1f} Mtok in {seconds:7.3f} s = "
        f"{n_tokens / seconds / 1e6:8.1f} Mtok/s"
    )
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=50_000_000)
    parser.add_argument("--batch-tokens", type=int, default=2_000_000, help="tokens per DocBatch")
    parser.add_argument("--vocab-size", type=int, default=32_000)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--random-batches", type=int, default=3000)
    parser.add_argument("--dir", type=Path, default=None, help="where the file is written")
    args = parser.parse_args()

    print(f"machine: {os.cpu_count()} cores, {cpu_model()}, {platform.platform()}")
    print(f"numpy {np.__version__}, h5py {h5py.__version__}, HDF5 {h5py.version.hdf5_version}")
    batches = make_batches(args.tokens, args.batch_tokens, args.vocab_size, seed=0)
    n_docs = sum(b.doc_lengths.size for b in batches)
    print(f"corpus: {args.tokens:,} tokens, {n_docs:,} docs, {len(batches)} batches")
    attrs = {
        "variant": "forward", "layout": "bos_story", "vocab_size": args.vocab_size,
        "bos_id": 1, "eos_id": 2, "tokenizer_sha256": "0" * 64, "corpus_fingerprint": "bench",
    }  # fmt: skip

    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        path = Path(folder) / "bench.h5"
        write = partial(write_token_store, path, iter(batches), attrs=attrs)
        timed("write (spill + copy)", args.tokens, write)
        print(f"file: {path.stat().st_size / 1e6:.1f} MB")
        batches.clear()  # free the synthetic corpus before reading
        start = time.perf_counter()
        with TokenStore(path) as store:
            print(f"open: {(time.perf_counter() - start) * 1e3:.1f} ms")
            bench_reads(store, args.batch_size, args.seq_len, args.random_batches)


def bench_reads(store: TokenStore, batch_size: int, seq_len: int, random_batches: int) -> None:
    """Time random windows, one sequential pass and the whole-store story mask."""
    shape = f"{batch_size}x{seq_len}"

    def random_pass() -> None:
        for i in range(random_batches):
            random_windows(store, i, batch_size, seq_len, seed=0)

    def sequential_pass() -> None:
        for _ in store.sequential_windows(seq_len, batch_size=batch_size):
            pass

    timed(f"random windows {shape}", batch_size * (seq_len + 1) * random_batches, random_pass)
    timed(f"sequential windows {shape}", store.n_tokens, sequential_pass)
    timed("story_mask (whole store)", store.n_tokens, store.story_mask)


if __name__ == "__main__":
    main()
