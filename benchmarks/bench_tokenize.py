"""Tokenization throughput: encode_documents (threaded batch encode) vs a per-story loop.

Rerun: python benchmarks/bench_tokenize.py [--stories 20000] [--vocab 4096] [--threads 2]
Trains a BPE tokenizer on the same stories first (timed separately), then prints Mtok/s
of encode_documents for the forward and reversed variants and of an encode_one loop.
Stories come from backstory.corpus.storyworld when it exists, else from a synthetic maker.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from bench_text import machine, story_texts

from backstory.documents import encode_documents
from backstory.tokenizer import Tokenizer, train_tokenizer


def _records(stories: list[str]) -> list[dict]:
    return [
        {"story": s, "summary": "", "words": [], "features": [], "shard": "bench", "record": i}
        for i, s in enumerate(stories)
    ]


def _time_documents(records, tok, variant: str, threads: int) -> tuple[float, int]:
    start = time.perf_counter()
    n_tokens = sum(
        int(b.doc_lengths.sum())
        for b in encode_documents(records, tok, variant=variant, num_threads=threads)
    )
    return time.perf_counter() - start, n_tokens


def _time_loop(stories: list[str], tok: Tokenizer) -> tuple[float, int]:
    start = time.perf_counter()
    docs = [np.array([tok.bos_id, *tok.encode_one(s)], dtype=np.uint32) for s in stories]
    n_tokens = int(np.concatenate(docs).size)
    return time.perf_counter() - start, n_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stories", type=int, default=20_000)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    stories, source = story_texts(args.stories)
    print(f"machine: {machine()}")
    mb = sum(len(s.encode()) for s in stories) / 1e6
    print(f"text: {len(stories)} {source} stories, {mb:.1f} MB")

    start = time.perf_counter()
    tok = Tokenizer.from_bytes(train_tokenizer(stories, vocab_size=args.vocab))
    print(f"train_tokenizer bpe vocab {args.vocab}: {time.perf_counter() - start:.1f} s (1 thread)")

    records = _records(stories)
    loop_s, loop_tokens = _time_loop(stories, tok)
    rate = loop_tokens / loop_s / 1e6
    print(f"encode_one loop              {rate:5.2f} Mtok/s  ({loop_s:.2f} s)")
    for variant, threads in [("forward", 1), ("forward", args.threads), ("reversed", args.threads)]:
        seconds, n_tokens = _time_documents(records, tok, variant, threads)
        assert variant != "forward" or n_tokens == loop_tokens  # same documents as the loop
        print(
            f"encode_documents {variant:8s} {threads} thr {n_tokens / seconds / 1e6:5.2f} Mtok/s  "
            f"({seconds:.2f} s, {loop_s / seconds:.1f}x the loop, {n_tokens} tokens)"
        )


if __name__ == "__main__":
    main()
