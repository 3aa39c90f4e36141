"""One-token decode steps for KV-cached generation: dynamic, static, compiled, CUDA graph.

A small model decoding one token per step on a GPU is bound by kernel launches, not by
arithmetic (the dynamic cached step measured only 1.3x faster than recomputing the
whole prefix on an H100). The remedy is a step whose shapes never change, so that it
can be compiled once (``torch.compile`` fuses its elementwise kernels) or captured
once in a CUDA graph and replayed with a single launch. ``Transformer.decode_step``
is that step: it writes the new key and value at a position held in a tensor and
attends over all ``max_len`` cache slots with a mask.

Modes (``DECODE_STEPS``):

- ``dynamic``: ``model(tokens, cache=cache)``, keys sliced to the filled length;
- ``static``: ``model.decode_step`` run eagerly (the code path the others build on);
- ``compiled``: ``torch.compile`` of the static step (works on CPU and CUDA);
- ``cuda_graph``: the static step captured in a CUDA graph on its first call and
  replayed after (CUDA only).

All give the same logits up to float rounding (tested on CPU for all but
``cuda_graph``, which needs a GPU: ``benchmarks/bench_decode_gpu.py`` checks it there).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch

from backstory.lm.model import KVCache, Transformer

DECODE_STEPS = ("dynamic", "static", "compiled", "cuda_graph")
_COMPILED: weakref.WeakKeyDictionary[Transformer, Callable] = weakref.WeakKeyDictionary()


def check_decode_step(mode: str, device: torch.device) -> None:
    if mode not in DECODE_STEPS:
        raise ValueError(f"decode_step={mode!r} is unknown; use one of {DECODE_STEPS}")
    if mode == "cuda_graph" and device.type != "cuda":
        raise ValueError(f"decode_step='cuda_graph' needs a CUDA device, the model is on {device}")


def compiled_step(model: Transformer) -> Callable:
    """``torch.compile`` of ``model.decode_step``, built once per model and reused."""
    step = _COMPILED.get(model)
    if step is None:
        step = torch.compile(model.decode_step, dynamic=False, fullgraph=True)
        _COMPILED[model] = step
    return step


class Stepper:
    """Advances a KV cache one token per call with the chosen step; returns logits (B, V)."""

    def __init__(self, model: Transformer, cache: KVCache, mode: str) -> None:
        device = model.tok_embeddings.weight.device
        check_decode_step(mode, device)
        self.model, self.cache, self.mode = model, cache, mode
        self._position = torch.zeros(1, dtype=torch.long, device=device)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._token: torch.Tensor | None = None  # the graph's input buffer
        self._logits: torch.Tensor | None = None  # the graph's output buffer
        self._step = compiled_step(model) if mode == "compiled" else model.decode_step

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed ``tokens`` (B, 1) at position ``cache.length``; the next-token logits."""
        if self.mode == "dynamic":
            logits, _ = self.model(tokens, cache=self.cache)
            return logits[:, -1]
        if self.cache.length >= self.cache.max_len:
            raise ValueError(f"cache of {self.cache.max_len} positions is full")
        # Writes into the existing buffers: no new allocation, no host sync.
        self._position.fill_(self.cache.length)
        if self.mode == "cuda_graph":
            logits = self._replay(tokens)
        else:
            logits = self._step(tokens, self._position, self.cache)
        self.cache.length += 1
        return logits

    def _replay(self, tokens: torch.Tensor) -> torch.Tensor:
        if self._graph is None:
            self._token = tokens.clone()
            self._capture()
        else:
            self._token.copy_(tokens)
        self._graph.replay()
        return self._logits.clone()

    def _capture(self) -> None:
        # Warm-up runs on a side stream (as torch.cuda.graphs requires) write the same
        # key and value at the same position as the captured step will: harmless.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self.model.decode_step(self._token, self._position, self.cache)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._logits = self.model.decode_step(self._token, self._position, self.cache)
        self._graph = graph
