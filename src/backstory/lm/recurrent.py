"""GRU and LSTM language models: the recurrent baselines beside the Llama decoder.

Same interface as ``backstory.lm.model.Transformer`` (``forward(tokens, targets,
cache=)``, ``new_cache``, ``configure_optimizer``, ``num_parameters``), so the training
loop, checkpoints, evaluation and sampling use either without knowing which. The shape:
token embedding (dim) -> ``n_layers`` stacked GRU or LSTM layers (hidden size dim) ->
RMSNorm -> output projection tied to the embedding. ``ModelConfig.num_parameters``
counts exactly these tensors.

Generation carries the recurrent state in a ``RecurrentState`` in place of a KV cache:
it holds the hidden state after the positions it has seen, so each step feeds one
token, as with the transformer's cache.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from backstory.lm.model import ModelConfig, RMSNorm, TiedLM


class RecurrentState:
    """The hidden state of every layer after ``length`` positions (the recurrent "cache")."""

    def __init__(self, batch_size: int, max_len: int) -> None:
        self.hidden: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None
        self.length = 0  # positions consumed so far, shared by all rows
        self._batch_size = batch_size
        self._max_len = max_len

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def max_len(self) -> int:
        return self._max_len

    def reset(self) -> None:
        """Forget all positions."""
        self.hidden, self.length = None, 0

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep the state of ``rows`` (beam search's parents), in that order."""
        if isinstance(self.hidden, tuple):
            self.hidden = tuple(h.index_select(1, rows) for h in self.hidden)
        elif self.hidden is not None:
            self.hidden = self.hidden.index_select(1, rows)
        self._batch_size = int(rows.numel())


class RecurrentLM(TiedLM):
    """A GRU or LSTM language model (``config.family``)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.family not in ("gru", "lstm"):
            raise ValueError(f"RecurrentLM builds gru or lstm models, not {config.family!r}")
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        cell = nn.GRU if config.family == "gru" else nn.LSTM
        self.rnn = cell(config.dim, config.dim, num_layers=config.n_layers, batch_first=True,
                        dropout=config.dropout if config.n_layers > 1 else 0.0)
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.output.weight = self.tok_embeddings.weight  # tied, as in the transformer
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.tok_embeddings.weight, mean=0.0, std=0.02)
        bound = 1.0 / math.sqrt(self.config.dim)  # torch's own RNN init, made explicit
        for name, param in self.rnn.named_parameters():
            nn.init.uniform_(param, -bound, bound)
            if self.config.family == "lstm" and name.startswith("bias_hh"):
                dim = self.config.dim
                with torch.no_grad():
                    param[dim:2 * dim].fill_(1.0)  # forget gate open: remember by default

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None, *,
                cache: RecurrentState | None = None, loss_chunk: int = 0
                ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Logits (B, T, V) and mean cross-entropy over targets != -1 (None without targets).

        With a state, ``tokens`` follow the ``cache.length`` positions it has consumed;
        the state is advanced by T. With targets and ``loss_chunk`` > 0 the output layer
        and the loss run fused, ``loss_chunk`` positions at a time (no logits returned),
        as in the transformer.
        """
        self._check_tokens(tokens, cache)
        T = tokens.shape[1]
        h = self.tok_embeddings(tokens)  # (B, T, dim)
        hidden = None if cache is None else cache.hidden
        out, hidden = self.rnn(h, hidden)  # (B, T, dim)
        if cache is not None:
            cache.hidden = hidden
            cache.length += T
        return self._logits_and_loss(out, targets, loss_chunk)

    def new_cache(self, batch_size: int, max_len: int | None = None, **_: object
                  ) -> RecurrentState:
        """An empty recurrent state (the counterpart of the transformer's KV cache)."""
        return RecurrentState(batch_size, self._check_cache_size(batch_size, max_len))

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward): 6N, no attention term."""
        del seq_len  # a recurrent step costs the same at every position
        return 6.0 * self.num_parameters()
