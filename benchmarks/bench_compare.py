"""What the compare pipeline costs: bootstrap, scoring texts, generating stories.

Rerun: ``python benchmarks/bench_compare.py`` (about half a minute on 2 CPU cores).
Uses a randomly initialised model of the default size (preset small in
conf/base/parameters_runs.yml: dim 128, 4 layers, context 256) and a tokenizer trained
on storyworld stories; speed
does not depend on what the weights learned. Prints one line per figure.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from machine import cpu_model

from backstory.data.corpus.storyworld import generate_record
from backstory.data.tokenizer import Tokenizer, train_tokenizer
from backstory.evaluation.compare import bootstrap_delta, generate_batched, score_texts
from backstory.evaluation.sampling import generate_story
from backstory.lm.model import ModelConfig, Transformer


def bench_bootstrap(n_docs: int, n_boot: int) -> None:
    rng = np.random.default_rng(0)
    fw = rng.gamma(20.0, 50.0, size=n_docs)
    bw = fw * rng.normal(1.01, 0.05, size=n_docs)
    start = time.perf_counter()
    ci = bootstrap_delta(bw, fw, n_boot=n_boot, seed=0)
    took = time.perf_counter() - start
    print(f"bootstrap: {n_docs} docs x {n_boot} resamples in {took:.3f} s "
          f"(delta {ci['delta']:+.4f} [{ci['low']:+.4f}, {ci['high']:+.4f}])")


def bench_scoring(model: Transformer, tokenizer: Tokenizer, texts: list[str]) -> None:
    for form in ("forward", "reversed"):
        start = time.perf_counter()
        bits, n_bytes = score_texts(model, tokenizer, texts, variant=form, batch_size=16)
        took = time.perf_counter() - start
        print(f"score_texts {form}: {len(texts)} stories, {n_bytes.sum():,} bytes in "
              f"{took:.2f} s = {len(texts) / took:.1f} stories/s, "
              f"{n_bytes.sum() / took:,.0f} bytes/s (mean {bits.sum() / n_bytes.sum():.2f} bpb)")


def bench_generation(model: Transformer, tokenizer: Tokenizer, n: int, max_new: int,
                     batch: int) -> None:
    prompt = "Once upon a time"
    start = time.perf_counter()
    new_tokens = 0
    for i in range(max(1, n // 4)):
        sample = generate_story(model, tokenizer, variant="forward", prompt=prompt,
                                max_new_tokens=max_new, temperature=1.0, seed=i)
        new_tokens += sample["n_new_tokens"]
    took = time.perf_counter() - start
    print(f"generate_story (one at a time): {max(1, n // 4)} stories, {new_tokens} new tokens "
          f"in {took:.2f} s = {new_tokens / took:,.0f} tokens/s")
    start = time.perf_counter()
    samples = generate_batched(model, tokenizer, [prompt] * n, variant="forward",
                               batch_size=batch, max_new_tokens=max_new, temperature=1.0)
    took = time.perf_counter() - start
    new_tokens = sum(s["n_new_tokens"] for s in samples)
    print(f"generate_batched (batch {batch}): {n} stories, {new_tokens} new tokens in "
          f"{took:.2f} s = {new_tokens / took:,.0f} tokens/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=100, help="stories to score")
    parser.add_argument("--stories", type=int, default=16, help="stories to generate batched")
    parser.add_argument("--batch", type=int, default=16, help="generation batch size")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, {cpu_model()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    texts = [generate_record(1337, i)["story"] for i in range(max(args.texts, 200))]
    tokenizer = Tokenizer.from_bytes(train_tokenizer(texts[:200], vocab_size=2048,
                                                     max_sentences=200))
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, dim=128, n_layers=4, n_heads=4,
                         n_kv_heads=2, max_seq_len=256, multiple_of=32)
    model = Transformer(config).eval()
    bench_bootstrap(2000, 2000)
    bench_scoring(model, tokenizer, texts[: args.texts])
    bench_generation(model, tokenizer, args.stories, args.max_new_tokens, args.batch)


if __name__ == "__main__":
    main()
