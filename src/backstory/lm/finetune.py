"""Fine-tuning: a run that starts from another run's trained model, fully or with LoRA.

``method: full`` trains every weight of the initial model. ``method: lora`` freezes it
and trains low-rank adapters (peft's LoRA) on the attention and MLP projections
(``LORA_TARGETS``); the adapters start at zero (B = 0), so step 0 computes exactly the
initial model. Checkpoints hold the frozen weights and the adapters (peft's parameter
names), so a LoRA run resumes exactly like any other; the final model is merged into
plain weights (W + alpha / rank * B A, by peft) with the names and shapes of every other
model, which is what is saved, evaluated and exported.

The initial model is part of a run's identity: ``InitialModel.identity`` (its run, the
sha256 of its weights as ``model.safetensors`` holds them, and the fine-tuning settings)
goes into the run's lineage, so a changed initial model is a changed input.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes

from backstory import params
from backstory.core.errors import InputError
from backstory.lm.checkpoint import MODEL_FORMAT, TrainedModel, cpu_copies
from backstory.lm.families import new_model
from backstory.lm.model import ModelConfig, Transformer

logger = logging.getLogger(__name__)

METHODS = ("full", "lora")
# The projections LoRA adapts: attention (wq, wk, wv, wo) and the SwiGLU MLP (w1, w2, w3).
LORA_TARGETS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")
ADAPTER = "default"  # peft's adapter name; it appears in checkpoint parameter names


@dataclass(frozen=True)
class FinetuneConfig:
    """How a run tunes its initial model (``finetune`` in conf/base/parameters_runs.yml).

    The learning rate and the number of steps are the run's ``train`` settings.
    """

    method: str  # full: every weight trains; lora: frozen weights plus low-rank adapters
    lora_rank: int  # LoRA only: rank r of each adapter B (out x r) A (r x in)
    lora_alpha: float  # LoRA only: the adapter's output is scaled by alpha / rank
    lora_dropout: float  # LoRA only: dropout on the adapters' input while training

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"finetune.method={self.method!r} must be one of "
                             f"{', '.join(METHODS)}")
        params.check_int("finetune", "lora_rank", self.lora_rank, 1)
        alpha = self.lora_alpha
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not alpha > 0:
            raise ValueError(f"finetune.lora_alpha={alpha!r} must be a number > 0")
        dropout = self.lora_dropout
        if isinstance(dropout, bool) or not isinstance(dropout, int | float) \
                or not 0 <= dropout < 1:
            raise ValueError(f"finetune.lora_dropout={dropout!r} must be a number in [0, 1)")

    @classmethod
    def from_params(cls, settings: Mapping[str, Any]) -> FinetuneConfig:
        """Build from parameters; unknown and missing keys are errors naming the key."""
        return params.build(cls, settings, "finetune")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def weights_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 of ``state_dict`` as ``model.safetensors`` holds it (``checkpoint.save_model``
    writes these very bytes, and records their sha256 in ``model.json``)."""
    data = safetensors_bytes(cpu_copies(dict(state_dict)), metadata={"format": MODEL_FORMAT})
    return hashlib.sha256(data).hexdigest()


@dataclass
class InitialModel:
    """The model a run starts from: another run's trained model, and how it is tuned."""

    run: str  # the run (its namespace) that trained it
    trained: TrainedModel
    finetune: FinetuneConfig
    weights_sha256: str = field(init=False)

    def __post_init__(self) -> None:
        self.weights_sha256 = weights_sha256(self.trained.state_dict)

    def identity(self) -> dict[str, Any]:
        """What the run's lineage records of it (a change makes a new run)."""
        return {"run": self.run, "weights_sha256": self.weights_sha256,
                "finetune": self.finetune.to_dict()}

    def check_fits(self, config: ModelConfig) -> None:
        """InputError unless the initial model has exactly the run's model shape."""
        if self.trained.config != config:
            theirs, ours = self.trained.config.to_dict(), config.to_dict()
            differ = sorted(k for k in ours if ours[k] != theirs.get(k))
            raise InputError(
                f"the initial model (run {self.run}) does not have this run's model shape: "
                + ", ".join(f"{k} {theirs.get(k)!r} vs {ours[k]!r}" for k in differ)
                + "; fine-tuning keeps the shape, so give both runs the same model settings"
            )


def _lora_config(finetune: FinetuneConfig) -> Any:
    from peft import LoraConfig  # imports transformers: only LoRA runs pay for it

    return LoraConfig(r=finetune.lora_rank, lora_alpha=finetune.lora_alpha,
                      lora_dropout=finetune.lora_dropout, target_modules=list(LORA_TARGETS),
                      bias="none")


def _with_adapters(model: Transformer, finetune: FinetuneConfig) -> Transformer:
    """``model`` with LoRA adapters on ``LORA_TARGETS`` and everything else frozen (in place).

    The adapters' A matrices are drawn from torch's global RNG; B starts at zero.
    """
    from peft import inject_adapter_in_model

    model = inject_adapter_in_model(_lora_config(finetune), model, adapter_name=ADAPTER)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(f".lora_A.{ADAPTER}." in name or f".lora_B.{ADAPTER}." in name)
    return model


def training_model(config: ModelConfig, init: InitialModel | None) -> Transformer:
    """The model a run trains: fresh random weights, or ``init``'s (with LoRA adapters).

    Random numbers come from torch's global RNG, which the caller has seeded.
    """
    model = new_model(config)
    if init is None:
        return model
    init.check_fits(config)
    model.load_state_dict(init.trained.state_dict, strict=True)
    if init.finetune.method == "lora":
        model = _with_adapters(model, init.finetune)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("Fine-tuning the model of run %s (%s): %s of %s parameters train", init.run,
                init.finetune.method, f"{trainable:,}",
                f"{sum(p.numel() for p in model.parameters()):,}")
    return model


def plain_state_dict(config: ModelConfig, state_dict: Mapping[str, torch.Tensor],
                     init: InitialModel | None) -> dict[str, torch.Tensor]:
    """The plain weights of a training state: LoRA adapters merged into their layers.

    A run without LoRA already has plain weights; they are returned as they are.
    """
    if init is None or init.finetune.method != "lora":
        return dict(state_dict)
    from peft.tuners.lora import LoraLayer

    # The model's random init (and the adapters') must not move the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        model = _with_adapters(Transformer(config), init.finetune)
    model.load_state_dict(dict(state_dict), strict=True)
    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge(adapter_names=[ADAPTER])
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.get_base_layer())
    return cpu_copies(model.state_dict())
