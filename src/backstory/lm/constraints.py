"""Constrained generation: logits processors that forbid the tokens breaking a rule.

Pilish: the i-th word of the generated text has as many letters as the i-th digit of
pi (3, 1, 4, 1, 5, 9, ...; a 0 digit asks for 10 letters). The text is made of:

- letters (ASCII a-z, A-Z): a run of them is a word;
- apostrophes, allowed right after a letter; they neither count nor end the word
  ("don't" has four letters);
- separators between words: whitespace and the punctuation ``. , ; : ! ? " ( ) -``, at
  most ``MAX_GAP`` characters from one word to the next, so that text keeps making words.

Anything else (digits, other symbols, control characters, non-ASCII text) cannot appear;
nor can ids without text of their own (unknown, control ids other than the stop ids,
non-ASCII byte pieces). A stop id is allowed only between words or right after a complete
one.

The processor works on each token's text, so it serves any vocabulary: with a word-level
tokenizer a token is usually one whole word ("▁house." is a separator, five letters and
another separator); with BPE a word grows over several tokens and the processor tracks
the current word's length, allowing a token only while the word can still come out
right.

The words counted are those of the generated text, in the order the model writes them
(for a reversed-words model the story read forwards has pi's digits from its end). When
the prompt ends inside a word, the output must start with a separator, so no word is
shared between prompt and output.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch

CONSTRAINTS = ("pilish",)
MAX_GAP = 6  # separator characters allowed between two words, e.g. '."\n\n"'
SEPARATORS = frozenset(' \n.,;:!?"()-')
_PI_DIGITS_START = 1000  # computed up front; doubled whenever a text gets longer


@lru_cache(maxsize=8)
def _pi_digits(n: int) -> tuple[int, ...]:
    """The first ``n`` decimal digits of pi (3, 1, 4, 1, 5, ...), exactly.

    Machin's formula pi = 16 atan(1/5) - 4 atan(1/239) in integer arithmetic with ten
    guard digits.
    """
    scale = 10 ** (n + 10)

    def atan_inv(x: int) -> int:
        total = term = scale // x
        k, sign, x2 = 1, -1, x * x
        while term:
            term //= x2
            total += sign * (term // (2 * k + 1))
            k, sign = k + 1, -sign
        return total

    pi = 16 * atan_inv(5) - 4 * atan_inv(239)
    return tuple(int(c) for c in _decimal(pi, n + 11)[:n])


def _decimal(x: int, width: int) -> str:
    """``x`` (< 10**width) as ``width`` decimal digits, zero-padded.

    Split in halves because Python refuses str() of integers over 4300 digits.
    """
    if width <= 4000:
        return str(x).zfill(width)
    half = width // 2
    high, low = divmod(x, 10 ** half)
    return _decimal(high, width - half) + _decimal(low, half)


def pi_digit(i: int) -> int:
    """The i-th digit of pi, counting the leading 3 as digit 0."""
    size = _PI_DIGITS_START
    while i >= size:
        size *= 2
    return _pi_digits(size)[i]


def pilish_length(i: int) -> int:
    """Letters the i-th word must have: pi's i-th digit, 10 for a 0."""
    return pi_digit(i) or 10


_LETTER, _APOSTROPHE, _SEPARATOR = "L", "A", "S"


def _char_class(ch: str) -> str | None:
    if ch.isascii() and ch.isalpha():
        return _LETTER
    if ch == "'":
        return _APOSTROPHE
    return _SEPARATOR if ch in SEPARATORS else None


