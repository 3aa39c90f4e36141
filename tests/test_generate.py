"""Tests for backstory.lm.generate: sampling helper and batched, cached generation."""

from __future__ import annotations

import math

import pytest
import torch

from backstory.lm.generate import generate, sample_logits
from backstory.lm.model import Transformer
from tests.project import model_config

VOCAB = 53
PROMPTS = [[1, 5, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9], [1], [1, 40, 41, 42, 43]]


def make_model(n_kv_heads: int | None = 2, seed: int = 0, max_seq_len: int = 48) -> Transformer:
    """A tiny model whose greedy output is not one repeated token.

    At the standard 0.02 init, tied embeddings make greedy decoding echo the last
    token; wider random weights give varied continuations, so equality tests bite.
    """
    torch.manual_seed(seed)
    cfg = model_config(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, n_kv_heads=n_kv_heads,
                      max_seq_len=max_seq_len)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.4)
    return model


@pytest.fixture(scope="module")
def model() -> Transformer:
    return make_model()


# ---------------------------------------------------------------- sample_logits


def test_sample_logits_temperature_zero_is_argmax() -> None:
    logits = torch.randn(6, VOCAB, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sample_logits(logits, 0.0), logits.argmax(-1))


def test_sample_logits_top_k_keeps_only_k_best() -> None:
    logits = torch.randn(4, VOCAB, generator=torch.Generator().manual_seed(0))
    allowed = torch.topk(logits, 3, dim=-1).indices
    gen = torch.Generator().manual_seed(1)
    for _ in range(50):
        picked = sample_logits(logits, 5.0, top_k=3, generator=gen)  # hot: spreads draws
        assert (allowed == picked[:, None]).any(dim=-1).all()


def test_sample_logits_top_k_larger_than_vocab_is_no_filter() -> None:
    logits = torch.zeros(1, 4)
    gen = torch.Generator().manual_seed(0)
    seen = {int(sample_logits(logits, 1.0, top_k=100, generator=gen)) for _ in range(200)}
    assert seen == {0, 1, 2, 3}


@pytest.mark.parametrize(("top_p", "allowed"), [(0.5, {0}), (0.6, {0, 1}), (0.8, {0, 1}),
                                                (0.81, {0, 1, 2}), (1.0, {0, 1, 2, 3})])
def test_sample_logits_top_p_keeps_smallest_sufficient_set(top_p: float, allowed: set) -> None:
    # probabilities 0.5, 0.3, 0.15, 0.05 in shuffled vocabulary order
    probs = torch.tensor([0.15, 0.5, 0.05, 0.3])
    rank = {1: 0, 3: 1, 0: 2, 2: 3}  # vocabulary id -> rank by probability
    gen = torch.Generator().manual_seed(0)
    picks = torch.stack([sample_logits(probs.log()[None], 1.0, top_p=top_p, generator=gen)
                         for _ in range(400)])
    assert {rank[int(p)] for p in picks} == allowed


def test_sample_logits_frequencies_follow_probabilities() -> None:
    probs = torch.tensor([0.6, 0.3, 0.1])
    gen = torch.Generator().manual_seed(0)
    draws = sample_logits(probs.log().expand(6000, 3), 1.0, generator=gen)
    freq = torch.bincount(draws, minlength=3).float() / 6000
    torch.testing.assert_close(freq, probs, atol=0.03, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [({"temperature": -0.1}, "temperature"), ({"temperature": math.nan}, "temperature"),
     ({"top_k": 0}, "top_k"), ({"top_k": 2.0}, "top_k"), ({"top_p": 0.0}, "top_p"),
     ({"top_p": 1.5}, "top_p")],
)
def test_sample_logits_rejects_bad_settings(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        sample_logits(torch.zeros(1, 4), **kwargs)


def test_sample_logits_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError, match="batch, vocab"):
        sample_logits(torch.zeros(4), 1.0)


# ---------------------------------------------------------------- generate


def test_greedy_is_not_trivial(model: Transformer) -> None:
    # guards the other tests: a model that repeats one token would make them vacuous
    out = generate(model, PROMPTS, max_new_tokens=20, temperature=0)
    assert all(len(set(row)) > 3 for row in out)


@pytest.mark.parametrize("n_kv_heads", [None, 2])
def test_greedy_cached_equals_uncached(n_kv_heads: int | None) -> None:
    model = make_model(n_kv_heads=n_kv_heads)
    cached = generate(model, PROMPTS, max_new_tokens=25, temperature=0)
    plain = generate(model, PROMPTS, max_new_tokens=25, temperature=0, use_cache=False)
    assert cached == plain
    assert all(len(row) == 25 for row in cached)


