"""Cross-entropy fused with the output layer, a chunk of positions at a time.

The plain loss materialises the logits of every position (B*T x vocab floats: 32 MiB
for the CPU preset, 4 GiB for llama2.c's GPU batch in fp32), then walks them four more
times (log-softmax, its backward, the zero-filled gradient, the NLL scatter).
``chunked_cross_entropy`` computes, for ``chunk`` positions at a time, the logits, the
loss and already the gradient (softmax minus one-hot): the loss is a mean, so its
gradient is known in the forward pass up to the scalar that flows back into it
(the approach of Liger's fused linear cross-entropy). A chunk's logits stay in cache,
no full logits tensor ever exists, and backward only scales the stored gradients.

Same value and gradients as ``F.cross_entropy(h @ weight.T, targets, ignore_index=-1)``
up to float rounding (the sums run in another order). Under autocast the matrix
products run in the autocast dtype and the softmax in float32, as in the plain path.
"""

from __future__ import annotations

from typing import Any

import torch

IGNORE_INDEX = -1


def chunked_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          chunk: int) -> torch.Tensor:
    """Mean cross-entropy of logits ``h @ weight.T`` over targets != -1.

    h (N, dim), weight (vocab, dim), targets (N,) int64 with -1 for ignored positions;
    ``chunk`` positions are processed at a time. Returns a float32 scalar.
    """
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"loss chunk must be an integer >= 1, got {chunk!r}")
    if h.dim() != 2 or targets.shape != h.shape[:1] or weight.dim() != 2 \
            or weight.shape[1] != h.shape[1]:
        raise ValueError(f"chunked_cross_entropy needs h (N, dim), weight (vocab, dim), "
                         f"targets (N,); got {tuple(h.shape)}, {tuple(weight.shape)}, "
                         f"{tuple(targets.shape)}")
    # Inside autograd.Function.forward grad mode is always off, so decide here.
    want_grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    if not want_grad:
        return _forward(h, weight, targets, chunk, want_grad=False)[0]
    return _FusedLinearCrossEntropy.apply(h, weight, targets, chunk)


def _forward(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int, *,
             want_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The mean loss and, with ``want_grad``, its gradients for h and weight."""
    valid = targets != IGNORE_INDEX  # (N,)
    count = valid.sum()  # a tensor: no host sync on an accelerator
    scale = valid.float() / count  # (N,) d loss / d row loss; 0 for ignored rows
    safe_targets = targets.clamp(min=0)
    total = torch.zeros((), dtype=torch.float32, device=h.device)
    grad_h = torch.empty_like(h) if want_grad else None
    grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
        if want_grad else None
    for start in range(0, h.shape[0], chunk):
        rows = slice(start, start + chunk)
        h_c, t_c = h[rows], safe_targets[rows]
        logits = (h_c @ weight.t()).float()  # (r, vocab)
        log_probs = torch.log_softmax(logits, dim=-1)
        del logits
        picked = log_probs.gather(1, t_c[:, None]).squeeze(1)  # (r,)
        total -= picked.masked_fill(~valid[rows], 0.0).sum()
        if not want_grad:
            continue
        probs = log_probs.exp_()  # in place: softmax, the log-probs are not needed
        # d(row loss)/d logits = softmax - one_hot; rows weighted by `scale` below.
        probs.scatter_add_(1, t_c[:, None], torch.full_like(picked[:, None], -1.0))
        scale_c = scale[rows, None]  # (r, 1)
        probs_mm = probs.to(h.dtype) if h.dtype != probs.dtype else probs
        grad_h[rows] = ((probs_mm @ weight.to(probs_mm.dtype)) * scale_c).to(h.dtype)
        grad_w += (probs_mm.t() @ (h_c * scale_c).to(probs_mm.dtype)).float()
    if grad_w is not None:
        grad_w = grad_w.to(weight.dtype)
    return total / count, grad_h, grad_w


class _FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                chunk: int) -> torch.Tensor:
        loss, grad_h, grad_w = _forward(h, weight, targets, chunk, want_grad=True)
        ctx.save_for_backward(grad_h, grad_w)
        return loss

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_out.to(grad_h.dtype), grad_w * grad_out.to(grad_w.dtype), None, None
