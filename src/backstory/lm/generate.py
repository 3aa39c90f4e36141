"""Sampling from a Transformer: temperature, top-k, top-p, stop ids, batched, KV-cached.

Logits processors (``LogitsProcessor``) change the next-token logits before sampling,
e.g. a constraint that forbids tokens (``backstory.lm.constraints``); beam search
(``backstory.lm.beam``) applies the same processors.

Prompts of different lengths run in lock step: every row sits at the same
position, and a row still inside its prompt is fed its own next prompt token
instead of a sample. Each row therefore sees exactly its own tokens at their
true positions, with no padding and no mask, so batched greedy output equals
per-prompt greedy output. The common prefix (the shortest prompt) is prefilled
in one forward pass.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from numbers import Integral
from typing import Any, Protocol

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from backstory import params
from backstory.lm.decode import Stepper, check_decode_step
from backstory.lm.model import KVCache, Transformer, eval_mode, model_device

logger = logging.getLogger(__name__)


class LogitsProcessor(Protocol):
    """Changes next-token logits given what each row holds so far.

    ``prompts[r]`` and ``generated[r]`` are row r's prompt ids and the ids generated after
    it; ``logits`` is (B, V). Returns new logits (B, V); -inf forbids a token. Must not
    change its inputs, and must give the same answer for the same tokens (beam search
    calls it on reordered rows).
    """

    def __call__(self, prompts: Sequence[Sequence[int]], generated: Sequence[Sequence[int]],
                 logits: torch.Tensor) -> torch.Tensor: ...


def apply_processors(processors: Sequence[LogitsProcessor], prompts: Sequence[Sequence[int]],
                     generated: Sequence[Sequence[int]], logits: torch.Tensor) -> torch.Tensor:
    """``logits`` after every processor in turn; ValueError when one leaves a row no token."""
    for processor in processors:
        logits = processor(prompts, generated, logits)
    blocked = torch.isneginf(logits).all(dim=-1)  # (B,)
    if bool(blocked.any()):
        row = int(blocked.nonzero()[0])
        raise ValueError(f"the logits processors forbid every token for row {row} after "
                         f"{len(generated[row])} generated tokens")
    return logits


@dataclass(frozen=True)
class SamplingConfig:
    """How stories are sampled: the runs' samples, the compare report's stories and
    ``backstory generate`` all use it, with the values of ``run_defaults.evaluate`` in
    conf/base (a run's own evaluate settings, where a preset or variant changes them)."""

    max_new_tokens: int  # per story, capped by the model's context
    temperature: float  # 0: greedy
    top_k: int | None  # None: no top-k filter
    top_p: float | None  # None: no nucleus filter

    def __post_init__(self) -> None:
        params.check_int("sampling", "max_new_tokens", self.max_new_tokens, 1)
        check_sampling(self.temperature, self.top_k, self.top_p)

    @classmethod
    def of(cls, settings: Mapping[str, Any]) -> SamplingConfig:
        """The sampling keys of ``settings`` (e.g. a run's evaluate settings)."""
        return cls(**{f.name: settings[f.name] for f in fields(cls)})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Raise ValueError for sampling settings outside their ranges."""
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) \
            or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), "
                         f"got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)
                              or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1 or None, got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, int | float)
                              or not 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p!r}")


def sample_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick one token id per row of logits (B, V); returns a LongTensor (B,)."""
    check_sampling(temperature, top_k, top_p)
    if logits.dim() != 2:
        raise ValueError(f"logits must be (batch, vocab), got shape {tuple(logits.shape)}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    scaled = logits.float() / temperature  # (B, V)
    if top_k is not None and top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, top_k, dim=-1).values[:, -1:]  # (B, 1)
        scaled = scaled.masked_fill(scaled < kth, -math.inf)
    if top_p is not None and top_p < 1:
        scaled = _nucleus(scaled, top_p)
    probs = torch.softmax(scaled, dim=-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)


def _nucleus(scaled: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches top_p."""
    ordered, order = torch.sort(scaled, dim=-1, descending=True, stable=True)  # (B, V) each
    probs = torch.softmax(ordered, dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of strictly more likely tokens
    drop = mass_before >= top_p  # never the first token: its mass_before is 0 < top_p
    ordered = ordered.masked_fill(drop, -math.inf)
    return torch.full_like(scaled, -math.inf).scatter(-1, order, ordered)


@torch.no_grad()
def generate(model: Transformer, prompts: list[list[int]], *, max_new_tokens: int,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             stop_ids: Sequence[int] = (), seed: int = 0, use_cache: bool = True,
             device: torch.device | str | None = None,
             logits_processors: Sequence[LogitsProcessor] = (),
             decode_step: str = "dynamic") -> list[list[int]]:
    """Continue each prompt; return only the new tokens, cut before the first stop id.

    temperature 0 is greedy decoding. The same seed gives the same output for the same
    prompts and batch. Every prompt plus max_new_tokens must fit in the model's
    max_seq_len (ValueError otherwise; no sliding window, the cache has fixed size).
    use_cache=False recomputes the whole sequence at each step (a reference and
    benchmark baseline). ``logits_processors`` change each step's logits before sampling
    (rows still inside their prompt see an empty ``generated``). ``decode_step`` chooses
    how cached one-token steps run (``backstory.lm.decode``: dynamic, static, compiled or
    cuda_graph); the prompt prefill is always dynamic. The model runs in eval mode and its
    mode is restored after.
    """
    check_sampling(temperature, top_k, top_p)
    device = model_device(model, device)
    check_decode_step(decode_step, device)
    check_request(model, prompts, max_new_tokens, stop_ids)
    if not prompts or max_new_tokens == 0:
        return [[] for _ in prompts]
    tokens, in_prompt = _prompt_grid(prompts, max_new_tokens, device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with decoding(model, device):
        end = _decode(model, tokens, in_prompt, prompts, max_new_tokens,
                      _Sampler(temperature, top_k, top_p, generator, logits_processors),
                      stop_ids, use_cache, decode_step)
    return _collect(tokens[:, :end].tolist(), prompts, max_new_tokens, stop_ids)


@contextlib.contextmanager
def decoding(model: Transformer, device: torch.device) -> Iterator[None]:
    """``model`` in eval mode (its mode restored after), with SDPA kept off cuDNN on CUDA.

    cuDNN attention builds a plan for every new key length (measured ~70 ms each on an
    H100), and decoding meets a new length at every step; flash / memory-efficient
    kernels have no such cost.
    """
    backends = contextlib.nullcontext() if device.type != "cuda" else sdpa_kernel(
        [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
    with eval_mode(model), backends:
        yield


def check_request(model: Transformer, prompts: list[list[int]], max_new_tokens: int,
                  stop_ids: Sequence[int]) -> None:
    """ValueError unless every prompt is non-empty, in the vocabulary and fits the context."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
            or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    vocab, limit = model.config.vocab_size, model.config.max_seq_len
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"prompt {i} is empty; start it with at least the BOS id")
        bad = [t for t in prompt if not _is_id(t, vocab)]
        if bad:
            raise ValueError(f"prompt {i} holds ids outside [0, {vocab}): {bad[:5]}")
        if len(prompt) + max_new_tokens > limit:
            raise ValueError(f"prompt {i} has {len(prompt)} tokens; with max_new_tokens="
                             f"{max_new_tokens} it exceeds max_seq_len={limit}; "
                             f"use max_new_tokens <= {limit - len(prompt)}")
    bad_stops = [s for s in stop_ids if not _is_id(s, vocab)]
    if bad_stops:
        raise ValueError(f"stop_ids outside [0, {vocab}): {bad_stops}")


def _is_id(value: object, vocab: int) -> bool:
    # Integral admits numpy integers from tokenizers; bool is an int but never an id.
    return isinstance(value, Integral) and not isinstance(value, bool) and 0 <= value < vocab


def _prompt_grid(prompts: list[list[int]], max_new_tokens: int, device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token grid (B, longest + max_new) holding the prompts, and where prompt tokens are."""
    width = max(len(p) for p in prompts) + max_new_tokens
    tokens = torch.zeros(len(prompts), width, dtype=torch.long)
    in_prompt = torch.zeros(len(prompts), width, dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        tokens[row, :len(prompt)] = torch.tensor([int(t) for t in prompt], dtype=torch.long)
        in_prompt[row, :len(prompt)] = True
    return tokens.to(device), in_prompt.to(device)


class _Sampler:
    """Picks each step's tokens: processors first, then temperature / top-k / top-p."""

    def __init__(self, temperature: float, top_k: int | None, top_p: float | None,
                 generator: torch.Generator, processors: Sequence[LogitsProcessor]) -> None:
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.generator = generator
        self.processors = tuple(processors)

    def __call__(self, logits: torch.Tensor, tokens: torch.Tensor, pos: int,
                 prompts: list[list[int]]) -> torch.Tensor:
        if self.processors:
            rows = tokens[:, :pos].tolist()
            generated = [row[len(prompt):] for row, prompt in zip(rows, prompts, strict=True)]
            logits = apply_processors(self.processors, prompts, generated, logits)
        return sample_logits(logits, self.temperature, self.top_k, self.top_p, self.generator)


def _decode(model: Transformer, tokens: torch.Tensor, in_prompt: torch.Tensor,
            prompts: list[list[int]], max_new_tokens: int, sampler: _Sampler,
            stop_ids: Sequence[int], use_cache: bool, decode_step: str) -> int:
    """Fill `tokens` in place, position by position; return the first unfilled position."""
    B, width = tokens.shape
    # Static steps keep one cache size (max_seq_len) so a compiled step is reused.
    cache_len = width if decode_step == "dynamic" else None
    cache = model.new_cache(B, cache_len) if use_cache else None
    stepper = None  # dynamic steps: the model's own cached forward, below
    if cache is not None and decode_step != "dynamic":
        stepper = Stepper(model, cache, decode_step)
    lengths = torch.tensor([len(p) for p in prompts], device=tokens.device)
    stops = torch.tensor([int(s) for s in stop_ids], dtype=torch.long, device=tokens.device)
    stopped = torch.zeros(B, dtype=torch.bool, device=tokens.device)
    for pos in range(min(len(p) for p in prompts), width):
        logits = _next_logits(model, tokens, pos, cache, stepper)  # (B, V)
        sampled = sampler(logits, tokens, pos, prompts)  # (B,)
        fresh = ~in_prompt[:, pos]
        tokens[:, pos] = torch.where(fresh, sampled, tokens[:, pos])
        stopped |= fresh & torch.isin(sampled, stops)
        full = pos + 1 >= lengths + max_new_tokens
        if bool((stopped | full).all()):
            return pos + 1
    return width


def _next_logits(model: Transformer, tokens: torch.Tensor, pos: int,
                 cache: KVCache | None, stepper: Stepper | None = None) -> torch.Tensor:
    """Logits (B, V) predicting position `pos` from tokens[:, :pos]."""
    if stepper is not None and cache is not None and pos - cache.length == 1:
        return stepper(tokens[:, pos - 1:pos])  # one new token: the chosen decode step
    if cache is None:
        window = tokens[:, :pos]  # (B, pos): full recompute
    else:
        window = tokens[:, cache.length:pos]  # (B, new): prefill once, then one token
    logits, _ = model(window, cache=cache)  # (B, T, V)
    return logits[:, -1, :]


def _collect(rows: list[list[int]], prompts: list[list[int]], max_new_tokens: int,
             stop_ids: Sequence[int]) -> list[list[int]]:
    """The new tokens of each row, cut before its first stop id."""
    stops = set(stop_ids)
    out = []
    for row, prompt in zip(rows, prompts, strict=True):
        new = row[len(prompt):len(prompt) + max_new_tokens]
        cut = next((i for i, t in enumerate(new) if t in stops), len(new))
        out.append(new[:cut])
    return out
