"""A Llama-architecture decoder (the llama2.c layout), its config and a KV cache.

Pre-norm RMSNorm, rotary position embeddings on interleaved pairs, SwiGLU
feed-forward, grouped-query attention, no biases, tied embedding/output weights.
Parameter names follow llama2.c (tok_embeddings, layers.N.attention.wq, ...) so
weights map one to one onto its export format.

Two optional levers from the speedrun records, off by default so that a model without
them is llama2.c's exactly (same parameters, same initial weights, same arithmetic):
``qk_norm`` (an RMSNorm over each head's queries and keys before RoPE; adds the
parameters ``attention.q_norm.weight`` and ``attention.k_norm.weight``, which llama2.c's
format lacks) and ``zero_init_out`` (the residual-branch outputs ``wo`` and ``w2`` start
at zero, so every block starts as the identity).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.torch_version import TorchVersion

from backstory import params
from backstory.core.errors import SettingError
from backstory.lm.losses import chunked_cross_entropy

logger = logging.getLogger(__name__)

# SDPA learned `enable_gqa` in torch 2.5; older versions repeat the kv heads instead.
# TorchVersion compares as a version against a tuple (a plain str would not: "2.13" < "2.5").
SDPA_HAS_GQA = TorchVersion(torch.__version__) >= (2, 5)

# Model families: the Llama decoder here, GRU and LSTM language models in
# backstory.lm.recurrent (built by backstory.lm.families.new_model).
FAMILIES = ("llama", "gru", "lstm")
_INT_FIELDS = ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "multiple_of",
               "hidden_dim", "max_seq_len")
_OPTIONAL_INT_FIELDS = ("n_heads", "n_kv_heads", "hidden_dim")
_FLOAT_FIELDS = ("norm_eps", "rope_theta", "dropout")
# Bounds far above any model this project trains, so that a typo (an extra zero or three)
# is refused by name before tensors are allocated instead of exhausting memory: the RoPE
# tables and a generation cache grow with max_seq_len (TinyStories documents are under
# ~1,000 tokens), the embedding with vocab_size, everything with the parameter count.
MAX_SEQ_LEN = 1 << 16
MAX_VOCAB_SIZE = 1 << 20
MAX_PARAMETERS = 1 << 34  # ~17 billion: 64 GiB of float32 weights before any optimizer state

# Levers added after the first model format, with the value every model written before
# them used: a model dict (model.json, a checkpoint, an import) without them is read with
# these, and they are written only when they differ, so a model without them keeps its
# bytes and its resumable runs. (New runs take theirs from run_defaults.model in conf/base.)
MODELS_BEFORE_LEVERS = {"qk_norm": False, "zero_init_out": False, "family": "llama"}
_BOOL_LEVERS = ("qk_norm", "zero_init_out")


@dataclass(kw_only=True)
class ModelConfig:
    """Shape of the model: the project's presets in conf/base say it, and ``from_dict``
    refuses a mapping that leaves a shape key out. The defaults are llama2.c's constants
    (not project settings), and None where a value follows from the others."""

    vocab_size: int
    dim: int  # width of the residual stream
    n_layers: int
    n_heads: int | None = None  # llama: required; the recurrent families have no heads
    n_kv_heads: int | None = None  # None -> n_heads; fewer -> grouped-query attention
    multiple_of: int = 32  # SwiGLU hidden width is rounded up to this (matmul-friendly)
    hidden_dim: int | None = None  # explicit SwiGLU hidden width, overrides the rule
    max_seq_len: int  # longest sequence; sizes the RoPE tables and the cache
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    dropout: float = 0.0
    qk_norm: bool  # RMSNorm on each head's queries and keys (modded-nanogpt)
    zero_init_out: bool  # wo and w2 start at zero: each block starts as identity
    family: str  # llama | gru | lstm; recurrent families use dim and n_layers only

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise SettingError(f"model config family={self.family!r} is unknown; use one of "
                               f"{', '.join(FAMILIES)}")
        if self.family == "llama" and self.n_heads is None:
            raise SettingError("model config lacks n_heads, which a llama model needs")
        for name in _INT_FIELDS:
            params.check_int("model", name, getattr(self, name), 1,
                             optional=name in _OPTIONAL_INT_FIELDS)
        params.check_number("model", "norm_eps", self.norm_eps, 0.0, low_open=True)
        params.check_number("model", "rope_theta", self.rope_theta, 0.0, low_open=True)
        params.check_number("model", "dropout", self.dropout, 0.0, 1.0, high_open=True)
        for name in _FLOAT_FIELDS:
            setattr(self, name, float(getattr(self, name)))
        if self.family == "llama":
            self._check_attention()
        for name in _BOOL_LEVERS:
            if not isinstance(getattr(self, name), bool):
                raise SettingError(f"model config {name} must be true or false, "
                                   f"got {getattr(self, name)!r}")
        self._check_size()

    def _check_attention(self) -> None:
        if self.dim % self.n_heads:
            raise SettingError(f"model config dim={self.dim} must be divisible by "
                               f"n_heads={self.n_heads}")
        if self.n_heads % self.kv_heads:
            raise SettingError(
                f"model config n_heads={self.n_heads} must be a multiple of "
                f"n_kv_heads={self.kv_heads}"
            )
        if self.head_dim % 2:
            raise SettingError(
                f"head_dim = dim / n_heads = {self.head_dim} must be even for RoPE; "
                "change model config dim or n_heads"
            )

    def _check_size(self) -> None:
        """Refuse sizes no machine holds (a typo), before anything is allocated."""
        for name, limit in (("max_seq_len", MAX_SEQ_LEN), ("vocab_size", MAX_VOCAB_SIZE)):
            value = getattr(self, name)
            if value > limit:
                raise SettingError(
                    f"model config {name}={value:,} is above the limit of {limit:,}; "
                    "is it a typo?"
                )
        if self.num_parameters > MAX_PARAMETERS:
            raise SettingError(
                f"model config dim={self.dim}, n_layers={self.n_layers}, vocab_size="
                f"{self.vocab_size}, hidden_dim={self.ffn_hidden_dim} describe "
                f"{self.num_parameters:,} parameters, above the limit of {MAX_PARAMETERS:,}; "
                "is one of them a typo?"
            )

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads after resolving None."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def ffn_hidden_dim(self) -> int:
        """SwiGLU hidden width: 2/3 of 4*dim (keeps FLOPs of a 4x MLP), rounded up."""
        if self.hidden_dim is not None:
            return self.hidden_dim
        hidden = int(2 * 4 * self.dim / 3)
        return self.multiple_of * math.ceil(hidden / self.multiple_of)

    @property
    def num_parameters(self) -> int:
        """Parameters of the model this config describes (tied embedding counted once),
        computed without building it."""
        if self.family != "llama":
            gates = 3 if self.family == "gru" else 4
            # per layer: input and hidden matrices and their two bias vectors per gate
            layer = gates * (2 * self.dim * self.dim + 2 * self.dim)
            return self.vocab_size * self.dim + self.n_layers * layer + self.dim
        attention = 2 * self.dim * (self.n_heads + self.kv_heads) * self.head_dim
        layer = attention + 3 * self.dim * self.ffn_hidden_dim + 2 * self.dim
        if self.qk_norm:
            layer += 2 * self.head_dim
        return self.vocab_size * self.dim + self.n_layers * layer + self.dim

    def to_dict(self) -> dict[str, Any]:
        """The settings; a lever at its old value is left out (``MODELS_BEFORE_LEVERS``)."""
        return {k: v for k, v in asdict(self).items()
                if not (k in MODELS_BEFORE_LEVERS and v == MODELS_BEFORE_LEVERS[k])}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        """Build from a mapping (parameters, model.json, a checkpoint): unknown and missing
        keys are errors naming the key; a lever left out has its ``MODELS_BEFORE_LEVERS``
        value."""
        if isinstance(d, Mapping):
            d = {**MODELS_BEFORE_LEVERS, **d}
        return params.build(cls, d, "model")


class KVCache:
    """Keys and values of past positions for every layer, filled by Transformer.forward."""

    def __init__(self, n_layers: int, batch_size: int, n_kv_heads: int, max_len: int,
                 head_dim: int, *, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
        shape = (n_layers, batch_size, n_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # positions filled so far, shared by all rows

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def reset(self) -> None:
        """Forget all positions (the buffers are reused, not cleared)."""
        self.length = 0

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, n_kv_heads, T, head_dim) after `length`; return all keys/values."""
        end = self.length + k.shape[2]
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        # (B, n_kv_heads, end, head_dim), in the caller's dtype (autocast may differ)
        return self.k[layer, :, :, :end].to(k.dtype), self.v[layer, :, :, :end].to(v.dtype)

    def store_at(self, layer: int, k: torch.Tensor, v: torch.Tensor, position: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Static-shape store for one new position held in a tensor (decode steps).

        Writes k, v (B, n_kv_heads, 1, head_dim) at ``position`` (a 1-element int64
        tensor on the cache's device) and returns all ``max_len`` keys and values with
        the mask (1, 1, 1, max_len) of the positions filled so far. Shapes never depend
        on the position, so a compiled step does not recompile and a CUDA graph can
        replay it; ``length`` is the caller's to advance.
        """
        self.k[layer].index_copy_(2, position, k.to(self.k.dtype))
        self.v[layer].index_copy_(2, position, v.to(self.v.dtype))
        visible = torch.arange(self.max_len, device=position.device) <= position
        return self.k[layer].to(k.dtype), self.v[layer].to(v.dtype), visible[None, None, None]


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotation angles, each (max_len, head_dim // 2), float32, on the
    CPU whatever device is the default: on the meta device (the checkpoint's shape check)
    these ops would run torch's Python references, which import its compiler (1.4 s)."""
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device="cpu")
                            / head_dim)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32, device="cpu"), freqs)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x0, x1), (x2, x3), ... of x (B, T, H, head_dim).

    cos and sin are (T, 1, head_dim // 2), broadcasting over batch and heads.
    """
    return rotate_pairs(x, *pair_tables(cos, sin))


def pair_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tables (..., head_dim // 2) widened to (..., head_dim) for ``rotate_pairs``.

    cos is repeated per pair; sin becomes (-sin, +sin) per pair, so the rotation is
    ``x * cos + swapped(x) * sin`` with swapped(x) = (x1, x0, x3, x2, ...).
    """
    return cos.repeat_interleave(2, dim=-1), torch.stack((-sin, sin), dim=-1).flatten(-2)


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE with widened tables: (x0 cos - x1 sin, x1 cos + x0 sin) per pair.

    Two multiplies and an add over whole tensors instead of four multiplies on strided
    halves and a stack: about half the time of the pairwise form on CPU and bit-identical
    to it (a + (-b) is a - b, and the sum is commutative), forward and backward.
    """
    xf = x.float()
    swapped = xf.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (B, T, H, head_dim)
    return (xf * cos + swapped * sin).type_as(x)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fp32 statistics: bf16 sums of squares lose too much precision.
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return normed.type_as(x) * self.weight


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
        if cfg.qk_norm:
            # One gain vector per role, shared by the heads (modded-nanogpt's QK-norm).
            self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
        self.qk_norm = cfg.qk_norm
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None, layer: int,
                position: torch.Tensor | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim)  # (B, T, n_heads, head_dim)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, n_kv_heads, head_dim)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = rotate_pairs(q, cos, sin), rotate_pairs(k, cos, sin)
        q = q.transpose(1, 2)  # (B, n_heads, T, head_dim)
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # (B, n_kv_heads, T, head_dim)
        mask, causal = None, True
        if cache is not None and position is not None:
            k, v, mask = cache.store_at(layer, k, v, position)  # all max_len slots
            causal = False
        elif cache is not None:
            start = cache.length
            k, v = cache.store(layer, k, v)  # (B, n_kv_heads, start + T, head_dim)
            mask, causal = _cached_mask(start, T, x.device)
        y = self._attend(q, k, v, mask, causal)  # (B, n_heads, T, head_dim)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, dim)
        return self.resid_dropout(self.wo(y))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
        gqa = self.n_kv_heads != self.n_heads
        extra = {}
        if gqa and SDPA_HAS_GQA:
            extra["enable_gqa"] = True
        elif gqa:
            groups = self.n_heads // self.n_kv_heads
            k = k.repeat_interleave(groups, dim=1)  # (B, n_heads, S, head_dim)
            v = v.repeat_interleave(groups, dim=1)
        dropout = self.dropout if self.training else 0.0
        if q.device.type == "cpu" and q.dtype == torch.bfloat16:
            # The CPU's flash attention is slower in bf16 than in fp32 (forward + backward
            # 46 vs 32 ms a layer for the CPU preset, docs/benchmarks.md), and more exact.
            y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask,
                                               dropout_p=dropout, is_causal=causal, **extra)
            return y.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                              is_causal=causal, **extra)


def _cached_mask(start: int, T: int, device: torch.device) -> tuple[torch.Tensor | None, bool]:
    """Mask for T new queries after `start` cached keys: (mask, is_causal) for SDPA."""
    if start == 0:
        return None, True  # plain causal prefill
    if T == 1:
        return None, False  # one new token may see every key
    # SDPA's is_causal aligns top-left, wrong when keys outnumber queries.
    rows = torch.arange(T, device=device)[:, None]  # (T, 1)
    cols = torch.arange(start + T, device=device)[None, :]  # (1, start + T)
    return cols <= rows + start, False  # (T, start + T), True = may attend


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        hidden = cfg.ffn_hidden_dim
        self.w1 = nn.Linear(cfg.dim, hidden, bias=False)  # gate
        self.w2 = nn.Linear(hidden, cfg.dim, bias=False)  # down (output)
        self.w3 = nn.Linear(cfg.dim, hidden, bias=False)  # up
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None, layer: int,
                position: torch.Tensor | None = None) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin, cache, layer, position)
        return h + self.feed_forward(self.ffn_norm(h))


class TiedLM(nn.Module):
    """What every family shares (``backstory.lm.families``): an embedding tied to the
    output layer (``tok_embeddings``, ``output``) after a final ``norm``, the loss, the
    cache's size checks, the optimizer and the parameter count."""

    config: ModelConfig
    tok_embeddings: nn.Embedding
    norm: RMSNorm
    output: nn.Linear

    def _check_tokens(self, tokens: torch.Tensor, cache: Any) -> int:
        """The position ``tokens`` (B, T) start at: after those of ``cache`` (a KVCache, a
        RecurrentState or None), which must hold them, as the model must."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (batch, seq), got shape {tuple(tokens.shape)}")
        B, T = tokens.shape
        start = 0 if cache is None else cache.length
        if T == 0:
            raise ValueError("tokens must hold at least one position")
        if start + T > self.config.max_seq_len:
            raise ValueError(f"sequence of {start + T} positions exceeds max_seq_len="
                             f"{self.config.max_seq_len}")
        if cache is not None and cache.batch_size != B:
            raise ValueError(f"cache holds {cache.batch_size} rows, tokens have {B}")
        if cache is not None and start + T > cache.max_len:
            raise ValueError(f"cache of {cache.max_len} positions cannot hold {start + T}")
        return start

    def _logits_and_loss(self, h: torch.Tensor, targets: torch.Tensor | None, loss_chunk: int
                         ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Logits and loss of the last hidden states ``h`` (B, T, dim): see ``forward``."""
        B, T = h.shape[:2]
        if targets is not None and tuple(targets.shape) != (B, T):
            raise ValueError(f"targets shape {tuple(targets.shape)} != tokens shape {(B, T)}")
        if targets is not None and loss_chunk > 0:
            flat = self.norm(h).reshape(B * T, -1)  # (B * T, dim)
            return None, chunked_cross_entropy(flat, self.output.weight, targets.reshape(-1),
                                               loss_chunk)
        logits = self.output(self.norm(h))  # (B, T, vocab_size)
        if targets is None:
            return logits, None
        flat = logits.float().view(-1, logits.shape[-1])  # (B * T, vocab_size)
        return logits, F.cross_entropy(flat, targets.reshape(-1), ignore_index=-1)

    def _check_cache_size(self, batch_size: int, max_len: int | None) -> int:
        """``max_len`` (default max_seq_len) once it and ``batch_size`` fit the model."""
        max_len = self.config.max_seq_len if max_len is None else max_len
        if not 1 <= max_len <= self.config.max_seq_len:
            raise ValueError(f"cache max_len must be in [1, {self.config.max_seq_len}], "
                             f"got {max_len}")
        if batch_size < 1:
            raise ValueError(f"cache batch_size must be >= 1, got {batch_size}")
        return max_len

    def configure_optimizer(self, *, lr: float, weight_decay: float,
                            betas: tuple[float, float], device_type: str) -> torch.optim.AdamW:
        """llama2.c's AdamW: trainable matrices and embeddings (dim >= 2) decay, biases and
        norm gains (dim < 2) do not."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        logger.info("optimizer: %d decayed tensors (%d params), %d not decayed (%d params)",
                    len(decay), sum(p.numel() for p in decay),
                    len(no_decay), sum(p.numel() for p in no_decay))
        groups = [{"params": decay, "weight_decay": weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        fused = device_type == "cuda" and torch.cuda.is_available()
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)

    def num_parameters(self, *, exclude_embeddings: bool = False) -> int:
        """Parameter count, the tied embedding/output matrix counted once (or not at all
        with ``exclude_embeddings``)."""
        total = sum(p.numel() for p in self.parameters())
        return total - self.tok_embeddings.weight.numel() if exclude_embeddings else total


def model_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    """The device ``model`` is on; a different requested ``device`` is an error, not a
    silent move."""
    have = model.tok_embeddings.weight.device
    if device is None:
        return have
    wanted = torch.device(device)
    if wanted.type != have.type or wanted.index not in (None, have.index):
        raise ValueError(f"device={wanted} but the model is on {have}; "
                         "move the model with model.to(device) first")
    return have



@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode, its previous mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)

class Transformer(TiedLM):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.output.weight = self.tok_embeddings.weight  # tied: one matrix, two uses
        cos, sin = pair_tables(*rope_tables(config.head_dim, config.max_seq_len,
                                            config.rope_theta))
        # (max_seq_len, head_dim), derived from the config, so kept out of the state_dict.
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
        # GPT-2's smaller init for residual-branch projections. llama2.c applies it to
        # wo and w3 (w3 is the up projection, not the output w2); we follow llama2.c.
        scaled_std = 0.02 / math.sqrt(2 * self.config.n_layers)
        for name, param in self.named_parameters():
            if name.endswith(("attention.wo.weight", "feed_forward.w3.weight")):
                nn.init.normal_(param, mean=0.0, std=scaled_std)
        if self.config.zero_init_out:
            # After the draws above, so every other weight is the same as without the lever.
            with torch.no_grad():
                for layer in self.layers:
                    layer.attention.wo.weight.zero_()
                    layer.feed_forward.w2.weight.zero_()

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None, *,
                cache: KVCache | None = None, loss_chunk: int = 0
                ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Logits (B, T, V) and mean cross-entropy over targets != -1 (None without targets).

        With a cache, `tokens` are the positions right after `cache.length`; the cache
        is filled and advanced by T. With targets and ``loss_chunk`` > 0 the output layer
        and the loss run fused, ``loss_chunk`` positions at a time
        (``backstory.lm.losses``): the logits are never materialised and None is
        returned in their place.
        """
        start = self._check_tokens(tokens, cache)
        T = tokens.shape[1]
        cos, sin = self._rope(start, start + T)
        h = self.dropout(self.tok_embeddings(tokens))  # (B, T, dim)
        for i, layer in enumerate(self.layers):
            h = layer(h, cos, sin, cache, i)
        if cache is not None:
            cache.length += T
        return self._logits_and_loss(h, targets, loss_chunk)

    def decode_step(self, tokens: torch.Tensor, position: torch.Tensor, cache: KVCache
                    ) -> torch.Tensor:
        """Logits (B, V) after one new token per row at ``position``, static shapes.

        ``tokens`` (B, 1); ``position`` a 1-element int64 tensor on the model's device
        (the number of positions already cached). Writes the new keys and values into
        ``cache`` but leaves ``cache.length`` to the caller: nothing here depends on a
        Python value that changes from step to step, so ``torch.compile`` builds it once
        and a CUDA graph can capture it (see ``backstory.lm.decode``). Logits equal the
        dynamic cached path's and a full recompute's up to float rounding.
        """
        self._keep_rope_fp32()
        cos = self.rope_cos.index_select(0, position)[:, None]  # (1, 1, head_dim)
        sin = self.rope_sin.index_select(0, position)[:, None]
        h = self.tok_embeddings(tokens)  # (B, 1, dim)
        for i, layer in enumerate(self.layers):
            h = layer(h, cos, sin, cache, i, position)
        return self.output(self.norm(h))[:, -1]  # (B, vocab_size)

    def _rope(self, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        self._keep_rope_fp32()
        # (T, 1, head_dim): broadcasts over the heads of (B, T, H, head_dim)
        return self.rope_cos[start:end, None], self.rope_sin[start:end, None]

    def _keep_rope_fp32(self) -> None:
        if self.rope_cos.dtype != torch.float32:
            # model.to(bfloat16) also casts buffers; rebuild full-precision angles.
            cos, sin = pair_tables(*rope_tables(self.config.head_dim, self.config.max_seq_len,
                                                self.config.rope_theta))
            self.rope_cos = cos.to(self.rope_cos.device)
            self.rope_sin = sin.to(self.rope_sin.device)

    def new_cache(self, batch_size: int, max_len: int | None = None, *,
                  device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> KVCache:
        """An empty cache on the model's device and dtype unless told otherwise."""
        max_len = self._check_cache_size(batch_size, max_len)
        param = self.tok_embeddings.weight
        cfg = self.config
        return KVCache(cfg.n_layers, batch_size, cfg.kv_heads, max_len, cfg.head_dim,
                       device=param.device if device is None else device,
                       dtype=param.dtype if dtype is None else dtype)

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward): 6N + 12*L*H*Q*T, as in PaLM."""
        cfg = self.config
        return 6.0 * self.num_parameters() + 12.0 * cfg.n_layers * cfg.n_heads * \
            cfg.head_dim * seq_len