def _pattern(text: str) -> str | None:
    """The token's text as character classes ("SLLLLLS" for " house."), None if banned."""
    classes = [_char_class(ch) for ch in text]
    return None if None in classes else "".join(classes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class _State:
    """Where the text stands: word ``index`` has ``letters`` so far, ``gap`` separators
    follow the last word, ``after_letter``: the last character was a letter; ``glued``:
    the text still ends in the prompt's last word, which the output may not extend."""

    index: int = 0
    letters: int = 0
    gap: int = 0
    after_letter: bool = False
    glued: bool = False


def _advance(state: _State, pattern: str) -> _State | None:
    """The state after a token of ``pattern``, or None when the token breaks the rule."""
    index, letters, gap = state.index, state.letters, state.gap
    after_letter, glued = state.after_letter, state.glued
    for kind in pattern:
        if kind == _LETTER:
            if glued or letters == pilish_length(index):
                return None
            letters, gap, after_letter = letters + 1, 0, True
        elif kind == _APOSTROPHE:
            if not after_letter:
                return None
            after_letter = False
        else:
            if letters:  # the separator ends the word, which must be complete
                if letters != pilish_length(index):
                    return None
                index, letters = index + 1, 0
            if gap == MAX_GAP:
                return None
            gap, after_letter, glued = gap + 1, False, False
    return _State(index, letters, gap, after_letter, glued)


def _can_stop(state: _State) -> bool:
    return state.glued or state.letters in (0, pilish_length(state.index))


class PilishConstraint:
    """A logits processor that keeps generated text Pilish (module docstring).

    ``token_texts[i]`` is the text id i adds when decoded (``Tokenizer.token_texts()``),
    None for ids without text; ``stop_ids`` may end generation at a word boundary.
    """

    def __init__(self, token_texts: Sequence[str | None], *, stop_ids: Sequence[int] = ()
                 ) -> None:
        self.vocab_size = len(token_texts)
        self.stop_ids = tuple(int(s) for s in stop_ids)
        self._texts = list(token_texts)
        groups: dict[str, list[int]] = {}
        for i, text in enumerate(token_texts):
            pattern = _pattern(text) if text and i not in self.stop_ids else None
            if pattern is not None:
                groups.setdefault(pattern, []).append(i)
        if not groups:
            raise ValueError("no token of this vocabulary can appear in Pilish text")
        self._groups = [(pattern, torch.tensor(ids)) for pattern, ids in groups.items()]
        self._pattern_of = {i: pattern for pattern, ids in groups.items() for i in ids}
        # words a token can reach: the current one, each it completes, the one it starts
        self._span = 2 + max(pattern.count(_SEPARATOR) for pattern in groups)
        self._states: dict[tuple[bool, tuple[int, ...]], _State] = {}
        self._masks: dict[tuple[int, int, bool, bool, tuple[int, ...]], torch.Tensor] = {}

    def state_after(self, prompt: Sequence[int], generated: Sequence[int]) -> _State:
        """The state after ``generated`` (ValueError if a token broke the rule).

        Cached per (prompt ending, generated prefix): generation extends a row by one
        token per call, so each call costs one step.
        """
        glued = self._ends_in_word(prompt)
        key = (glued, tuple(int(t) for t in generated))
        state = self._states.get(key)
        if state is not None:
            return state
        before = self._states.get((glued, key[1][:-1])) if key[1] else None
        if before is not None:
            state = self._step(before, key[1][-1], len(key[1]))
        else:
            state = _State(after_letter=glued, glued=glued)
            for position, token in enumerate(key[1], start=1):
                state = self._step(state, token, position)
        self._states[key] = state
        return state

    def _step(self, state: _State, token: int, position: int) -> _State:
        if token in self.stop_ids:
            if not _can_stop(state):
                raise ValueError(f"stop id {token} ends generated token {position} inside "
                                 "a Pilish word")
            return _State(state.index + (state.letters > 0 and not state.glued))
        pattern = self._pattern_of.get(token)
        after = None if pattern is None else _advance(state, pattern)
        if after is None:
            raise ValueError(f"generated token {position} (id {token}, "
                             f"{self._texts[token]!r}) breaks the Pilish rule")
        return after

    def _ends_in_word(self, prompt: Sequence[int]) -> bool:
        text = (self._texts[int(prompt[-1])] if prompt else None) or ""
        return bool(text) and _char_class(text[-1]) == _LETTER

    def allowed(self, state: _State) -> torch.Tensor:
        """A bool mask (V,) of the ids that keep the text Pilish from ``state``."""
        # The answer depends on the word index only through the next few digits.
        window = tuple(pilish_length(state.index + j) for j in range(self._span))
        key = (state.letters, state.gap, state.after_letter, state.glued, window)
        mask = self._masks.get(key)
        if mask is None:
            mask = torch.zeros(self.vocab_size, dtype=torch.bool)
            for pattern, ids in self._groups:
                if _advance(state, pattern) is not None:
                    mask[ids] = True
            if _can_stop(state) and self.stop_ids:
                mask[list(self.stop_ids)] = True
            self._masks[key] = mask
        return mask

    def __call__(self, prompts: Sequence[Sequence[int]], generated: Sequence[Sequence[int]],
                 logits: torch.Tensor) -> torch.Tensor:
        if logits.shape[-1] != self.vocab_size:
            raise ValueError(f"logits have {logits.shape[-1]} ids, the constraint's vocabulary "
                             f"{self.vocab_size}")
        masks = torch.stack([self.allowed(self.state_after(p, g))
                             for p, g in zip(prompts, generated, strict=True)])  # (B, V)
        return logits.masked_fill(~masks.to(logits.device), float("-inf"))


_WORD = re.compile(r"[A-Za-z][A-Za-z']*")
_GAP = re.compile(r"[^A-Za-z']+")
_STRAY_APOSTROPHE = re.compile(r"(?:^|[^A-Za-z])'")


def pilish_words(text: str) -> list[str]:
    """The words of ``text`` as the Pilish rule counts them (a letter, then letters and
    apostrophes)."""
    return _WORD.findall(text)


def pilish_violations(text: str) -> list[str]:
    """What breaks the Pilish rule in ``text`` (empty when nothing does).

    Written apart from the processor, as its check: each complete word's letters against
    pi's digits (the last word counts as complete only if a separator follows it; a
    shorter unfinished word at the end is fine), the characters allowed, apostrophes only
    after a letter, and at most MAX_GAP separators between words.
    """
    problems = [f"character {ch!r} is not allowed" for ch in sorted(set(text))
                if not (ch.isascii() and ch.isalpha()) and ch != "'" and ch not in SEPARATORS]
    problems += [f"apostrophe not after a letter at {m.start()}"
                 for m in _STRAY_APOSTROPHE.finditer(text)]
    problems += [f"{len(m.group())} separators at {m.start()}" for m in _GAP.finditer(text)
                 if len(m.group()) > MAX_GAP]
    words = pilish_words(text)
    for i, word in enumerate(words):
        letters = sum(ch != "'" for ch in word)
        need = pilish_length(i)
        unfinished = i == len(words) - 1 and text.endswith(word)
        if letters != need and not (unfinished and letters < need):
            problems.append(f"word {i} {word!r} has {letters} letters, pi asks for {need}")
    return problems


def make_constraint(name: str, token_texts: Sequence[str | None], *,
                    stop_ids: Sequence[int] = ()) -> PilishConstraint:
    """The constraint called ``name`` (one of CONSTRAINTS) for a vocabulary."""
    if name == "pilish":
        return PilishConstraint(token_texts, stop_ids=stop_ids)
    raise ValueError(f"unknown constraint {name!r}; constraints: {', '.join(CONSTRAINTS)}")
