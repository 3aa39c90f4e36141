"""The storyworld engine: the teller that writes sentences, the drawing helpers, the
feature markers and the Plot shape every plot fills."""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from backstory.data.corpus.storyworld import lexicon as lex

DEFAULT_SEED = 1337
FEATURES = ("Dialogue", "BadEnding", "MoralValue", "Twist", "Foreshadowing", "Conflict")
SOURCE = "storyworld"

# Chance that a feature is requested, before a plot adds the ones it cannot do without.
# Dialogue is the most common feature in the real data; the others are rarer.
FEATURE_ODDS = {
    "Dialogue": 0.6,
    "BadEnding": 0.15,
    "MoralValue": 0.3,
    "Twist": 0.2,
    "Foreshadowing": 0.2,
    "Conflict": 0.2,
}
LEADING_BLANK_ODDS = 0.3  # real shards often start a story with "\n\n"
ANIMAL_HERO_ODDS = 0.25

# Words and phrases that only the matching feature ever writes, so a checker can tell a
# listed feature from an unlisted one by reading the text.
TWIST_MARKERS = ("unexpected", "nobody expected")
CONFLICT_WORDS = frozenset({"argued", "arguing", "angry", "agree"})
MORAL_MARKER = "learned"
FORESHADOW_MARKER = "remembered"
# The last paragraph of a happy ending holds one of these; a bad ending holds none of
# them and one of SAD_WORDS.
HAPPY_WORDS = frozenset({"happy", "smiled", "laughed", "glad", "hugged", "cheered", "fun", "joy"})
SAD_WORDS = frozenset({"sad", "cried", "tears", "gone", "never", "lost", "broken", "torn"})
FEATURE_MARKERS = {
    "Dialogue": '"',
    "BadEnding": SAD_WORDS,
    "MoralValue": MORAL_MARKER,
    "Twist": TWIST_MARKERS,
    "Foreshadowing": FORESHADOW_MARKER,
    "Conflict": CONFLICT_WORDS,
}

PROMPT_HEAD = (
    "Write a short story (3-5 paragraphs) which only uses very simple words that a 3 year "
    "old child would understand."
)
PROMPT_FEATURE_PHRASES = {
    "Dialogue": "the story should contain at least one dialogue",
    "BadEnding": "the story has a bad ending",
    "MoralValue": "the story has a moral value",
    "Twist": "something unexpected happens / there is a plot twist",
    "Foreshadowing": "the narrative uses foreshadowing or setup and payoff",
    "Conflict": "the story has some form of conflict in it",
}
T = TypeVar("T")


# --------------------------------------------------------------------------- the source

# log2(n) for the pool sizes a story draws from: a list index is cheaper than math.log2.
_LOG2 = [0.0] + [math.log2(n) for n in range(1, 1 << 12)]


class _ChanceBits(dict):
    """p -> (bits of a miss, bits of a hit), computed once per odds the generator uses."""

    def __missing__(self, p: float) -> tuple[float, float]:
        self[p] = (-math.log2(1.0 - p), -math.log2(p))
        return self[p]


_CHANCE_BITS = _ChanceBits()


class Source(random.Random):
    """The random source of one story: every draw goes through pick, pick_k or chance.

    Each adds to ``bits`` the information of what it drew (-log2 of its probability), so
    ``bits`` is the log-probability of the story's derivation. The draws are the ones the
    generator always made (one ``random()`` each), so recording moves no byte of a story.
    """

    __slots__ = ("bits",)

    def __init__(self, seed: str) -> None:
        super().__init__(seed)
        self.bits = 0.0

    def pick(self, seq: Sequence[T]) -> T:
        """One item of seq by position; cheaper than choice, which shows in stories/s."""
        n = len(seq)
        self.bits += _LOG2[n]
        return seq[int(self.random() * n)]

    def pick_k(self, seq: Sequence[T], k: int) -> list[T]:
        """k distinct items of seq (by position), in the order drawn."""
        n = len(seq)
        taken: list[int] = []
        while len(taken) < k:
            i = int(self.random() * n)
            if i not in taken:
                self.bits += _LOG2[n - len(taken)]
                taken.append(i)
        return [seq[i] for i in taken]

    def chance(self, p: float) -> bool:
        """True with probability p."""
        hit = self.random() < p
        self.bits += _CHANCE_BITS[p][hit]
        return hit

    def skip(self) -> None:
        """A draw whose outcome cannot change the story: made, to keep the stream, unrecorded."""
        self.random()

    def pick_item(self, seq: Sequence[T]) -> T:
        """pick for a seq that repeats items: the bits of the item drawn, not its position."""
        n = len(seq)
        item = seq[int(self.random() * n)]
        self.bits += _LOG2[n] - _LOG2[seq.count(item)]
        return item

    def share(self, seq: Sequence[T], value: T) -> float:
        """Chance that pick(seq) gives value (a retry loop that rejects it conditions on it)."""
        return seq.count(value) / len(seq)

    def retry(self, bits: float) -> None:
        """A rejected attempt: forget its draws (back to ``bits``, as before the attempt)."""
        self.bits = bits

    def condition(self, share: float) -> None:
        """Drawing until the result avoids an outcome of probability share makes what was
        kept 1 / (1 - share) times likelier than its draws' bits say."""
        self.bits += math.log2(1.0 - share)


