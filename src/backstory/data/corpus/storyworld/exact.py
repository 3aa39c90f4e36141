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

import itertools
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


# --------------------------------------------------------------------------- full size


class _Replay(Source):
    """A source that records each draw's outcome, or replays recorded outcomes with one
    of them changed (``forced``: draw number -> outcome)."""

    __slots__ = ("outcomes", "forced", "sites", "replaying")

    def __init__(self, seed: str, outcomes: list | None = None,
                 forced: tuple[int, object] | None = None) -> None:
        super().__init__(seed)
        self.replaying = outcomes is not None
        self.outcomes = [] if outcomes is None else outcomes
        self.forced = forced
        self.sites: list[tuple[str, object]] = []  # (kind, size) of each draw, in order

    def _next(self, kind: str, size: object, draw) -> object:
        i = len(self.sites)
        self.sites.append((kind, size))
        if not self.replaying:
            self.outcomes.append(draw())
            return self.outcomes[-1]
        if i >= len(self.outcomes):
            raise _Rejected  # a changed draw changed how many draws follow
        if self.forced is not None and self.forced[0] == i:
            return self.forced[1]
        return self.outcomes[i]

    def pick(self, seq: Sequence[T]) -> T:
        i = self._next("pick", len(seq), lambda: int(self.random() * len(seq)))
        if not isinstance(i, int) or i >= len(seq):
            raise _Rejected
        return seq[i]

    def pick_item(self, seq: Sequence[T]) -> T:
        return self.pick(seq)

    def pick_k(self, seq: Sequence[T], k: int) -> list[T]:
        taken = self._next("pick_k", (len(seq), k), lambda: tuple(super(_Replay, self).pick_k(
            range(len(seq)), k)))
        if not isinstance(taken, tuple) or len(taken) != k or max(taken) >= len(seq):
            raise _Rejected
        return [seq[i] for i in taken]

    def chance(self, p: float) -> bool:
        hit = self._next("chance", p, lambda: self.random() < p)
        if not isinstance(hit, bool):
            raise _Rejected
        return hit


def _alternatives(kind: str, size: object) -> list[tuple[object, float]]:
    """Every outcome of one draw with its probability."""
    if kind == "chance":
        return [(True, size), (False, 1.0 - size)]
    if kind == "pick":
        return [(i, 1.0 / size) for i in range(size)]
    n, k = size
    orders = list(itertools.permutations(range(n), k))
    return [(order, 1.0 / len(orders)) for order in orders]


def single_site_excess(seed: int, index: int, max_outcomes: int = 5000) -> float:
    """Estimated bits by which record index's source_bits overstate its text's bits.

    For each draw of the story, the outcomes that leave the text unchanged (the others
    held fixed) are another derivation of the same text; their share of the draw's
    probability is counted, as if the draws were independent. An unused draw (three
    sights of a place the story never describes) counts its whole bits. Draws with more
    than max_outcomes outcomes are not tried.
    """
    key = f"{seed}:{index}"
    first = _Replay(key)
    story = story_of(first)
    excess = 0.0
    for i, ((kind, size), chosen) in enumerate(zip(first.sites, first.outcomes, strict=True)):
        outcomes = _alternatives(kind, size) if kind != "pick_k" or math.perm(*size) <= \
            max_outcomes else []
        p_chosen = next((p for o, p in outcomes if o == chosen), None)
        if p_chosen is None:
            continue
        same = 0.0
        for outcome, p in outcomes:
            if outcome == chosen:
                same += p
                continue
            try:
                if story_of(_Replay(key, first.outcomes, (i, outcome))) == story:
                    same += p
            except (_Rejected, IndexError, KeyError):
                pass
        excess += math.log2(same / p_chosen)
    return excess
