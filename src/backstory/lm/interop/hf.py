"""Hugging Face Llama folders: config.json, model.safetensors and the sentencepiece tokenizer.

A folder written here loads offline with transformers' AutoModelForCausalLM and
AutoTokenizer (the tokenizer is converted from tokenizer.model, which needs the
sentencepiece and protobuf packages). Reading needs neither transformers nor torch
pickles: config.json and safetensors (a ``pytorch_model.bin`` is read with
``weights_only=True``).

Rotary layout: llama2.c (and backstory) rotate interleaved pairs (x0, x1), (x2, x3), ...
of each head; HF rotates the two halves (x_i, x_{i + head_dim/2}). The rows of wq and wk
are therefore reordered per head on export (row 2p + h -> h * head_dim/2 + p) and back
on import; queries and keys change order together, so attention scores are unchanged.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch

from backstory.lm.checkpoint import TrainedModel, check_weights_fit, load_weights, save_weights
from backstory.lm.model import ModelConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
PICKLED_WEIGHTS_FILE = "pytorch_model.bin"
GENERATION_CONFIG_FILE = "generation_config.json"
TOKENIZER_MODEL_FILE = "tokenizer.model"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
METADATA_KEY = "backstory"  # where config.json keeps the export document
WRITTEN_FILES = (CONFIG_FILE, WEIGHTS_FILE, GENERATION_CONFIG_FILE, TOKENIZER_MODEL_FILE,
                 TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_FILE)

# (backstory name, HF name) inside each layer
_LAYER_NAMES = (
    ("attention_norm.weight", "input_layernorm.weight"),
    ("attention.wq.weight", "self_attn.q_proj.weight"),
    ("attention.wk.weight", "self_attn.k_proj.weight"),
    ("attention.wv.weight", "self_attn.v_proj.weight"),
    ("attention.wo.weight", "self_attn.o_proj.weight"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
    ("feed_forward.w1.weight", "mlp.gate_proj.weight"),
    ("feed_forward.w2.weight", "mlp.down_proj.weight"),
    ("feed_forward.w3.weight", "mlp.up_proj.weight"),
)


def interleaved_to_halves(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder the rows of a (n_heads * head_dim, dim) projection from pairs to halves."""
    rows, cols = weight.shape
    half = rows // n_heads // 2
    # (n_heads, pair, 2, dim) -> (n_heads, 2, pair, dim)
    return weight.reshape(n_heads, half, 2, cols).transpose(1, 2).reshape(rows, cols)


def halves_to_interleaved(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of ``interleaved_to_halves``."""
    rows, cols = weight.shape
    half = rows // n_heads // 2
    # (n_heads, 2, pair, dim) -> (n_heads, pair, 2, dim)
    return weight.reshape(n_heads, 2, half, cols).transpose(1, 2).reshape(rows, cols)


def hf_config(config: ModelConfig, *, bos_id: int, eos_id: int) -> dict[str, Any]:
    """config.json for ``config`` (tied embeddings, no biases, SiLU gate)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.dim,
        "intermediate_size": config.ffn_hidden_dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_dim,
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        # transformers 4 reads rope_theta, 5 reads rope_parameters; both say the same.
        "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": True,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "torch_dtype": "float32",
        "use_cache": True,
    }


def to_hf_state(trained: TrainedModel) -> dict[str, torch.Tensor]:
    """HF names and rotary layout; the tied output matrix is stored once, as the embedding."""
    cfg, state = trained.config, trained.state_dict
    out = {"model.embed_tokens.weight": state["tok_embeddings.weight"],
           "model.norm.weight": state["norm.weight"]}
    for i in range(cfg.n_layers):
        for ours, theirs in _LAYER_NAMES:
            tensor = state[f"layers.{i}.{ours}"]
            if ours == "attention.wq.weight":
                tensor = interleaved_to_halves(tensor, cfg.n_heads)
            elif ours == "attention.wk.weight":
                tensor = interleaved_to_halves(tensor, cfg.kv_heads)
            out[f"model.layers.{i}.{theirs}"] = tensor
    return {name: t.detach().to("cpu", torch.float32).contiguous().clone()
            for name, t in out.items()}