# --------------------------------------------------------------------------- the teller


class Teller:
    """Writes one story: picks sentence templates, fills them, keeps paragraphs."""

    __slots__ = ("rng", "_pick", "f", "features", "bad", "fore", "paragraphs", "_current")

    def __init__(
        self,
        rng: Source,
        f: dict[str, str],
        features: frozenset[str],
        fore: tuple[str, str] | None,
    ) -> None:
        self.rng = rng
        self._pick = rng.pick  # bound once: add runs ~15 times a story
        self.f = f
        self.features = features
        self.bad = "BadEnding" in features
        self.fore = fore  # (hint, payoff) templates when Foreshadowing is listed
        self._current: list[str] = []
        self.paragraphs: list[list[str]] = [self._current]

    def fill(self, template: str) -> str:
        return template.format_map(self.f)

    def add(self, *options: str) -> None:
        """Append one of the template sentences, filled and capitalised."""
        n = len(options)
        # One template draws nothing: the generator never drew for it.
        template = options[0] if n == 1 else self._pick(options)
        text = template.format_map(self.f)
        # Templates start with a capital letter or a field; only a field can need capitals.
        self._current.append(capitalized(text) if template[0] == "{" else text)

    def para(self) -> None:
        if self._current:
            self._current = []
            self.paragraphs.append(self._current)

    def say(self, who: str, *pairs: tuple[str, str]) -> None:
        """A line of speech: quoted with Dialogue, reported speech without it."""
        quote, reported = self.rng.pick(pairs)
        if "Dialogue" not in self.features:
            self.add(reported)
            return
        speaker = self.f[who]
        listener = self.f["F" if who == "H" else "H"]
        self._current.append(_quote(self.rng, capitalized(self.fill(quote)), speaker, listener))

    def conflict(self, *causes: str) -> None:
        """A disagreement between the two friends, only when Conflict is listed."""
        if "Conflict" not in self.features:
            return
        self.add(*causes)
        self.add(*_CONFLICT_MARKS)
        self.say(self.rng.pick(("H", "F")), *_CONFLICT_SAY)
        if self.bad and self.rng.chance(0.5):
            self.add(*_CONFLICT_STAYS)
        else:
            self.add(*_CONFLICT_MENDS)

    def twist(self, *options: str) -> bool:
        """An unexpected turn, announced so a reader (and a test) can see it.

        Returns whether it was told, so a plot can skip the plain event it replaces.
        """
        if "Twist" not in self.features:
            return False
        self.add(*_TWIST_INTROS)
        self.add(*options)
        return True

    def scene(self) -> None:
        """Sometimes, a sentence about the day that sets the scene."""
        if self.rng.chance(0.6):
            self.add(*(lex.SCENES_OUTDOORS if self.f["outdoor"] else lex.SCENES_INDOORS))

    def detail(self) -> None:
        """Sometimes, a small detail in the middle of the story."""
        if self.rng.chance(0.6):
            self.add(*_DETAILS)

    def hint(self) -> None:
        if self.fore:
            self.add(self.fore[0])

    def payoff(self) -> None:
        if self.fore:
            self.add(self.fore[1])

    def end(self, good: tuple[str, ...], bad: tuple[str, ...], n: int = 2) -> None:
        """Closing sentences: n distinct picks from the happy or the sad set."""
        for template in self.rng.pick_k(bad if self.bad else good, n):
            self.add(template)

    def moral(self, lessons: tuple[str, ...], bad_lessons: tuple[str, ...]) -> None:
        if "MoralValue" in self.features:
            # Mostly the plot's own lesson; sometimes a general one about friendship.
            if self.bad:
                pool = bad_lessons
            else:
                pool = lessons if self.rng.chance(0.75) else _GOOD_LESSONS
            lesson = self.fill(self.rng.pick(pool))
            self.add(self.rng.pick(_MORAL_FORMS).replace("{lesson}", lesson))

    def text(self) -> str:
        return "\n\n".join(" ".join(p) for p in self.paragraphs if p)




def capitalized(s: str) -> str:
    return s[:1].upper() + s[1:] if s[:1].islower() else s


