"""Tokenization throughput: per-story loop, sentencepiece batch, and the chunk cache.

Rerun: python benchmarks/bench_tokenize.py [--stories 20000] [--vocab 4096] [--threads 2]
Trains a BPE tokenizer on the stories first (timed separately), then prints Mtok/s on the
same stories, forward and word-reversed, of:
  encode_one loop        one sentencepiece call per story (the baseline)
  sentencepiece batch    Tokenizer(cache_entries=0).encode_arrays: threaded batch encode
  cache cold / warm      Tokenizer.encode_arrays with the chunk cache, first and second pass
  cache, unseen half     the second half of the stories, cache warmed on the first half
  encode_documents       the [BOS] + story documents as the pipeline builds them
Every method's ids are checked equal to the loop's. Batches of 1024 stories, as the
pipeline uses. The cached path runs on one core (sentencepiece threads only encode new
chunks); the machine is shared, so the load average is printed before and after.
Stories come from backstory.data.corpus.storyworld when it exists, else from a synthetic maker.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np
from bench_text import machine, story_texts
from corpus import conf

from backstory.data.documents import encode_documents
from backstory.data.text import reverse_words
from backstory.data.tokenizer import Tokenizer, TokenizerConfig

TEXT = conf("runs")["text"]["defaults"]  # conf/base's, as the export's
BATCH = TEXT["batch_size"]


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def _records(stories: list[str]) -> list[dict]:
    return [
        {"story": s, "summary": "", "words": [], "features": [], "shard": "bench", "record": i}
        for i, s in enumerate(stories)
    ]


def _batched(encode: Callable[[list[str]], list[np.ndarray]], texts: list[str]) -> np.ndarray:
    """All ids of ``texts``, encoded BATCH stories at a time, as one array."""
    parts = [a for i in range(0, len(texts), BATCH) for a in encode(texts[i : i + BATCH])]
    return np.concatenate(parts)


def _timed(run: Callable[[], np.ndarray]) -> tuple[float, float, np.ndarray]:
    """(wall seconds, process CPU seconds, result) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = run()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def _report(name: str, wall: float, cpu: float, n_tokens: int, base: float) -> None:
    # CPU seconds count every thread of this process: the rate per core actually got.
    print(
        f"  {name:26s} {n_tokens / wall / 1e6:6.2f} Mtok/s  ({wall:5.2f} s wall, "
        f"{cpu / wall:4.2f} cores busy, {n_tokens / cpu / 1e6:5.2f} Mtok per CPU s, "
        f"{base / wall:5.1f}x the loop)"
    )


def _bench_variant(texts: list[str], model: bytes, threads: int) -> None:
    tok = Tokenizer.from_bytes(model)
    wall, cpu, expected = _timed(
        lambda: np.concatenate([np.array(tok.encode_one(t), dtype=np.int32) for t in texts])
    )
    n_tokens = expected.size
    _report("encode_one loop", wall, cpu, n_tokens, wall)
    base = wall
    plain = Tokenizer.from_bytes(model, cache_entries=0)
    runs: list[tuple[str, Tokenizer]] = [
        (f"sentencepiece batch {threads} thr", plain),
        ("chunk cache, cold", tok),
        ("chunk cache, warm", tok),
    ]
    for name, encoder in runs:
        w, c, ids = _timed(lambda e=encoder: _batched(lambda b: e.encode_arrays(b, threads), texts))
        if not np.array_equal(ids, expected):
            raise SystemExit(f"{name}: ids differ from encode_one")
        _report(name, w, c, n_tokens, base)
    print(
        f"  cache: {tok.chunk_cache_size} chunks, {tok.chunk_cache_nbytes / 1e6:.1f} MB "
        f"({tok.chunk_cache_nbytes / max(tok.chunk_cache_size, 1):.0f} bytes per chunk)"
    )
    # What a long corpus sees after its start: a cache warmed on other stories.
    half = len(texts) // 2
    fresh = Tokenizer.from_bytes(model)
    _batched(lambda b: fresh.encode_arrays(b, threads), texts[:half])
    w, c, ids = _timed(lambda: _batched(lambda b: fresh.encode_arrays(b, threads), texts[half:]))
    if not np.array_equal(ids, expected[-ids.size :]):
        raise SystemExit("chunk cache, unseen stories: ids differ from encode_one")
    _report("chunk cache, unseen half", w, c, ids.size, base * ids.size / n_tokens)


def _bench_documents(stories: list[str], model: bytes, threads: int) -> None:
    records = _records(stories)
    for variant in ("forward", "reversed"):
        plain, cached = (Tokenizer.from_bytes(model, cache_entries=n) for n in (0, 1_000_000))
        for label, tok in (("no cache", plain), ("cache, cold", cached), ("cache, warm", cached)):
            wall, cpu = time.perf_counter(), time.process_time()
            n_tokens = sum(
                int(b.doc_lengths.sum())
                for b in encode_documents(records, tok, variant=variant,
                                          templates=TEXT["templates"], seed=TEXT["seed"],
                                          batch_size=BATCH, num_threads=threads)
            )
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            print(
                f"  encode_documents {variant:8s} {label:11s} {n_tokens / wall / 1e6:6.2f} "
                f"Mtok/s  ({wall:5.2f} s wall, {n_tokens / cpu / 1e6:5.2f} Mtok per CPU s)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stories", type=int, default=20_000)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    stories, source = story_texts(args.stories)
    print(f"machine: {machine()}")
    print(f"{_load()} (before)")
    mb = sum(len(s.encode()) for s in stories) / 1e6
    print(f"text: {len(stories)} {source} stories, {mb:.1f} MB")

    start = time.perf_counter()
    model = TokenizerConfig.from_params(conf("ingest")["tokenizer"] | {"vocab_size": args.vocab}
                                        ).train(stories)
    print(f"train_tokenizer bpe vocab {args.vocab}: {time.perf_counter() - start:.1f} s (1 thread)")
    for variant in ("forward", "reversed"):
        texts = stories if variant == "forward" else [reverse_words(s) for s in stories]
        print(f"{variant}:")
        _bench_variant(texts, model, args.threads)
    print("documents ([BOS] + story, reversal included):")
    _bench_documents(stories, model, args.threads)
    print(f"{_load()} (after)")


if __name__ == "__main__":
    main()
