"""Export nodes: a variant's own tokenizer, and one split of one text variant's documents
as a lazy token stream."""

from __future__ import annotations

from backstory import params, variants
from backstory.data.corpus.story_table import StoryTable, story_texts
from backstory.data.documents import StoryDocuments, TextConfig
from backstory.data.token_writer import TokenStream
from backstory.data.tokenizer import Tokenizer, TokenizerConfig


def export_tokens(
    stories: StoryTable,
    tokenizer: Tokenizer,
    ingest_report: dict,
    text: dict,
    *,
    variant: str,
    split: str,
) -> TokenStream:
    """Describe one split of one variant as documents to encode (the H5 dataset writes
    them, in ``text.workers`` processes, resumably)."""
    config = TextConfig.from_params(text)
    documents = StoryDocuments(
        stories,
        split,
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
        "split_strategy": ingest_report["split"]["strategy"],
    }
    return TokenStream(batches=None, attrs=attrs, documents=documents, workers=config.workers)


def fit_own_tokenizer(stories: StoryTable, tokenizer: dict, *, words: str) -> bytes:
    """A variant's own sentencepiece model (``Variant.own_tokenizer``), trained on its
    training stories in its word order, with the shared tokenizer's settings."""
    return TokenizerConfig.from_params(tokenizer).train(story_texts(stories, "train", words))
