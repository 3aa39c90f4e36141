"""Model families: which network a ``ModelConfig`` builds (``model.family``)."""

from __future__ import annotations

from backstory.lm.model import FAMILIES, ModelConfig, Transformer
from backstory.lm.recurrent import RecurrentLM

LanguageModel = Transformer | RecurrentLM

__all__ = ["FAMILIES", "LanguageModel", "new_model"]


def new_model(config: ModelConfig) -> LanguageModel:
    """A freshly initialised model of ``config.family`` (llama, gru or lstm)."""
    if config.family == "llama":
        return Transformer(config)
    return RecurrentLM(config)
