"""Beam search: the likeliest continuations under a length penalty, deterministically.

A hypothesis is a continuation that ended on a stop id (included in its tokens) or ran
to ``max_new_tokens``. Its score is ``logprob / len(tokens) ** length_penalty``, where
``logprob`` is the sum of the log-probabilities of its tokens: 0 ranks by total
log-probability (favouring short hypotheses), 1 by mean log-probability per token,
larger values favour longer ones.

Each step extends every live beam by every token, ranks the candidates by total
log-probability (ties: lower beam index, then lower token id, so the result never
depends on hardware sort order), and keeps the best ``beam_width`` that do not stop;
candidates among the best ``beam_width`` that stop become hypotheses. The search ends when
no beam is left, at ``max_new_tokens``, or when no live beam can still beat the
``n_best``-th hypothesis (an exact bound, so stopping early never changes the result).
With ``beam_width`` of at least the number of candidates, this is exhaustive search.
Logits processors (constraints) apply before the log-softmax, so a constraint's
log-probabilities are renormalised over the tokens it allows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from backstory.lm.generate import (
    LogitsProcessor,
    apply_processors,
    check_request,
    decoding,
)
from backstory.lm.model import KVCache, Transformer, model_device
from backstory.lm.recurrent import RecurrentState


@dataclass(frozen=True)
class Hypothesis:
    """One finished continuation: its tokens, their log-probability and its score."""

    tokens: list[int]
    logprob: float
    score: float
    stopped: bool  # ended on a stop id (the last token); False: ran out of tokens


def check_beam(beam_width: int, length_penalty: float, n_best: int = 1) -> None:
    """Raise ValueError for beam settings outside their ranges."""
    if isinstance(beam_width, bool) or not isinstance(beam_width, int) or beam_width < 1:
        raise ValueError(f"beam_width must be an integer >= 1, got {beam_width!r}")
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, int | float) \
            or not math.isfinite(length_penalty):
        raise ValueError(f"length_penalty must be a finite number, got {length_penalty!r}")
    if isinstance(n_best, bool) or not isinstance(n_best, int) or not 1 <= n_best <= beam_width:
        raise ValueError(f"n_best must be an integer in [1, beam_width={beam_width}], "
                         f"got {n_best!r}")


def _score(logprob: float, length: int, length_penalty: float) -> float:
    return logprob / length ** length_penalty


def best_reachable_score(logprob: float, length: int, max_len: int, length_penalty: float) -> float:
    """An upper bound on the score of any hypothesis that extends a live beam.

    Log-probabilities only fall as tokens are added (logprob <= 0), so a descendant of
    length m scores at most logprob / m ** length_penalty; take the best m.
    """
    if length_penalty > 0:
        m = max_len
    elif length_penalty < 0:
        m = length + 1
    else:
        return logprob
    return logprob / m ** length_penalty


@torch.no_grad()
def beam_search(model: Transformer, prompt: Sequence[int], *, beam_width: int,
                max_new_tokens: int, length_penalty: float = 1.0,
                stop_ids: Sequence[int] = (), n_best: int = 1,
                logits_processors: Sequence[LogitsProcessor] = ()) -> list[Hypothesis]:
    """The ``n_best`` best hypotheses continuing ``prompt``, best first (module docstring).

    The model runs in eval mode with a KV cache and its mode is restored after; the
    prompt plus max_new_tokens must fit in max_seq_len.
    """
    check_beam(beam_width, length_penalty, n_best)
    prompt = [int(t) for t in prompt]
    check_request(model, [prompt], max_new_tokens, stop_ids)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1 for beam search, got {max_new_tokens}")
    device = model_device(model, None)
    with decoding(model, device):
        return _Search(model, prompt, beam_width, max_new_tokens, length_penalty, stop_ids,
                       n_best, logits_processors, device).run()


class _Search:
    def __init__(self, model: Transformer, prompt: list[int], width: int, max_new: int,
                 length_penalty: float, stop_ids: Sequence[int], n_best: int,
                 processors: Sequence[LogitsProcessor], device: torch.device) -> None:
        self.model, self.prompt, self.width, self.max_new = model, prompt, width, max_new
        self.length_penalty, self.n_best = float(length_penalty), n_best
        self.stops = {int(s) for s in stop_ids}
        self.processors = tuple(processors)
        self.device = device
        self.finished: list[Hypothesis] = []

    def run(self) -> list[Hypothesis]:
        cache = self.model.new_cache(1, len(self.prompt) + self.max_new)
        tokens = torch.tensor([self.prompt], dtype=torch.long, device=self.device)
        logits = self.model(tokens, cache=cache)[0][:, -1, :]  # (1, V)
        beams: list[tuple[list[int], float]] = [([], 0.0)]  # (generated, logprob)
        for step in range(self.max_new):
            last = step == self.max_new - 1
            beams, parents = self._extend(beams, logits, last)
            if not beams or self._cannot_improve(beams, step + 1):
                break
            _reorder(cache, torch.tensor(parents, device=self.device))
            step_tokens = torch.tensor([[b[0][-1]] for b in beams], device=self.device)
            logits = self.model(step_tokens, cache=cache)[0][:, -1, :]  # (n_beams, V)
        ranked = sorted(self.finished, key=lambda h: -h.score)  # stable: discovery order
        if not ranked:
            raise ValueError("beam search found no hypothesis (every token was forbidden)")
        return ranked[:self.n_best]

    def _extend(self, beams: list[tuple[list[int], float]], logits: torch.Tensor,
                last: bool) -> tuple[list[tuple[list[int], float]], list[int]]:
        """The next live beams and their parents; stopping candidates join ``finished``."""
        if self.processors:
            logits = apply_processors(self.processors, [self.prompt] * len(beams),
                                      [b[0] for b in beams], logits)
        logprobs = torch.log_softmax(logits.float(), dim=-1).double().cpu()  # (n, V)
        totals = logprobs + torch.tensor([b[1] for b in beams], dtype=torch.float64)[:, None]
        vocab = totals.shape[1]
        flat = totals.flatten()  # (n * V,), index = beam * V + token
        order = torch.sort(flat, descending=True, stable=True).indices.tolist()
        survivors: list[tuple[list[int], float]] = []
        parents: list[int] = []
        for rank, index in enumerate(order):
            total = float(flat[index])
            if total == -math.inf or (rank >= self.width and len(survivors) == self.width):
                break
            parent, token = divmod(index, vocab)
            if token in self.stops:
                if rank < self.width:
                    self._finish(beams[parent][0] + [token], total, stopped=True)
            elif len(survivors) < self.width:
                survivors.append((beams[parent][0] + [token], total))
                parents.append(parent)
        if last:  # out of tokens: the survivors are hypotheses too
            for tokens, total in survivors:
                self._finish(tokens, total, stopped=False)
            return [], []
        return survivors, parents

    def _finish(self, tokens: list[int], logprob: float, *, stopped: bool) -> None:
        score = _score(logprob, len(tokens), self.length_penalty)
        self.finished.append(Hypothesis(tokens, logprob, score, stopped))

    def _cannot_improve(self, beams: list[tuple[list[int], float]], length: int) -> bool:
        if len(self.finished) < self.n_best:
            return False
        threshold = sorted((h.score for h in self.finished), reverse=True)[self.n_best - 1]
        best = max(best_reachable_score(lp, length, self.max_new, self.length_penalty)
                   for _, lp in beams)
        return best <= threshold


def _reorder(cache: KVCache | RecurrentState, parents: torch.Tensor) -> None:
    """Keep the cached keys and values of each new beam's parent, in the new beam order."""
    if isinstance(cache, RecurrentState):
        cache.reorder(parents)
        return
    cache.k = cache.k.index_select(1, parents)  # (n_layers, n_beams, kv_heads, len, head_dim)
    cache.v = cache.v.index_select(1, parents)
