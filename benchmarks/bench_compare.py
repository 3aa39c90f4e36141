"""What the compare pipeline costs: bootstrap, scoring texts, generating stories.

Rerun: ``python benchmarks/bench_compare.py`` (about half a minute on 2 CPU cores).
Uses a randomly initialised model of the default size (preset small in
conf/base/parameters_runs.yml), the compare and sampling settings of conf/base (at
temperature 1), and a tokenizer trained on storyworld stories; speed does not depend on
what the weights learned. Prints one line per figure.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from corpus import conf, lm_block
from machine import cpu_model

from backstory.data.corpus.storyworld import generate_record
from backstory.data.tokenizer import Tokenizer, TokenizerConfig
from backstory.evaluation.compare import generate_batched, score_texts
from backstory.evaluation.sampling import generate_story
from backstory.evaluation.stats import bootstrap_delta
from backstory.lm.generate import SamplingConfig
from backstory.lm.model import ModelConfig, Transformer


def bench_bootstrap(n_docs: int, compare: dict) -> None:
    rng = np.random.default_rng(0)
    fw = rng.gamma(20.0, 50.0, size=n_docs)
    bw = fw * rng.normal(1.01, 0.05, size=n_docs)
    start = time.perf_counter()
    n_boot = compare["n_boot"]
    ci = bootstrap_delta(bw, fw, n_boot=n_boot, confidence=compare["confidence"],
                         seed=compare["seed"])
    took = time.perf_counter() - start
    print(f"bootstrap: {n_docs} docs x {n_boot} resamples in {took:.3f} s "
          f"(delta {ci['delta']:+.4f} [{ci['low']:+.4f}, {ci['high']:+.4f}])")


def bench_scoring(model: Transformer, tokenizer: Tokenizer, texts: list[str],
                  batch_size: int) -> None:
    for form in ("forward", "reversed"):
        start = time.perf_counter()
        bits, n_bytes = score_texts(model, tokenizer, texts, variant=form, batch_size=batch_size)
        took = time.perf_counter() - start
        print(f"score_texts {form}: {len(texts)} stories, {n_bytes.sum():,} bytes in "
              f"{took:.2f} s = {len(texts) / took:.1f} stories/s, "
              f"{n_bytes.sum() / took:,.0f} bytes/s (mean {bits.sum() / n_bytes.sum():.2f} bpb)")


def bench_generation(model: Transformer, tokenizer: Tokenizer, n: int,
                     sampling: SamplingConfig, batch: int) -> None:
    prompt = "Once upon a time"
    start = time.perf_counter()
    new_tokens = 0
    for i in range(max(1, n // 4)):
        sample = generate_story(model, tokenizer, variant="forward", prompt=prompt,
                                **sampling.to_dict(), seed=i)
        new_tokens += sample["n_new_tokens"]
    took = time.perf_counter() - start
    print(f"generate_story (one at a time): {max(1, n // 4)} stories, {new_tokens} new tokens "
          f"in {took:.2f} s = {new_tokens / took:,.0f} tokens/s")
    start = time.perf_counter()
    samples = generate_batched(model, tokenizer, [prompt] * n, variant="forward",
                               batch_size=batch, sampling=sampling, seed=0)
    took = time.perf_counter() - start
    new_tokens = sum(s["n_new_tokens"] for s in samples)
    print(f"generate_batched (batch {batch}): {n} stories, {new_tokens} new tokens in "
          f"{took:.2f} s = {new_tokens / took:,.0f} tokens/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=100, help="stories to score")
    parser.add_argument("--stories", type=int, default=16, help="stories to generate batched")
    parser.add_argument("--batch", type=int, help="generation batch size (default: conf's "
                        "compare.generate_batch_size)")
    parser.add_argument("--max-new-tokens", type=int, help="default: conf's "
                        "run_defaults.evaluate.max_new_tokens")
    args = parser.parse_args()
    compare = conf("compare")["compare"]
    small = lm_block("forward", "small")
    sampling = SamplingConfig.of(small["evaluate"] | {"temperature": 1.0} | (
        {"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else {}))
    print(f"machine: {os.cpu_count()} cores, {cpu_model()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    texts = [generate_record(1337, i)["story"] for i in range(max(args.texts, 200))]
    tokenizer = Tokenizer.from_bytes(TokenizerConfig.from_params(
        conf("ingest")["tokenizer"] | {"max_sentences": 200}).train(texts[:200]))
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, **small["model"])).eval()
    bench_bootstrap(2000, compare)
    bench_scoring(model, tokenizer, texts[: args.texts], compare["batch_size"])
    bench_generation(model, tokenizer, args.stories, sampling,
                     args.batch or compare["generate_batch_size"])


if __name__ == "__main__":
    main()