def test_batched_equals_one_prompt_at_a_time(model: Transformer) -> None:
    batched = generate(model, PROMPTS, max_new_tokens=20, temperature=0)
    single = [generate(model, [p], max_new_tokens=20, temperature=0)[0] for p in PROMPTS]
    assert batched == single


def test_stop_ids_cut_before_first_stop(model: Transformer) -> None:
    free = generate(model, PROMPTS, max_new_tokens=20, temperature=0)
    stop = free[1][6]
    cut = generate(model, PROMPTS, max_new_tokens=20, temperature=0, stop_ids=[stop])
    for row_free, row_cut in zip(free, cut, strict=True):
        expected = row_free[:row_free.index(stop)] if stop in row_free else row_free
        assert row_cut == expected
    assert stop not in cut[1] and len(cut[1]) <= 6


def test_stop_id_inside_prompt_is_not_a_stop(model: Transformer) -> None:
    out = generate(model, [[1, 7, 9]], max_new_tokens=10, temperature=0, stop_ids=[7])
    free = generate(model, [[1, 7, 9]], max_new_tokens=10, temperature=0)
    assert out[0] == (free[0][:free[0].index(7)] if 7 in free[0] else free[0])
    assert len(out[0]) > 0 or free[0][0] == 7


def test_same_seed_same_output_other_seed_differs(model: Transformer) -> None:
    first = generate(model, PROMPTS, max_new_tokens=20, seed=7)
    assert generate(model, PROMPTS, max_new_tokens=20, seed=7) == first
    assert generate(model, PROMPTS, max_new_tokens=20, seed=8) != first


def test_sampled_cached_equals_uncached_for_same_seed(model: Transformer) -> None:
    cached = generate(model, PROMPTS, max_new_tokens=15, temperature=0.8, seed=3)
    plain = generate(model, PROMPTS, max_new_tokens=15, temperature=0.8, seed=3,
                     use_cache=False)
    assert cached == plain


def test_top_k_one_and_tiny_top_p_equal_greedy(model: Transformer) -> None:
    greedy = generate(model, PROMPTS, max_new_tokens=15, temperature=0)
    assert generate(model, PROMPTS, max_new_tokens=15, top_k=1, seed=1) == greedy
    assert generate(model, PROMPTS, max_new_tokens=15, top_p=1e-6, seed=2) == greedy


def test_numpy_ids_accepted_and_edge_sizes(model: Transformer) -> None:
    import numpy as np

    prompt = list(np.array([1, 5, 7], dtype=np.int64))
    assert generate(model, [prompt], max_new_tokens=5, temperature=0) == \
        generate(model, [[1, 5, 7]], max_new_tokens=5, temperature=0)
    assert generate(model, PROMPTS, max_new_tokens=0) == [[], [], [], []]
    assert generate(model, [], max_new_tokens=5) == []


def test_fills_up_to_max_seq_len_exactly() -> None:
    model = make_model(max_seq_len=16)
    out = generate(model, [[1, 2, 3, 4], [1]], max_new_tokens=12, temperature=0)
    assert [len(row) for row in out] == [12, 12]


def test_restores_training_mode() -> None:
    model = make_model()
    model.train()
    generate(model, [[1, 2]], max_new_tokens=3)
    assert model.training


@pytest.mark.parametrize(
    ("prompts", "kwargs", "fragment"),
    [
        ([[1], []], {}, "prompt 1 is empty"),
        ([[1, VOCAB]], {}, "prompt 0 holds ids"),
        ([[1, -1]], {}, "prompt 0 holds ids"),
        ([[1] * 40], {"max_new_tokens": 9}, "max_new_tokens <= 8"),
        ([[1]], {"max_new_tokens": -1}, "max_new_tokens"),
        ([[1]], {"temperature": -1.0}, "temperature"),
        ([[1]], {"top_p": 0.0}, "top_p"),
        ([[1]], {"top_k": 0}, "top_k"),
        ([[1]], {"stop_ids": [VOCAB + 3]}, "stop_ids"),
        ([[1]], {"device": "cuda"}, "model is on cpu"),
    ],
)
def test_generate_rejects_bad_requests(model: Transformer, prompts: list, kwargs: dict,
                                       fragment: str) -> None:
    kwargs = {"max_new_tokens": 4, **kwargs}
    with pytest.raises(ValueError, match=fragment):
        generate(model, prompts, **kwargs)
