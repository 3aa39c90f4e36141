"""Export node: one split of one text variant's documents as a lazy token stream."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from backstory import params, variants
from backstory.data.documents import TextConfig, encode_documents
from backstory.data.stories import iter_stories
from backstory.data.tokenizer import Tokenizer
from backstory.data.tokens import TokenStream


def export_tokens(
    stories: dict[str, Callable[[], pd.DataFrame]],
    tokenizer: Tokenizer,
    ingest_report: dict,
    text: dict,
    *,
    variant: str,
    split: str,
) -> TokenStream:
    """Describe one split of one variant as a lazy token stream (the H5 dataset writes it)."""
    config = TextConfig.from_params(text)
    batches = encode_documents(
        iter_stories(stories, split),
        tokenizer,
        variant=variant,
        templates=config.templates,
        seed=config.seed,
        batch_size=config.batch_size,
        num_threads=config.num_threads,
    )
    attrs = {
        "variant": variant,
        "split": split,
        "layout": variants.get(variant).layout,
        "vocab_size": tokenizer.vocab_size,
        "bos_id": tokenizer.bos_id,
        "eos_id": tokenizer.eos_id,
        "tokenizer_sha256": tokenizer.sha256,
        "corpus_fingerprint": ingest_report["corpus_fingerprint"],
        "text_params_sha256": params.sha256(text),
    }
    return TokenStream(batches=batches, attrs=attrs)
