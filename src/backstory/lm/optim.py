"""Optimizers for training: AdamW (llama2.c's recipe), or Muon for the hidden matrices.

``train.optimizer: muon`` trains the 2-D weights inside the blocks (the attention and
feed-forward matrices) with ``torch.optim.Muon`` (momentum, then an approximate
orthogonalisation of each update by Newton-Schulz iterations) and everything else
(the tied embedding/output matrix and the RMSNorm gains) with AdamW, as Keller Jordan's
and modded-nanogpt's recipes do. Both step together behind one optimizer object with one
state dict, so checkpoints hold and restore the Muon momentum buffers too.

Learning rates follow one schedule: the training loop sets every parameter group's
``lr`` to the scheduled rate times the group's ``lr_scale`` (1 for AdamW groups,
``muon_lr / lr`` for Muon's), so warmup and decay shape both optimizers alike.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from backstory.lm.model import Transformer

logger = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "muon")
LR_SCALE = "lr_scale"  # param-group key: the group's peak lr over train.lr


def build_optimizer(model: Transformer, *, name: str, lr: float, weight_decay: float,
                    betas: tuple[float, float], device_type: str, muon_lr: float,
                    muon_momentum: float, muon_weight_decay: float
                    ) -> torch.optim.Optimizer | MuonAdamW:
    """The optimizer ``name`` for ``model`` (``adamw``: exactly llama2.c's AdamW)."""
    if name == "adamw":
        return model.configure_optimizer(lr=lr, weight_decay=weight_decay, betas=betas,
                                         device_type=device_type)
    if name != "muon":
        raise ValueError(f"train.optimizer={name!r} is unknown; use one of {OPTIMIZERS}")
    hidden, rest = split_hidden_matrices(model)
    muon = torch.optim.Muon(hidden, lr=muon_lr, weight_decay=muon_weight_decay,
                            momentum=muon_momentum, nesterov=True)
    for group in muon.param_groups:
        group[LR_SCALE] = muon_lr / lr
    decay = [p for p in rest if p.dim() >= 2]
    no_decay = [p for p in rest if p.dim() < 2]
    fused = device_type == "cuda" and torch.cuda.is_available()
    adamw = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                               {"params": no_decay, "weight_decay": 0.0}],
                              lr=lr, betas=betas, fused=fused or None)
    logger.info("optimizer: Muon on %d hidden matrices (%d params), AdamW on %d tensors "
                "(%d params)", len(hidden), sum(p.numel() for p in hidden), len(rest),
                sum(p.numel() for p in rest))
    return MuonAdamW(muon, adamw)


def split_hidden_matrices(model: Transformer) -> tuple[list[torch.nn.Parameter],
                                                       list[torch.nn.Parameter]]:
    """(2-D weights inside the blocks, every other trainable parameter), each once."""
    hidden, rest, seen = [], [], set()
    for name, param in model.named_parameters():  # a tied parameter is listed once
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        (hidden if name.startswith("layers.") and param.dim() == 2 else rest).append(param)
    return hidden, rest


def scheduled_lr(group: dict[str, Any], lr: float) -> float:
    """The lr of ``group`` when the schedule is at ``lr`` (AdamW groups: ``lr`` itself)."""
    return lr * group.get(LR_SCALE, 1.0)


class MuonAdamW:
    """Muon and AdamW stepped as one optimizer: one ``param_groups`` list, one state dict.

    Duck-types the parts of ``torch.optim.Optimizer`` that the training loop and
    ``torch.amp.GradScaler`` use (``param_groups``, ``step``, ``zero_grad``,
    ``state_dict``, ``load_state_dict``).
    """

    def __init__(self, muon: torch.optim.Muon, adamw: torch.optim.AdamW) -> None:
        self.muon, self.adamw = muon, adamw

    @property
    def parts(self) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        return self.muon, self.adamw

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        # Rebuilt on each access: load_state_dict replaces the parts' group dicts.
        return self.muon.param_groups + self.adamw.param_groups

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        if closure is not None:
            raise ValueError("MuonAdamW.step takes no closure (two optimizers would call it)")
        self.muon.step()
        self.adamw.step()
        return None

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or set(state) != {"muon", "adamw"}:
            found = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"optimizer state holds {found}, not a Muon + AdamW state "
                             "(was the checkpoint written with train.optimizer=adamw?)")
        self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])
