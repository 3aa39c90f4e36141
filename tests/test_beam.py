"""Beam search against exhaustive search on a model small enough to enumerate."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from backstory.lm.beam import Hypothesis, beam_search, best_reachable_score
from backstory.lm.generate import generate
from backstory.lm.model import Transformer
from tests.project import model_config

VOCAB, STOP, LENGTH = 6, 2, 4
PROMPT = [1, 3]


@pytest.fixture(scope="module")
def model() -> Transformer:
    torch.manual_seed(3)
    net = Transformer(model_config(vocab_size=VOCAB, dim=16, n_layers=2, n_heads=2,
                                  n_kv_heads=1, max_seq_len=16))
    with torch.no_grad():  # spread the logits so that scores do not tie
        for param in net.parameters():
            if param.dim() == 2:
                param.mul_(20)
    return net.eval()


def all_hypotheses(model: Transformer, length_penalty: float) -> list[tuple[float, tuple]]:
    """(score, tokens) of every continuation: ended by STOP, or LENGTH tokens without it."""
    grid = torch.tensor([PROMPT + list(s) for s in itertools.product(range(VOCAB),
                                                                     repeat=LENGTH)])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(grid)[0].double(), dim=-1)  # (N, T, V)
    found = {}
    for row, seq in enumerate(grid[:, len(PROMPT):].tolist()):
        total = 0.0
        for k, token in enumerate(seq):
            total += float(logprobs[row, len(PROMPT) - 1 + k, token])
            if token == STOP or k == LENGTH - 1:
                hyp = tuple(seq[:k + 1])
                found[hyp] = total / len(hyp) ** length_penalty
                break
    return sorted(((score, hyp) for hyp, score in found.items()), reverse=True)


@pytest.mark.parametrize("n_best", [1, 30])
@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0, -0.5])
def test_full_width_beam_search_is_exhaustive_search(model, length_penalty, n_best):
    exhaustive = all_hypotheses(model, length_penalty)
    assert exhaustive[0][0] - exhaustive[2][0] > 1e-3  # the top three are well apart
    found = beam_search(model, PROMPT, beam_width=VOCAB ** LENGTH, max_new_tokens=LENGTH,
                        length_penalty=length_penalty, stop_ids=[STOP], n_best=n_best)
    assert len(found) == n_best  # and stopping early (n_best=1) lost nothing
    top = min(n_best, 3)
    assert [tuple(h.tokens) for h in found[:top]] == [hyp for _, hyp in exhaustive[:top]]
    # Every one of the 30 best carries its true score (beams of every parent, not only
    # the leading one, see their own history in the cache).
    true_score = {hyp: score for score, hyp in exhaustive}
    for h, (score, _) in zip(found, exhaustive, strict=False):
        assert h.score == pytest.approx(true_score[tuple(h.tokens)], abs=1e-4)
        assert h.score == pytest.approx(score, abs=1e-4)
        assert h.stopped == (h.tokens[-1] == STOP)
        assert h.score == pytest.approx(h.logprob / len(h.tokens) ** length_penalty)


def test_the_length_penalty_changes_which_hypothesis_wins(model):
    winners = {tuple(beam_search(model, PROMPT, beam_width=64, max_new_tokens=LENGTH,
                                 length_penalty=lp, stop_ids=[STOP])[0].tokens)
               for lp in (-1.0, 0.0, 1.0, 3.0)}
    assert len(winners) > 1


def test_narrow_beams_never_beat_exhaustive_search(model):
    best = all_hypotheses(model, 1.0)[0][0]
    for width in (1, 2, 3, 8):
        found = beam_search(model, PROMPT, beam_width=width, max_new_tokens=LENGTH,
                            stop_ids=[STOP])[0]
        assert found.score <= best + 1e-6


def test_width_one_is_greedy_decoding(model):
    greedy = generate(model, [PROMPT], max_new_tokens=10, temperature=0, stop_ids=[STOP])[0]
    found = beam_search(model, PROMPT, beam_width=1, max_new_tokens=10, stop_ids=[STOP])[0]
    assert found.tokens[:len(greedy)] == greedy
    assert found.tokens == greedy + ([STOP] if found.stopped else [])


def test_deterministic_and_leaves_the_model_as_it_was(model):
    model.train()
    runs = [beam_search(model, PROMPT, beam_width=4, max_new_tokens=8, stop_ids=[STOP],
                        n_best=4) for _ in range(2)]
    assert runs[0] == runs[1]
    assert all(isinstance(h, Hypothesis) for h in runs[0])
    assert model.training
    model.eval()


def test_processors_restrict_every_hypothesis(model):
    def odd_only(prompts, generated, logits):
        banned = torch.arange(VOCAB) % 2 == 0
        return logits.masked_fill(banned, -math.inf)

    found = beam_search(model, PROMPT, beam_width=5, max_new_tokens=6, n_best=5,
                        logits_processors=[odd_only])
    assert all(t % 2 for h in found for t in h.tokens)
    assert all(len(h.tokens) == 6 and not h.stopped for h in found)


@pytest.mark.parametrize("kwargs,message", [
    ({"beam_width": 0}, "beam_width"),
    ({"beam_width": 2, "length_penalty": math.nan}, "length_penalty"),
    ({"beam_width": 2, "n_best": 3}, "n_best"),
    ({"beam_width": 2, "max_new_tokens": 0}, "max_new_tokens"),
    ({"beam_width": 2, "max_new_tokens": 15}, "max_seq_len"),
    ({"beam_width": 2, "stop_ids": [VOCAB]}, "stop_ids"),
])
def test_bad_settings_are_refused(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        beam_search(model, PROMPT, **{"max_new_tokens": 4, **kwargs})


@pytest.mark.parametrize("length_penalty", [-1.0, -0.5, 0.0, 0.5, 1.0, 2.0])
def test_the_early_stopping_bound_is_the_best_any_descendant_can_reach(length_penalty):
    """A live beam (logprob, length) can grow to any length up to max_len, its logprob
    only falling: the bound must be the best score among those, and reached."""
    max_len = 9
    for logprob in (-0.1, -1.0, -7.5):
        for length in range(1, max_len):
            reachable = [logprob / m ** length_penalty for m in range(length + 1, max_len + 1)]
            bound = best_reachable_score(logprob, length, max_len, length_penalty)
            assert bound == pytest.approx(max(reachable))
