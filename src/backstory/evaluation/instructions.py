"""Instruction following: does a story use the required words and name the characters?

A story "uses" a required word when one of its words is that word or a regular
inflection of it (fill -> fills, filled, filling); it "names the characters" when every
name of the summary occurs in it as a whole word.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
_CAPITALIZED = re.compile(r"\b[A-Z][a-z]+(?:'s)?\b")
# Stripped before a word to see what precedes it: spaces, tabs and quotes.
_OPENERS = " \t\"'\u201c\u201d"
_VOWELS = set("aeiou")
# Capitalized words that are never a character's name even mid-sentence.
_NOT_NAMES = frozenset({"I", "Once", "The", "A", "An", "One", "In", "On", "At", "Then"})



def word_forms(word: str) -> set[str]:
    """Lower-case regular inflections of ``word``: -s/-es, -ed, -ing, -er, -est, -y rules."""
    w = word.strip().lower()
    if not w or not _WORD.fullmatch(w):
        raise ValueError(f"required word {word!r} is not a single word")
    forms = {w, w + "s", w + "es", w + "ed", w + "ing", w + "er", w + "est", w + "ly"}
    if w.endswith("e"):
        stem = w[:-1]
        forms |= {w + "d", w + "r", w + "st", stem + "ing"}
    if w.endswith("y") and len(w) > 1 and w[-2] not in _VOWELS:
        stem = w[:-1]
        forms |= {stem + "ies", stem + "ied", stem + "ier", stem + "iest", stem + "ily"}
    if len(w) >= 3 and w[-1] not in _VOWELS | {"w", "x", "y"} and w[-2] in _VOWELS \
            and w[-3] not in _VOWELS:
        # stop -> stopped, big -> bigger: a short final consonant doubles
        forms |= {w + w[-1] + end for end in ("ed", "ing", "er", "est")}
    return forms


def story_words(story: str) -> set[str]:
    """The lower-case words of a story (a trailing 's drops: "Pete's" counts as "pete")."""
    return {w.lower().removesuffix("'s") for w in _WORD.findall(story)}


def uses_words(story: str, words: Iterable[str]) -> bool:
    """Whether every required word occurs in ``story`` (any regular inflection)."""
    present = story_words(story)
    return all(word_forms(w) & present for w in words)


def _mid_sentence_capitals(text: str) -> set[str]:
    """Capitalized words of ``text`` that do not start a sentence (so names, mostly)."""
    found = set()
    for match in _CAPITALIZED.finditer(text):
        before = text[max(0, match.start() - 8) : match.start()].rstrip(_OPENERS)
        if before and before[-1] not in ".!?\n":
            found.add(match.group().removesuffix("'s"))
    return found


def summary_characters(summary: str, reference: str = "") -> list[str]:
    """Names of the characters in ``summary``, in order of first mention.

    A capitalized word is a name when it stands mid-sentence in the summary or in the
    ``reference`` story (a sentence's first word is capitalized anyway, so it counts
    only when it is capitalized elsewhere too: "Shy Pete meets ..." gives ["Pete"]).
    """
    known = _mid_sentence_capitals(summary) | _mid_sentence_capitals(reference)
    names: list[str] = []
    for match in _CAPITALIZED.finditer(summary):
        name = match.group().removesuffix("'s")
        if name in known and name not in _NOT_NAMES and name not in names:
            names.append(name)
    return names


def names_characters(story: str, names: Iterable[str]) -> bool:
    """Whether every name occurs in ``story`` as a whole word (case-sensitive)."""
    present = {w.removesuffix("'s") for w in _WORD.findall(story)}
    return all(name in present for name in names)


def instruction_checks(story: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """Which requirements of ``record`` (words, summary characters) ``story`` meets."""
    words = [str(w) for w in record.get("words", [])]
    names = summary_characters(str(record.get("summary", "")), str(record.get("story", "")))
    return {
        "words": words,
        "characters": names,
        "uses_words": uses_words(story, words),
        "names_characters": names_characters(story, names),
    }


def instruction_hits(stories: Sequence[str], records: Sequence[Mapping[str, Any]]
                     ) -> dict[str, list[bool]]:
    """Per story: does it use all words, name all characters, do both (one list each)."""
    if len(stories) != len(records):
        raise ValueError(f"{len(stories)} stories but {len(records)} records to check them by")
    if not stories:
        raise ValueError("no stories to check")
    checks = [instruction_checks(s, r) for s, r in zip(stories, records, strict=True)]
    return {"uses_words": [c["uses_words"] for c in checks],
            "names_characters": [c["names_characters"] for c in checks],
            "both": [c["uses_words"] and c["names_characters"] for c in checks]}


def instruction_shares(stories: Sequence[str], records: Sequence[Mapping[str, Any]]
                       ) -> dict[str, float | int]:
    """Shares of ``stories`` that use all words / name all characters of their record."""
    hits = instruction_hits(stories, records)
    n = len(stories)
    return {"n": n, **{name: sum(values) / n for name, values in hits.items()}}
