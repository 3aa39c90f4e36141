"""llama2.c's model files: the run.c weight file (legacy version 0) and train.py's ckpt.pt.

Version 0 layout (what run.c reads): seven int32 (dim, hidden_dim, n_layers, n_heads,
n_kv_heads, vocab_size, max_seq_len; a negative vocab_size means an output matrix of its
own follows), then float32 tensors, each stacked over layers: token embedding, attention
norms, wq, wk, wv, wo, FFN norms, w1, w2, w3, final norm, the RoPE cos and sin tables
(max_seq_len x head_dim / 2, which run.c skips) and the unshared output matrix.

Our parameter names and the rotary layout (interleaved pairs) are llama2.c's, so weights
go across unchanged. run.c fixes what our config leaves free: RMSNorm epsilon 1e-5 and
RoPE theta 10000; a model with other values is refused rather than silently changed.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backstory.core.files import write_bytes_atomically
from backstory.lm.checkpoint import TrainedModel, check_weights_fit
from backstory.lm.model import ModelConfig, rope_tables

HEADER = struct.Struct("<7i")
RUNC_NORM_EPS = 1e-5
RUNC_ROPE_THETA = 10000.0
# Later llama2.c exports (version >= 1) start with this uint32 ("ak42"); run.c reads none.
VERSIONED_MAGIC = 0x616B3432
# torch.compile wraps the model; llama2.c's train.py saves the wrapper's state_dict.
COMPILED_PREFIX = "_orig_mod."
_CKPT_CONFIG_KEYS = ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "hidden_dim",
                     "multiple_of", "norm_eps", "max_seq_len", "dropout")


def _layer_names(n_layers: int, suffix: str) -> list[str]:
    return [f"layers.{i}.{suffix}" for i in range(n_layers)]


def _tensor_order(config: ModelConfig) -> list[list[str]]:
    """State-dict names in file order; each inner list is stacked into one file tensor."""
    n = config.n_layers
    return [
        ["tok_embeddings.weight"],
        _layer_names(n, "attention_norm.weight"),
        _layer_names(n, "attention.wq.weight"),
        _layer_names(n, "attention.wk.weight"),
        _layer_names(n, "attention.wv.weight"),
        _layer_names(n, "attention.wo.weight"),
        _layer_names(n, "ffn_norm.weight"),
        _layer_names(n, "feed_forward.w1.weight"),
        _layer_names(n, "feed_forward.w2.weight"),
        _layer_names(n, "feed_forward.w3.weight"),
        ["norm.weight"],
    ]


def check_runc_compatible(config: ModelConfig) -> None:
    """Raise ValueError for settings run.c cannot reproduce (it hard-codes them)."""
    if config.norm_eps != RUNC_NORM_EPS:
        raise ValueError(f"run.c uses RMSNorm epsilon {RUNC_NORM_EPS}; the model has "
                         f"norm_eps={config.norm_eps}")
    if config.rope_theta != RUNC_ROPE_THETA:
        raise ValueError(f"run.c uses RoPE theta {RUNC_ROPE_THETA:g}; the model has "
                         f"rope_theta={config.rope_theta:g}")


def llama2c_model_bytes(trained: TrainedModel) -> bytes:
    """``trained`` in the version-0 layout (tied output: positive vocab_size)."""
    config = trained.config
    check_runc_compatible(config)
    state = trained.state_dict
    header = HEADER.pack(config.dim, config.ffn_hidden_dim, config.n_layers, config.n_heads,
                         config.kv_heads, config.vocab_size, config.max_seq_len)
    parts = [header]
    for names in _tensor_order(config):
        for name in names:
            parts.append(_float32_bytes(state[name]))
    cos, sin = rope_tables(config.head_dim, config.max_seq_len, config.rope_theta)
    parts += [_float32_bytes(cos), _float32_bytes(sin)]
    return b"".join(parts)


def _float32_bytes(tensor: torch.Tensor) -> bytes:
    return tensor.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4").tobytes()


def write_llama2c_model(trained: TrainedModel, path: Path) -> None:
    """Write ``trained`` to ``path`` in the version-0 layout, atomically."""
    write_bytes_atomically(path, llama2c_model_bytes(trained))


def read_llama2c_model(path: Path, *, config: ModelConfig | None = None) -> TrainedModel:
    """A run.c version-0 weight file as a TrainedModel (meta names only the source).

    ``config``, when given (e.g. from a backstory export's sidecar), must describe the
    same shapes as the header; it restores settings the header does not hold.
    """
    path = Path(path)
    data = path.read_bytes()
    if len(data) < HEADER.size:
        raise ValueError(f"{path} is {len(data)} bytes, too short for a llama2.c model header")
    if struct.unpack_from("<I", data, 0)[0] == VERSIONED_MAGIC:
        raise ValueError(f"{path} is a versioned llama2.c export (magic 'ak42'); backstory and "
                         "run.c read the legacy version-0 layout: export it with version 0")
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = HEADER.unpack_from(data, 0)
    shared = vocab > 0
    vocab = abs(vocab)
    header_config = _header_config(path, dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len)
    config = _reconcile(path, header_config, config)
    expected = _float_count(config, shared)
    if len(data) - HEADER.size != expected * 4:  # checked before any float is read
        raise ValueError(f"{path} holds {len(data) - HEADER.size} bytes of weights; a model with "
                         f"this header needs {expected * 4} (a truncated or damaged file?)")
    floats = np.frombuffer(data, dtype="<f4", offset=HEADER.size)
    state, pos = {}, 0
    for names in _tensor_order(config):
        for name in names:
            shape = _shape_of(config, name)
            count = int(np.prod(shape))
            state[name] = torch.from_numpy(floats[pos:pos + count].copy()).view(shape)
            pos += count
    pos += config.max_seq_len * config.head_dim  # the cos and sin tables, half each
    if not shared:
        output = torch.from_numpy(floats[pos:].copy()).view(config.vocab_size, config.dim)
        if not torch.equal(output, state["tok_embeddings.weight"]):
            raise ValueError(f"{path} has an output matrix of its own; backstory models tie "
                             "it to the token embedding, so this model cannot be imported")
    state["output.weight"] = state["tok_embeddings.weight"]
    return TrainedModel(config, state, {"source": {"format": "llama2c-bin", "path": str(path)}})


def _header_config(path: Path, dim: int, hidden: int, n_layers: int, n_heads: int, n_kv: int,
                   vocab: int, seq_len: int) -> ModelConfig:
    try:
        return ModelConfig.from_dict({"vocab_size": vocab, "dim": dim, "n_layers": n_layers,
                                      "n_heads": n_heads, "n_kv_heads": n_kv,
                                      "hidden_dim": hidden, "max_seq_len": seq_len})
    except ValueError as err:
        raise ValueError(f"{path}: the header does not describe a valid model: {err}") from err


def _reconcile(path: Path, header: ModelConfig, given: ModelConfig | None) -> ModelConfig:
    if given is None:
        return header
    mismatched = [name for name in ("vocab_size", "dim", "n_layers", "n_heads", "kv_heads",
                                    "ffn_hidden_dim", "max_seq_len")
                  if getattr(given, name) != getattr(header, name)]
    if mismatched:
        raise ValueError(f"{path}: its header disagrees with the recorded model config on "
                         f"{mismatched}")
    return given


def _shape_of(config: ModelConfig, name: str) -> tuple[int, ...]:
    kv_dim = config.kv_heads * config.head_dim
    shapes = {
        "tok_embeddings.weight": (config.vocab_size, config.dim),
        "norm.weight": (config.dim,),
        "attention_norm.weight": (config.dim,),
        "ffn_norm.weight": (config.dim,),
        "attention.wq.weight": (config.dim, config.dim),
        "attention.wk.weight": (kv_dim, config.dim),
        "attention.wv.weight": (kv_dim, config.dim),
        "attention.wo.weight": (config.dim, config.dim),
        "feed_forward.w1.weight": (config.ffn_hidden_dim, config.dim),
        "feed_forward.w2.weight": (config.dim, config.ffn_hidden_dim),
        "feed_forward.w3.weight": (config.ffn_hidden_dim, config.dim),
    }
    return shapes[name.split(".", 2)[-1] if name.startswith("layers.") else name]


def _float_count(config: ModelConfig, shared: bool) -> int:
    total = sum(int(np.prod(_shape_of(config, name)))
                for names in _tensor_order(config) for name in names)
    total += config.max_seq_len * config.head_dim
    return total + (0 if shared else config.vocab_size * config.dim)


# --- llama2.c train.py checkpoints --------------------------------------------------------


def load_llama2c_checkpoint(path: Path) -> TrainedModel:
    """A llama2.c ``ckpt.pt`` (model, model_args, iter_num, ...) as a TrainedModel.

    Loaded with ``weights_only=True``: a file that needs unpickling code (any class
    beyond tensors and plain containers) is refused, never executed.
    """
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{path} needs unpickling code to load, which backstory refuses to "
                         f"run (torch.load weights_only=True): {str(err).splitlines()[0]}"
                         ) from err
    except (RuntimeError, EOFError) as err:
        raise ValueError(f"{path} is not a readable torch checkpoint: {err}") from err
    if not isinstance(checkpoint, Mapping) or not {"model", "model_args"} <= set(checkpoint):
        raise ValueError(f"{path} is not a llama2.c training checkpoint (needs the keys "
                         "'model' and 'model_args')")
    config = _checkpoint_config(path, checkpoint["model_args"])
    state = _strip_compiled(checkpoint["model"])
    for buffer in ("freqs_cos", "freqs_sin", "freqs_cis"):  # RoPE tables of older versions
        state.pop(buffer, None)
    embedding = state.get("tok_embeddings.weight")
    output = state.setdefault("output.weight", embedding)
    if output is not None and embedding is not None and not torch.equal(output, embedding):
        raise ValueError(f"{path}: the output matrix is not tied to the token embedding; "
                         "backstory models tie them")
    state = {name: t.detach().to(torch.float32).contiguous() for name, t in state.items()}
    meta: dict[str, Any] = {"source": {"format": "llama2c-checkpoint", "path": str(path)}}
    if isinstance(checkpoint.get("iter_num"), int):
        meta["steps"] = checkpoint["iter_num"]
    trained = TrainedModel(config, state, meta)
    check_weights_fit(trained, source=f"{path}: its model_args and weights")
    return trained


def _checkpoint_config(path: Path, model_args: Any) -> ModelConfig:
    if not isinstance(model_args, Mapping):
        raise ValueError(f"{path}: model_args is {type(model_args).__name__}, not a mapping")
    unknown = sorted(set(model_args) - set(_CKPT_CONFIG_KEYS))
    if unknown:
        raise ValueError(f"{path}: model_args has settings backstory cannot reproduce: {unknown}")
    try:
        return ModelConfig.from_dict(dict(model_args))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: bad model_args: {err}") from err


def _strip_compiled(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name.removeprefix(COMPILED_PREFIX): tensor for name, tensor in state.items()}
