"""Tests for backstory.lm.model: config validation, attention, cache, init, optimizer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from backstory.core.errors import SettingError
from backstory.experiment import project_preset
from backstory.lm.families import FAMILIES, new_model
from backstory.lm.losses import chunked_cross_entropy
from backstory.lm.model import (
    MAX_PARAMETERS,
    KVCache,
    ModelConfig,
    RMSNorm,
    Transformer,
    apply_rope,
    rope_tables,
)
from tests.project import REPO, model_config

TINY = dict(vocab_size=61, dim=32, n_layers=2, n_heads=4, max_seq_len=48)


def make_model(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(model_config(**{**TINY, **overrides})).eval()


def random_tokens(shape: tuple[int, ...], vocab: int = TINY["vocab_size"], seed: int = 1
                  ) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- config


def test_stories15m_preset_is_llama2c_15m() -> None:
    shape = project_preset("stories15m", REPO / "conf/base")["model"]
    cfg = model_config(vocab_size=32000, **shape)
    assert (cfg.dim, cfg.n_layers, cfg.n_heads, cfg.kv_heads) == (288, 6, 6, 6)
    assert cfg.head_dim == 48
    assert cfg.ffn_hidden_dim == 768  # int(2 * 4 * 288 / 3) = 768, already a multiple of 32


def test_ffn_hidden_rounds_up_and_override_wins() -> None:
    # int(2 * 4 * 100 / 3) = 266 -> next multiple of 32 is 288
    shape = {"vocab_size": 10, "dim": 100, "n_layers": 1, "n_heads": 10, "max_seq_len": 8}
    assert model_config(**shape, multiple_of=32).ffn_hidden_dim == 288
    assert model_config(**shape, hidden_dim=123).ffn_hidden_dim == 123


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"dim": 30, "n_heads": 4}, "divisible by n_heads"),
        ({"n_heads": 4, "n_kv_heads": 3}, "multiple of n_kv_heads"),
        ({"dim": 36, "n_heads": 4}, "must be even"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"vocab_size": 0}, "vocab_size"),
        ({"n_layers": True}, "n_layers"),
        ({"dim": 32.0}, "dim"),
        ({"max_seq_len": -1}, "max_seq_len"),
        ({"n_kv_heads": 0}, "n_kv_heads"),
        ({"hidden_dim": 0}, "hidden_dim"),
        ({"norm_eps": "1e-5"}, "norm_eps"),
        ({"norm_eps": 0.0}, "norm_eps"),
        ({"rope_theta": -1.0}, "rope_theta"),
    ],
)
def test_config_rejects_bad_values(overrides: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        model_config(**{**TINY, **overrides})


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"max_seq_len": 10**9}, "max_seq_len=1,000,000,000 is above the limit of 65,536"),
        ({"vocab_size": 2**31}, "vocab_size=2,147,483,648 is above the limit"),
        ({"dim": 2**20, "n_heads": 4}, "dim=1048576, .* parameters, above the limit"),
        ({"n_layers": 10**6, "dim": 1024, "n_heads": 8}, "n_layers=1000000, .* above the limit"),
    ],
)
def test_absurd_sizes_are_refused_by_name(overrides: dict, fragment: str) -> None:
    # The config is checked when built, so no model of that size is ever allocated.
    with pytest.raises(SettingError, match=fragment):
        model_config(**{**TINY, **overrides})


@pytest.mark.parametrize("overrides", [{}, {"n_kv_heads": 2}, {"hidden_dim": 100},
                                       {"n_layers": 3, "dim": 48, "n_heads": 6}])
def test_parameter_count_without_building_the_model(overrides: dict) -> None:
    config = model_config(**{**TINY, **overrides})
    assert config.num_parameters == Transformer(config).num_parameters()
    assert MAX_PARAMETERS > model_config(vocab_size=32000, dim=4096, n_layers=32, n_heads=32,
                                         max_seq_len=4096).num_parameters  # a 7B model passes


def test_config_dict_round_trip_and_float_coercion() -> None:
    cfg = model_config(**TINY, n_kv_heads=2, dropout=0)
    assert isinstance(cfg.dropout, float)
    again = ModelConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert again.to_dict() == cfg.to_dict()


def test_from_dict_names_unknown_and_missing_keys() -> None:
    with pytest.raises(SettingError, match="unknown model keys n_embd, zzz; known keys: "):
        ModelConfig.from_dict({**TINY, "n_embd": 3, "zzz": 1})
    with pytest.raises(SettingError, match="model lacks vocab_size, n_layers, max_seq_len"):
        ModelConfig.from_dict({"dim": 32})
    with pytest.raises(SettingError, match="lacks n_heads, which a llama model needs"):
        ModelConfig.from_dict({key: v for key, v in TINY.items() if key != "n_heads"})
    with pytest.raises(ValueError, match="mapping"):
        ModelConfig.from_dict([("vocab_size", 3)])  # type: ignore[arg-type]


# ---------------------------------------------------------------- structure


def test_weights_are_tied_and_no_biases() -> None:
    model = make_model()
    assert model.output.weight is model.tok_embeddings.weight
    assert not any(name.endswith("bias") for name, _ in model.named_parameters())
    assert all(m.bias is None for m in model.modules() if isinstance(m, torch.nn.Linear))
    # a gradient through the output layer reaches the embedding matrix
    _, loss = model(random_tokens((2, 8)), random_tokens((2, 8), seed=2))
    loss.backward()
    assert model.tok_embeddings.weight.grad is not None


def test_parameter_count_formula() -> None:
    cfg = model_config(**TINY, n_kv_heads=2)
    model = Transformer(cfg)
    d, q, hidden = cfg.dim, cfg.head_dim, cfg.ffn_hidden_dim
    attention = d * cfg.n_heads * q * 2 + d * cfg.kv_heads * q * 2  # wq, wo, wk, wv
    per_layer = attention + 3 * d * hidden + 2 * d  # SwiGLU + two norm gains
    expected = cfg.vocab_size * d + cfg.n_layers * per_layer + d  # tied matrix once
    assert model.num_parameters() == expected
    assert model.num_parameters(exclude_embeddings=True) == expected - cfg.vocab_size * d


def test_flops_per_token_formula() -> None:
    model = make_model()
    cfg = model.config
    expected = 6 * model.num_parameters() + 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * 40
    assert model.flops_per_token(40) == expected


def test_init_scales_residual_outputs() -> None:
    model = make_model(dim=64, n_heads=4, n_layers=4)
    scaled = 0.02 / math.sqrt(2 * 4)
    for name, param in model.named_parameters():
        if param.dim() < 2:
            assert torch.all(param == 1.0), name  # RMSNorm gains start at one
            continue
        want = scaled if name.endswith(("wo.weight", "w3.weight")) else 0.02
        assert param.std().item() == pytest.approx(want, rel=0.15), name


def test_rope_tables_not_in_state_dict_and_strict_reload() -> None:
    model = make_model()
    state = model.state_dict()
    assert not any("rope" in key for key in state)
    other = make_model(seed=5)
    other.load_state_dict(state, strict=True)
    tokens = random_tokens((1, 10))
    torch.testing.assert_close(other(tokens)[0], model(tokens)[0])


# ---------------------------------------------------------------- components


def test_rmsnorm_output_has_unit_rms() -> None:
    norm = RMSNorm(16, eps=1e-6)
    x = torch.randn(3, 5, 16) * 7.0
    rms = norm(x).pow(2).mean(-1).sqrt()
    torch.testing.assert_close(rms, torch.ones(3, 5), atol=1e-4, rtol=0)


def test_rope_scores_depend_only_on_relative_position() -> None:
    head_dim = 8
    cos, sin = rope_tables(head_dim, 32, 10000.0)
    cos, sin = cos[:, None], sin[:, None]  # (T, 1, head_dim // 2)
    q, k = torch.randn(head_dim), torch.randn(head_dim)

    def score(m: int, n: int) -> float:
        qs = q.expand(1, 32, 1, head_dim)
        rq = apply_rope(qs, cos, sin)[0, m, 0]
        rk = apply_rope(k.expand(1, 32, 1, head_dim), cos, sin)[0, n, 0]
        return float(rq @ rk)

    assert score(7, 3) == pytest.approx(score(20, 16), abs=1e-4)
    assert score(5, 5) == pytest.approx(float(q @ k), abs=1e-4)  # same position: angle 0
    # position 0 is the identity and every rotation keeps norms
    x = torch.randn(1, 32, 2, head_dim)
    rotated = apply_rope(x, cos, sin)
    torch.testing.assert_close(rotated[:, 0], x[:, 0])
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1))


# ---------------------------------------------------------------- forward


def test_forward_is_causal() -> None:
    model = make_model()
    tokens = random_tokens((2, 20))
    changed = tokens.clone()
    changed[:, 12] = (changed[:, 12] + 1) % TINY["vocab_size"]
    before, after = model(tokens)[0], model(changed)[0]
    torch.testing.assert_close(after[:, :12], before[:, :12])
    assert not torch.allclose(after[:, 12:], before[:, 12:])


@pytest.mark.parametrize("n_kv_heads", [None, 2, 1])
def test_kv_cache_matches_full_recompute(n_kv_heads: int | None) -> None:
    model = make_model(n_kv_heads=n_kv_heads)
    tokens = random_tokens((3, 30))
    full, _ = model(tokens)
    cache = model.new_cache(3)
    pieces = [model(tokens[:, :9], cache=cache)[0], model(tokens[:, 9:14], cache=cache)[0]]
    pieces += [model(tokens[:, t:t + 1], cache=cache)[0] for t in range(14, 30)]
    assert cache.length == 30
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


def test_cache_reset_reuses_buffers() -> None:
    model = make_model()
    tokens = random_tokens((2, 6))
    cache = model.new_cache(2, 10)
    first, _ = model(tokens, cache=cache)
    cache.reset()
    again, _ = model(tokens, cache=cache)
    torch.testing.assert_close(again, first)
    assert cache.length == 6


def test_new_cache_shape_device_dtype() -> None:
    model = make_model(n_kv_heads=2)
    cache = model.new_cache(5, 12)
    assert isinstance(cache, KVCache)
    assert cache.k.shape == (2, 5, 2, 12, 8) == cache.v.shape
    assert cache.k.dtype == torch.float32 and cache.length == 0
    assert model.new_cache(1, dtype=torch.bfloat16).k.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="max_len"):
        model.new_cache(1, TINY["max_seq_len"] + 1)
    with pytest.raises(ValueError, match="batch_size"):
        model.new_cache(0)


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_errors(family: str) -> None:
    torch.manual_seed(0)
    model = new_model(model_config(**TINY, family=family)).eval()
    with pytest.raises(ValueError, match="max_seq_len"):
        model(random_tokens((1, TINY["max_seq_len"] + 1)))
    with pytest.raises(ValueError, match="batch, seq"):
        model(random_tokens((5,)))
    with pytest.raises(ValueError, match="targets shape"):
        model(random_tokens((2, 5)), random_tokens((2, 4)))
    cache = model.new_cache(2, 8)
    with pytest.raises(ValueError, match="rows"):
        model(random_tokens((3, 2)), cache=cache)
    model(random_tokens((2, 6)), cache=cache)
    with pytest.raises(ValueError, match="cannot hold"):
        model(random_tokens((2, 3)), cache=cache)


def test_loss_ignores_minus_one_targets() -> None:
    model = make_model()
    tokens, targets = random_tokens((2, 10)), random_tokens((2, 10), seed=3)
    targets[0, :4] = -1
    targets[1, 7:] = -1
    logits, loss = model(tokens, targets)
    keep = targets != -1
    expected = F.cross_entropy(logits[keep], targets[keep])
    torch.testing.assert_close(loss, expected)
    assert model(tokens)[1] is None


def test_dropout_only_in_training_mode() -> None:
    model = make_model(dropout=0.3)
    tokens = random_tokens((1, 12))
    torch.testing.assert_close(model(tokens)[0], model(tokens)[0])
    model.train()
    torch.manual_seed(0)
    a = model(tokens)[0]
    torch.manual_seed(1)
    assert not torch.allclose(a, model(tokens)[0])


def test_bfloat16_model_keeps_fp32_rope_and_runs() -> None:
    model = make_model()
    tokens = random_tokens((1, 16))
    reference, _ = model(tokens)
    model.to(torch.bfloat16)
    logits, _ = model(tokens)
    assert model.rope_cos.dtype == torch.float32
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(logits.float(), reference, atol=0.05, rtol=0.05)


# ---------------------------------------------------------------- optimizer


def test_optimizer_decays_only_matrices() -> None:
    model = make_model(n_kv_heads=2)
    opt = model.configure_optimizer(lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95),
                                    device_type="cpu")
    assert isinstance(opt, torch.optim.AdamW)
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decayed["params"])
    assert all(p.dim() == 1 for p in plain["params"])
    n_norms = 2 * TINY["n_layers"] + 1
    assert len(plain["params"]) == n_norms
    counted = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert counted == model.num_parameters()  # tied matrix appears once
    assert opt.defaults["lr"] == 1e-3 and opt.defaults["betas"] == (0.9, 0.95)


def test_grouped_query_attention_takes_the_fast_sdpa_path(monkeypatch):
    """On torch >= 2.5 the kv heads go to SDPA as they are, with enable_gqa (no copies)."""
    import torch.nn.functional as F

    from backstory.lm import model as model_module

    assert model_module.SDPA_HAS_GQA  # torch 2.13 here; "2.13" < "2.5" as strings
    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        seen.append((q.shape[1], k.shape[1], kwargs.get("enable_gqa")))
        return real(q, k, v, **kwargs)

    monkeypatch.setattr(model_module.F, "scaled_dot_product_attention", spy)
    model = make_model(n_heads=4, n_kv_heads=2)
    model(torch.zeros(1, 5, dtype=torch.long))
    assert seen and all(entry == (4, 2, True) for entry in seen)
# ---------------------------------------------------------------- speed paths and levers


def pairwise_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The rotation as written before rotate_pairs (four products on strided halves)."""
    x0, x1 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)


