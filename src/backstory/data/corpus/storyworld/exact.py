"""Is a story's ``source_bits`` its exact information, or an upper bound?

``source_bits`` is -log2 of the probability of one derivation (the draws that made the
story). If other derivations make the same text, the text is likelier than that, and
the floor built from ``source_bits`` overstates the best possible bits. This module
measures by how much: on a reduced storyworld (every pool cut to its first ``width``
items, and the name pools to two so that a friend can differ from the hero; so the
derivations can be counted), it walks every derivation, groups them by
text and compares the expected derivation bits with the expected exact text bits.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from backstory.data.corpus.storyworld import lexicon as lex
from backstory.data.corpus.storyworld.engine import Source
from backstory.data.corpus.storyworld.stories import story_of

T = TypeVar("T")


_NAMES = (lex.BOY_NAMES, lex.GIRL_NAMES, lex.ANIMAL_NAMES)


class _Rejected(Exception):
    """A derivation that a retry loop throws away: conditioned on, so not walked."""


class _Walker(Source):
    """A source that follows a path of branch numbers instead of random numbers.

    Every pool is cut to its first ``width`` items (at least the k that pick_k needs, at
    least two names);
    the probabilities are those of the cut pools, so the reduced generator is a proper
    distribution whose derivations can all be walked, in odometer order.
    """

    __slots__ = ("width", "path", "sizes", "depth", "fixed", "prefix_bits")

    def __init__(self, width: int, path: list[int], fixed: int) -> None:
        super().__init__("walk")
        self.width, self.path, self.sizes, self.depth = width, path, [], 0
        self.fixed, self.prefix_bits = fixed, 0.0

    def _branch(self, n: int) -> int:
        if self.depth == self.fixed:
            self.prefix_bits = self.bits
        if self.depth == len(self.path):
            self.path.append(0)
        self.sizes.append(n)
        self.depth += 1
        return self.path[self.depth - 1]

    def _cut(self, seq: Sequence[T]) -> Sequence[T]:
        return seq[: max(self.width, 2 if seq in _NAMES else 1)]

    def pick(self, seq: Sequence[T]) -> T:
        # The prefix (e.g. the plot) picks from the whole pool.
        m = len(seq) if self.depth < self.fixed else len(self._cut(seq))
        i = self._branch(m)
        self.bits += math.log2(m)
        return seq[i]

    def pick_item(self, seq: Sequence[T]) -> T:
        cut = self._cut(seq)
        items = list(dict.fromkeys(cut))
        item = items[self._branch(len(items))]
        self.bits += math.log2(len(cut) / cut.count(item))
        return item

    def pick_k(self, seq: Sequence[T], k: int) -> list[T]:
        left = list(seq[: max(k, min(len(seq), self.width))])
        taken = []
        for _ in range(k):
            i = self._branch(len(left))
            self.bits += math.log2(len(left))
            taken.append(left.pop(i))
        return taken

    def chance(self, p: float) -> bool:
        hit = self._branch(2) == 1
        self.bits -= math.log2(p if hit else 1.0 - p)
        return hit

    def skip(self) -> None:
        pass

    def share(self, seq: Sequence[T], value: T) -> float:
        cut = self._cut(seq)
        return cut.count(value) / len(cut)

    def retry(self, bits: float) -> None:
        raise _Rejected


@dataclass(frozen=True)
class Ambiguity:
    """What walking every derivation of the reduced generator found."""

    width: int
    derivations: int  # walked to a story (rejected ones not counted)
    texts: int  # distinct story texts
    total_probability: float  # of the walked derivations: 1 when the bits are right
    derivation_bits: float  # expected source_bits of a story
    text_bits: float  # expected exact bits of its text (log-sum-exp over its derivations)
    max_excess_bits: float  # the most one derivation overstates its text

    @property
    def excess_bits(self) -> float:
        """Expected bits by which source_bits overstates a story's exact information."""
        return self.derivation_bits - self.text_bits


def walk(width: int, prefix: Sequence[int] = (), limit: int = 2_000_000) -> Ambiguity:
    """Walk every derivation of storyworld cut to pools of ``width`` items.

    Only derivations whose first draws take the branches ``prefix`` are walked, and the
    figures are conditional on that prefix (e.g. the plot and its features). Raises
    ValueError when there are more than ``limit`` of them.
    """
    by_text: dict[str, list[float]] = defaultdict(list)
    path = list(prefix)
    n = 0
    while True:
        walker = _Walker(width, path, len(prefix))
        try:
            story = story_of(walker)
            by_text[story].append(walker.bits - walker.prefix_bits)
            n += 1
        except _Rejected:
            pass
        if n > limit:
            raise ValueError(f"more than {limit} derivations at width {width}")
        # Next path: bump the deepest branch that has a sibling left, drop what follows.
        del path[walker.depth :]
        while len(path) > len(prefix) and path[-1] + 1 == walker.sizes[len(path) - 1]:
            path.pop()
        if len(path) == len(prefix):
            break
        path[-1] += 1
    total = derivation = text = worst = 0.0
    for bits in by_text.values():
        p_text = sum(2.0**-b for b in bits)
        text_bits = -math.log2(p_text)
        total += p_text
        text += p_text * text_bits
        derivation += sum(2.0**-b * b for b in bits)
        worst = max(worst, max(bits) - text_bits)
    return Ambiguity(width, n, len(by_text), total, derivation, text, worst)
