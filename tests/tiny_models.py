"""Tiny tokenizers and models for the interop and generation tests.

Texts come from the storyworld generator (seeded, in the package), so these helpers need
no files outside the repository.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from backstory import variants
from backstory.data.corpus.storyworld import generate_records
from backstory.data.tokenizer import Tokenizer
from backstory.lm.checkpoint import TrainedModel
from backstory.lm.model import Transformer
from tests.project import model_config, trained_tokenizer

REPO = Path(__file__).resolve().parents[1]
# Shared test oracles and data live beside the repository, not in it.
SHARED = REPO.parent / "shared"
RUN_C = SHARED / "vendor" / "llama2c" / "run.c"
REAL_STORIES = SHARED / "data" / "tinystories-real"


@lru_cache(maxsize=1)
def stories(n: int = 200) -> tuple[str, ...]:
    return tuple(record["story"].strip() for record in generate_records(0, 0, n))


@lru_cache(maxsize=4)
def tokenizer(model_type: str = "bpe", vocab_size: int = 512) -> Tokenizer:
    return Tokenizer(trained_tokenizer(list(stories()), vocab_size=vocab_size,
                                     model_type=model_type))


def lineage(tok: Tokenizer, variant: str) -> dict:
    spec = variants.get(variant)
    return {"variant": variant, "layout": spec.layout, "tokenizer_sha256": tok.sha256,
            "corpus_fingerprint": "storyworld-test", "vocab_size": tok.vocab_size}


def peaked_model(tok: Tokenizer, variant: str = "forward", *, dim: int = 64,
                 n_layers: int = 2, n_heads: int = 4, n_kv_heads: int | None = 2,
                 max_seq_len: int = 128, scale: float = 8.0, seed: int = 0) -> TrainedModel:
    """A random model whose matrices are scaled up so its logits spread widely.

    Greedy choices then win by clear margins, so comparisons with other implementations
    (C, transformers) are not decided by floating-point rounding.
    """
    config = model_config(vocab_size=tok.vocab_size, dim=dim, n_layers=n_layers,
                         n_heads=n_heads, n_kv_heads=n_kv_heads, max_seq_len=max_seq_len)
    torch.manual_seed(seed)
    model = Transformer(config)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.mul_(scale)
    state = {name: t.detach().clone() for name, t in model.state_dict().items()}
    meta = {"lineage": lineage(tok, variant),
            "train_config": {"token_order": variants.get(variant).token_order}, "steps": 0}
    return TrainedModel(config, state, meta)


def project_models(root: Path, variants_: tuple[str, ...] = ("forward",)) -> Path:
    """``root`` laid out as the pipelines leave it: the shared tokenizer, and a small peaked
    model per variant at its default run's model folder (seed = the variant's position)."""
    from backstory.lm.checkpoint import save_model

    tok = tokenizer()
    tokenizer_file = root / "data/06_models/tokenizer/tokenizer.model"
    tokenizer_file.parent.mkdir(parents=True)
    tokenizer_file.write_bytes(tok.model_bytes)
    for seed, variant in enumerate(variants_):
        save_model(root / f"data/06_models/{variant}/small/s1337/model",
                   peaked_model(tok, variant, scale=1.0, seed=seed))
    return root