def test_rotate_pairs_is_bit_identical_to_the_pairwise_rotation() -> None:
    cos, sin = rope_tables(16, 24, 10000.0)
    cos, sin = cos[:, None], sin[:, None]  # (T, 1, head_dim // 2)
    x = torch.randn(3, 24, 4, 16, requires_grad=True)
    grad = torch.randn(3, 24, 4, 16)
    old = pairwise_rope(x, cos, sin)
    (old_grad,) = torch.autograd.grad(old, x, grad)
    new = apply_rope(x, cos, sin)
    (new_grad,) = torch.autograd.grad(new, x, grad)
    assert torch.equal(new, old)
    assert torch.equal(new_grad, old_grad)


def test_levers_off_change_nothing() -> None:
    plain = make_model()
    off = make_model(qk_norm=False, zero_init_out=False)
    assert plain.config.to_dict() == off.config.to_dict()
    assert "qk_norm" not in off.config.to_dict()  # model.json bytes stay as they were
    state, state_off = plain.state_dict(), off.state_dict()
    assert state.keys() == state_off.keys()
    assert all(torch.equal(state[k], state_off[k]) for k in state)


def test_qk_norm_adds_two_gains_per_layer_and_keeps_the_other_weights() -> None:
    plain, normed = make_model(), make_model(qk_norm=True)
    extra = set(normed.state_dict()) - set(plain.state_dict())
    assert extra == {f"layers.{i}.attention.{n}_norm.weight" for i in range(2) for n in "qk"}
    assert all(torch.equal(normed.state_dict()[k], v) for k, v in plain.state_dict().items())
    assert normed.config.to_dict()["qk_norm"] is True
    assert ModelConfig.from_dict(normed.config.to_dict()) == normed.config
    tokens = random_tokens((2, 12))
    assert not torch.allclose(normed(tokens)[0], plain(tokens)[0])
    # the gains scale the normalised queries: a query's direction, not its size, matters
    q = torch.randn(1, 3, 4, 8)
    torch.testing.assert_close(normed.layers[0].attention.q_norm(q * 9.0),
                               normed.layers[0].attention.q_norm(q), atol=1e-4, rtol=1e-4)