def _quote(rng: Source, q: str, speaker: str, listener: str) -> str:
    """Render quoted speech with 'said' or 'asked' in one of several word orders."""
    if q.endswith("?"):
        forms = (
            f'"{q}" asked {speaker}.',
            f'{speaker} asked, "{q}"',
            f'{speaker} looked at {listener} and asked, "{q}"',
        )
    elif q.endswith("!"):
        forms = (f'"{q}" said {speaker}.', f'{speaker} said, "{q}"', f'"{q}" {speaker} said.')
    else:
        body = q[:-1] if q.endswith(".") else q
        forms = (
            f'"{body}," said {speaker}.',
            f'{speaker} said, "{body}."',
            f'"{body}," {speaker} said.',
            f'{speaker} turned to {listener} and said, "{body}."',
        )
    return rng.pick(forms)


def a_or_an(word: str) -> str:
    """Indefinite article for a word."""
    if word.startswith(("uni", "use", "one")):
        return "a"
    return "an" if word[:1] in "aeiou" else "a"


_TWIST_INTROS = (
    "Then something unexpected happened.",
    "But then, something unexpected happened.",
    "Nobody expected what happened next.",
    "And then came a twist that nobody expected.",
    "Just then, something totally unexpected happened.",
)
_DETAILS = (
    "Nearby, {a_beast} {beast_sound}.",
    "{A_beast} {beast_moved} past them and did not stop.",
    "{A_critter} watched them from {spot1}.",
    "{H}'s tummy rumbled, so they shared some {food}.",
    "{F} hummed a little song about {food}.",
    "{H} stopped to count {count} {counted} that {he} could see.",
    "{F} found {trinket} and put it in {fhis} pocket.",
    "{H} spotted {trinket} on the ground and picked it up.",
    "The wind carried the smell of {food} from somewhere close by.",
)
_CONFLICT_MARKS = (
    "They argued and argued.",
    "{H} and {F} did not agree.",
    "{F} got angry and crossed {fhis} arms.",
    "{H} got angry and stomped {his} foot.",
    "Soon they were arguing loudly.",
    "They argued about it for a long time.",
)
_CONFLICT_SAY = (
    ("No, my way is better!", "{H} said that {his} way was better."),
    ("You never listen to me!", "{F} said that {H} never listened."),
    ("That is not fair!", "{F} said that it was not fair."),
    ("I do not want to do it your way.", "{H} said {he} did not want to do it that way."),
)
_CONFLICT_MENDS = (
    "After a while, they both said sorry.",
    "Then {H} took a deep breath and said sorry to {F}.",
    "At last, they found a way to agree.",
    "Soon {G} came over and helped them agree.",
    "They were quiet for a moment, and then {F} said sorry first.",
)
_CONFLICT_STAYS = (
    "Neither of them would say sorry.",
    "They were still angry at each other.",
    "Both of them sulked and would not agree.",
)
_MORAL_FORMS = (
    "{H} learned that {lesson}.",
    "That day, {H} learned that {lesson}.",
    "In the end, {H} and {F} learned that {lesson}.",
    "{H} learned an important lesson: {lesson}.",
    "From that day on, {H} learned that {lesson}.",
)
_GOOD_LESSONS = (
    "good friends help each other",
    "it is nice to be kind to others",
    "doing things together is better than doing them alone",
)
CRITTERS = (
    "squirrel bunny mouse bird frog hedgehog chipmunk raccoon duck kitten puppy crow "
    "magpie turtle goat ferret robin sparrow lizard beetle owl fox badger mole vole"
).split()
WRECKERS = (
    ("the puppy next door", "came running and jumped right on top of it"),
    ("a naughty goat", "trotted over and knocked everything down"),
    ("a big dog", "ran past and knocked it all over with its tail"),
    ("a curious kitten", "pounced on it and sent everything flying"),
    ("a clumsy pony", "stumbled in and trampled everything flat"),
    ("a greedy seagull", "swooped down and pecked it all to bits"),
    ("a muddy piglet", "rolled right through the middle of it"),
)



# --------------------------------------------------------------------------- plots


@dataclass(frozen=True)
class Plot:
    """One plot shape: how its story is told and summarised."""

    name: str
    key: re.Pattern[str]  # a word only this plot's summaries use first; see classify_plot
    body: Callable[[Teller], None]
    summaries: tuple[str, ...]
    bad_summaries: tuple[str, ...]
    fore: tuple[tuple[str, str], ...]  # (hint, payoff) for happy endings
    bad_fore: tuple[tuple[str, str], ...]  # (hint, payoff) for bad endings
    places: str = "any"  # a key of _PLACE_FILTERS: any, outdoor, out (not at home), home, garden
    setup: Callable[[Source, dict[str, str]], None] | None = None
    forced: tuple[str, ...] = ()  # features this plot always has
    intro_friend: bool = True  # False when the friend is met during the story