def write_hf_folder(trained: TrainedModel, tokenizer_model: bytes, out_dir: Path, *,
                    bos_id: int, eos_id: int, document: dict[str, Any]) -> None:
    """Write config, weights, generation config and tokenizer files into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = hf_config(trained.config, bos_id=bos_id, eos_id=eos_id)
    config[METADATA_KEY] = document
    _write_json(out_dir / CONFIG_FILE, config)
    save_weights(to_hf_state(trained), out_dir / WEIGHTS_FILE, metadata={"format": "pt"})
    _write_json(out_dir / GENERATION_CONFIG_FILE, {"bos_token_id": bos_id,
                                                   "eos_token_id": eos_id})
    (out_dir / TOKENIZER_MODEL_FILE).write_bytes(tokenizer_model)
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    _write_json(out_dir / SPECIAL_TOKENS_FILE, specials)
    _write_json(out_dir / TOKENIZER_CONFIG_FILE, {
        "tokenizer_class": "LlamaTokenizer",
        **specials,
        "add_bos_token": True,  # documents start with BOS, as in training
        "add_eos_token": False,
        "legacy": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": trained.config.max_seq_len,
    })


def _write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")


# --- reading -------------------------------------------------------------------------------


def read_hf_config(folder: Path) -> dict[str, Any]:
    file = Path(folder) / CONFIG_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_FILE}; not a Hugging Face model folder")
    try:
        config = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not valid JSON: {err}") from err
    if not isinstance(config, dict):
        raise ValueError(f"{file} does not hold a JSON object")
    return config


def model_config_from_hf(config: dict[str, Any], *, source: str) -> ModelConfig:
    """Our ModelConfig for an HF Llama config; ValueError for what our model cannot be."""
    if config.get("model_type") != "llama":
        raise ValueError(f"{source}: model_type is {config.get('model_type')!r}, not 'llama'")
    refused = {
        "hidden_act": (config.get("hidden_act", "silu") != "silu"),
        "attention_bias": bool(config.get("attention_bias")),
        "mlp_bias": bool(config.get("mlp_bias")),
        "rope_scaling": bool(config.get("rope_scaling")),
    }
    rope = config.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        refused["rope_parameters.rope_type"] = True
    bad = [name for name, is_bad in refused.items() if is_bad]
    if bad:
        raise ValueError(f"{source}: backstory's model has no equivalent of {bad}")
    dim, heads = config["hidden_size"], config["num_attention_heads"]
    if config.get("head_dim") not in (None, dim // heads):
        raise ValueError(f"{source}: head_dim {config['head_dim']} != hidden_size / heads")
    theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    try:
        return ModelConfig.from_dict({
            "vocab_size": config["vocab_size"], "dim": dim,
            "n_layers": config["num_hidden_layers"], "n_heads": heads,
            "n_kv_heads": config.get("num_key_value_heads") or heads,
            "hidden_dim": config["intermediate_size"],
            "max_seq_len": config["max_position_embeddings"],
            "norm_eps": config.get("rms_norm_eps", 1e-6), "rope_theta": theta,
        })
    except KeyError as err:
        raise ValueError(f"{source} lacks {err}") from err


def _load_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / WEIGHTS_FILE).is_file():
        return load_weights(folder / WEIGHTS_FILE)
    if (folder / WEIGHTS_INDEX_FILE).is_file():
        index = json.loads((folder / WEIGHTS_INDEX_FILE).read_text())
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(index["weight_map"].values())):
            state.update(load_weights(folder / shard))
        return state
    if (folder / PICKLED_WEIGHTS_FILE).is_file():
        try:
            return torch.load(folder / PICKLED_WEIGHTS_FILE, map_location="cpu",
                              weights_only=True)
        except pickle.UnpicklingError as err:
            raise ValueError(f"{folder / PICKLED_WEIGHTS_FILE} needs unpickling code to load, "
                             "which backstory refuses to run") from err
    raise FileNotFoundError(f"{folder} has no {WEIGHTS_FILE}, {WEIGHTS_INDEX_FILE} or "
                            f"{PICKLED_WEIGHTS_FILE}")


def from_hf_state(state: dict[str, torch.Tensor], config: ModelConfig, *,
                  source: str) -> dict[str, torch.Tensor]:
    """Our names and rotary layout; the output matrix must equal the embedding (tied).

    The shapes are checked against ``config`` first (reordering rows keeps them), so a
    config.json that does not describe the weights is refused by name.
    """
    try:
        embedding = state["model.embed_tokens.weight"]
        out = {"tok_embeddings.weight": embedding, "norm.weight": state["model.norm.weight"],
               "output.weight": embedding}
        for i in range(config.n_layers):
            for ours, theirs in _LAYER_NAMES:
                out[f"layers.{i}.{ours}"] = state[f"model.layers.{i}.{theirs}"]
    except KeyError as err:
        raise ValueError(f"{source} lacks the weight {err}") from err
    check_weights_fit(TrainedModel(config, out, {}),
                      source=f"{source}: {CONFIG_FILE} and {WEIGHTS_FILE}")
    for i in range(config.n_layers):
        for name, heads in (("wq", config.n_heads), ("wk", config.kv_heads)):
            key = f"layers.{i}.attention.{name}.weight"
            out[key] = halves_to_interleaved(out[key], heads)
    head = state.get("lm_head.weight")
    if head is not None and not torch.equal(head, embedding):
        raise ValueError(f"{source}: lm_head differs from the token embedding; backstory models "
                         "tie them, so this model cannot be imported")
    known = {"lm_head.weight", *(f"model.{n}" for n in ("embed_tokens.weight", "norm.weight"))}
    known |= {f"model.layers.{i}.{t}" for i in range(config.n_layers) for _, t in _LAYER_NAMES}
    extra = sorted(set(state) - known)
    if extra:
        raise ValueError(f"{source} has weights backstory's model lacks: {extra[:5]}")
    return {name: t.detach().to(torch.float32).contiguous() for name, t in out.items()}


def read_hf_folder(folder: Path) -> tuple[TrainedModel, dict[str, Any] | None]:
    """The model of an HF Llama folder and the export document config.json carries (if any)."""
    folder = Path(folder)
    config = read_hf_config(folder)
    model_config = model_config_from_hf(config, source=str(folder / CONFIG_FILE))
    state = from_hf_state(_load_hf_weights(folder), model_config, source=str(folder))
    meta = {"source": {"format": "hf", "path": str(folder)}}
    return TrainedModel(model_config, state, meta), config.get(METADATA_KEY)