def test_zero_init_out_starts_every_block_as_identity() -> None:
    plain, zeroed = make_model(), make_model(zero_init_out=True)
    for name, param in zeroed.named_parameters():
        if name.endswith(("attention.wo.weight", "feed_forward.w2.weight")):
            assert torch.count_nonzero(param) == 0, name
        else:
            assert torch.equal(param, dict(plain.named_parameters())[name]), name
    tokens = random_tokens((2, 12))
    expected = zeroed.output(zeroed.norm(zeroed.tok_embeddings(tokens)))
    torch.testing.assert_close(zeroed(tokens)[0], expected)


@pytest.mark.parametrize("flag", ["qk_norm", "zero_init_out"])
def test_lever_settings_must_be_booleans(flag: str) -> None:
    with pytest.raises(ValueError, match=flag):
        model_config(**TINY, **{flag: 1})


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_chunked_cross_entropy_matches_the_plain_loss_and_gradients(chunk: int) -> None:
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(40, 16, generator=gen, requires_grad=True)
    weight = torch.randn(29, 16, generator=gen, requires_grad=True)
    targets = torch.randint(0, 29, (40,), generator=gen)
    targets[[0, 5, 39]] = -1
    plain = F.cross_entropy(h @ weight.t(), targets, ignore_index=-1)
    fused = chunked_cross_entropy(h, weight, targets, chunk)
    torch.testing.assert_close(fused, plain)
    plain_grads = torch.autograd.grad(plain * 0.25, (h, weight))
    fused_grads = torch.autograd.grad(fused * 0.25, (h, weight))  # a scaled loss, as accum does
    for got, want in zip(fused_grads, plain_grads, strict=True):
        torch.testing.assert_close(got, want)
    with torch.no_grad():
        torch.testing.assert_close(chunked_cross_entropy(h, weight, targets, chunk), plain)


