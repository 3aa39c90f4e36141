"""Throughput of reverse_words on story-like text, on one core.

Rerun: python benchmarks/bench_text.py [--mb 4] [--seed 0]
Prints MB/s of backstory.data.text.reverse_words and of the published one-line expression
(re.split + reversed + join) on the same stories, and the share of stories that took
the fast path.
"""

from __future__ import annotations

import argparse
import itertools
import random
import re
import time

from machine import describe as machine

from backstory.data.text import fast_path_applies, reverse_words

COMMON = (
    "the a and to was he she it they her his with in on of said so but then one day big "
    "little happy sad very saw went play wanted friend mom dad home tree park ball dog cat"
).split()
NAMES = ["Lily", "Ben", "Tom", "Sue", "Max", "Mia", "Tim", "Anna", "Sam", "Lucy"]


def _lexicon(rng: random.Random, size: int) -> list[str]:
    syllables = "ba lo ki ra mu te sh an or pi ne st ul fe go di wa ck yo ez".split()
    size = min(size, len(syllables) ** 3 // 2)  # the loop below must be able to finish
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))))
    ordered = sorted(words)
    rng.shuffle(ordered)
    return ordered


class _StoryMaker:
    """Zipf-distributed words in sentences, dialogue and paragraphs, like TinyStories."""

    def __init__(self, rng: random.Random, lexicon_size: int = 3000) -> None:
        self.rng = rng
        self.words = COMMON + _lexicon(rng, lexicon_size)
        # Zipf weights by rank: the common words first, then a long tail.
        self.cum = list(itertools.accumulate(1.0 / (rank + 2) for rank in range(len(self.words))))

    def sentence(self) -> str:
        rng = self.rng
        body = rng.choices(self.words, cum_weights=self.cum, k=rng.randint(4, 12))
        if rng.random() < 0.3:
            body[rng.randrange(len(body))] += ","
        text = f"{rng.choice(NAMES)} {' '.join(body).rstrip(',')}"
        end = rng.choice([".", ".", ".", "!", "?"])
        if rng.random() < 0.25:
            return f'"{text}{end}" said {rng.choice(NAMES)}.'
        return text + end

    def story(self) -> str:
        paragraphs = [
            " ".join(self.sentence() for _ in range(self.rng.randint(3, 5)))
            for _ in range(self.rng.randint(2, 4))
        ]
        return "\n\n".join(paragraphs)


def synthetic_stories(n: int, seed: int = 0) -> list[str]:
    """n TinyStories-like stories (~800 bytes), seeded."""
    maker = _StoryMaker(random.Random(seed))
    return [maker.story() for _ in range(n)]


def story_texts(n: int, seed: int = 0) -> tuple[list[str], str]:
    """Stories from the storyworld generator when it exists, else synthetic ones."""
    try:
        from backstory.data.corpus.storyworld import generate_records
    except ImportError:  # written by another module owner; may not exist yet
        return synthetic_stories(n, seed), "synthetic"
    return [r["story"].strip() for r in generate_records(seed, 0, n)], "storyworld"



_REFERENCE = re.compile(r'([\w\d\']+|\.|"|\?|\!|,)')


def reference(text: str) -> str:
    return "".join(reversed(_REFERENCE.split(text)))


def mb_per_s(fn, stories: list[str], total_bytes: int, repeats: int = 5) -> float:
    """MB/s from the best of ``repeats`` runs of each group of 100 stories.

    Taking the minimum per small group, not per whole pass, keeps the figure close to an
    unloaded core on a machine shared with other jobs.
    """
    total = 0.0
    for first in range(0, len(stories), 100):
        group = stories[first : first + 100]
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for text in group:
                fn(text)
            best = min(best, time.perf_counter() - start)
        total += best
    return total_bytes / total / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=4.0, help="MB of story text")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    stories, source = story_texts(int(args.mb * 1e6 / 900), args.seed)
    total = sum(len(s.encode()) for s in stories)
    fast = sum(map(fast_path_applies, stories)) / len(stories)
    print(f"machine: {machine()}")
    print(f"text: {len(stories)} {source} stories, {total / 1e6:.1f} MB, fast path {fast:.0%}")
    ours, ref = mb_per_s(reverse_words, stories, total), mb_per_s(reference, stories, total)
    print(f"reverse_words        {ours:6.1f} MB/s (1 core)")
    print(f"reference expression {ref:6.1f} MB/s (1 core)  speedup {ours / ref:.1f}x")


if __name__ == "__main__":
    main()
