"""Decode steps for cached generation: static and compiled steps equal a full recompute."""

from __future__ import annotations

import pytest
import torch

from backstory.lm.decode import Stepper, compiled_step
from backstory.lm.generate import generate
from backstory.lm.model import Transformer
from tests.project import model_config

VOCAB = 53
PROMPTS = [[1, 5, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9], [1], [1, 40, 41, 42, 43]]


@pytest.fixture(autouse=True)
def one_thread():
    """One thread: one-token steps of a tiny model gain nothing from more, and lose a lot
    on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_model(**overrides) -> Transformer:
    """Wide random weights, so that greedy continuations vary and equality tests bite."""
    torch.manual_seed(0)
    settings = dict(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                    max_seq_len=40)
    model = Transformer(model_config(**{**settings, **overrides})).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.4)
    return model


def stepped_logits(model: Transformer, tokens: torch.Tensor, prefill: int, mode: str
                   ) -> torch.Tensor:
    """Logits (B, T - prefill, V) of each position after the prefill, one step at a time."""
    cache = model.new_cache(tokens.shape[0])
    with torch.no_grad():
        model(tokens[:, :prefill], cache=cache)
        step = Stepper(model, cache, mode)
        out = [step(tokens[:, t:t + 1]) for t in range(prefill, tokens.shape[1])]
    assert cache.length == tokens.shape[1]
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_eager_steps_match_full_recompute(mode: str) -> None:
    model = make_model()
    tokens = torch.randint(0, VOCAB, (3, 25), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full, _ = model(tokens)
    got = stepped_logits(model, tokens, 5, mode)
    torch.testing.assert_close(got, full[:, 5:], atol=1e-4, rtol=1e-4)


def test_static_step_fills_only_its_own_slot() -> None:
    model = make_model()
    cache = model.new_cache(2)
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3], [1, 4, 5]]), cache=cache)
        before = cache.k.clone()
        Stepper(model, cache, "static")(torch.tensor([[7], [8]]))
    changed = (cache.k != before).any(dim=(0, 1, 2, 4))  # per position
    assert changed.nonzero().flatten().tolist() == [3]


def test_static_generation_equals_dynamic_generation() -> None:
    model = make_model()
    dynamic = generate(model, PROMPTS, max_new_tokens=20, temperature=0.0)
    static = generate(model, PROMPTS, max_new_tokens=20, temperature=0.0, decode_step="static")
    sampled = generate(model, PROMPTS, max_new_tokens=20, seed=3, decode_step="static")
    assert static == dynamic
    assert sampled == generate(model, PROMPTS, max_new_tokens=20, seed=3)
    assert len({tuple(row) for row in dynamic}) > 1


def test_bad_decode_steps_are_refused() -> None:
    model = make_model()
    with pytest.raises(ValueError, match="decode_step"):
        generate(model, PROMPTS, max_new_tokens=2, decode_step="fast")
    with pytest.raises(ValueError, match="CUDA"):
        generate(model, PROMPTS, max_new_tokens=2, decode_step="cuda_graph")


@pytest.mark.slow
def test_compiled_step_matches_full_recompute_and_is_built_once() -> None:
    """torch.compile (inductor, CPU) of the static step: the GPU decode path, on a CPU."""
    model = make_model(n_layers=1)
    tokens = torch.randint(0, VOCAB, (4, 30), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full, _ = model(tokens)
    got = stepped_logits(model, tokens, 4, "compiled")
    torch.testing.assert_close(got, full[:, 4:], atol=1e-4, rtol=1e-4)
    assert compiled_step(model) is compiled_step(model)
    # generate() reuses the same compiled step: one cache size, so no recompilation
    greedy = generate(model, PROMPTS, max_new_tokens=12, temperature=0.0, decode_step="compiled")
    assert greedy == generate(model, PROMPTS, max_new_tokens=12, temperature=0.0)