def test_chunked_cross_entropy_rejects_bad_input() -> None:
    h, weight, targets = torch.zeros(4, 3), torch.zeros(5, 3), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="chunk"):
        chunked_cross_entropy(h, weight, targets, 0)
    with pytest.raises(ValueError, match="targets"):
        chunked_cross_entropy(h, weight, targets[:3], 2)


def test_model_loss_chunk_gives_the_plain_loss_without_logits() -> None:
    model = make_model(n_kv_heads=2)
    tokens, targets = random_tokens((2, 10)), random_tokens((2, 10), seed=3)
    targets[0, :3] = -1
    logits, loss = model(tokens, targets)
    none, fused = model(tokens, targets, loss_chunk=6)
    assert none is None
    torch.testing.assert_close(fused, loss)
    with pytest.raises(ValueError, match="targets shape"):
        model(tokens, targets[:, :4], loss_chunk=6)


def test_bfloat16_attention_on_cpu_runs_in_float32() -> None:
    """The CPU's bf16 flash attention is slower than its fp32 one: bf16 inputs are
    attended in fp32 and the result rounded back once."""
    attention = make_model(n_kv_heads=2).layers[0].attention
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, 4, 16, 8, generator=gen).bfloat16()  # (B, n_heads, T, head_dim)
    k, v = (torch.randn(2, 2, 16, 8, generator=gen).bfloat16() for _ in range(2))
    y = attention._attend(q, k, v, None, True)
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True,
                                              enable_gqa=True).bfloat16()
    assert y.dtype == torch.bfloat16 and torch.equal(y, expected)


def test_bfloat16_autocast_on_cpu_runs_both_loss_paths() -> None:
    """The GPU recipe's mixed precision, on the CPU: same code path, looser tolerance."""
    model = make_model(n_kv_heads=2)
    model.train()
    tokens, targets = random_tokens((2, 16)), random_tokens((2, 16), seed=4)
    _, reference = model(tokens, targets)
    for chunk in (0, 8):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, loss = model(tokens, targets, loss_chunk=chunk)
        assert loss.dtype == torch.float32
        loss.backward()
        torch.testing.assert_close(loss, reference, atol=0.05, rtol=0.02)
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert model.tok_embeddings.weight.grad.dtype == torch.float32


@pytest.mark.parametrize("qk_norm", [False, True])
def test_static_decode_step_matches_full_recompute(qk_norm: bool) -> None:
    model = make_model(n_kv_heads=2, qk_norm=qk_norm)
    tokens = random_tokens((3, 20))
    full, _ = model(tokens)
    cache = model.new_cache(3, 24)
    model(tokens[:, :6], cache=cache)
    steps = []
    for t in range(6, 20):
        position = torch.tensor([cache.length])
        steps.append(model.decode_step(tokens[:, t:t + 1], position, cache))
        cache.length += 1
    torch.testing.assert_close(torch.stack(steps, dim=1), full[:, 6:], atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_compiled_training_step_matches_eager_on_cpu() -> None:
    """torch.compile (inductor, CPU) of a tiny model: the GPU recipe's compile path."""
    model = make_model(n_kv_heads=2, n_layers=1)
    model.train()
    compiled = torch.compile(model)
    tokens, targets = random_tokens((2, 16)), random_tokens((2, 16), seed=4)
    _, eager_loss = model(tokens, targets)
    eager_grads = torch.autograd.grad(eager_loss, list(model.parameters()))
    for chunk in (0, 8):  # the plain loss, and the fused loss's autograd.Function traced
        _, loss = compiled(tokens, targets, loss_chunk=chunk)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        torch.testing.assert_close(loss, eager_loss, atol=1e-5, rtol=1e-5)
        for got, want in zip(grads, eager_grads, strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
