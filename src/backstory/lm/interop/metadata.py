"""What an exported model records about itself, so it can be read right outside backstory.

Every export carries one JSON document (the llama2.c sidecar ``<name>.lineage.json``, the
``backstory`` key of a Hugging Face config.json): the variant, its word and token order,
the document layout, the tokenizer and corpus hashes, a sentence on how to prompt it, the
model config and backstory's whole model meta. Importing an export restores that meta,
so a round trip keeps the lineage.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import backstory
from backstory import variants
from backstory.lm import orders
from backstory.lm.checkpoint import TrainedModel
from backstory.lm.model import ModelConfig

EXPORT_FORMAT = "backstory-export"
EXPORT_FORMAT_VERSION = 1


def _how_to_prompt(spec: variants.Variant) -> str:
    """A sentence for the person running the export elsewhere (run.c, transformers)."""
    said = orders.get(spec.token_order).how_to_prompt
    if said is not None:
        return said
    parts = []
    if spec.instruct:
        parts.append("Documents are [EOS] + instruction + [BOS] + story + [EOS]: prompt with "
                     "the instruction between EOS and BOS; the story ends at EOS.")
    else:
        parts.append("Documents are [BOS] + story; a generated BOS ends the story.")
    if spec.words == "reversed":
        parts.append("Word order reversed: reverse the prompt's words before encoding and the "
                     "output's after decoding (`backstory reverse-words`, Mahurin's "
                     "reversal), so a prompt is a story's ending.")
    return " ".join(parts)


def export_document(trained: TrainedModel, tokenizer_sha256: str) -> dict[str, Any]:
    """The metadata an export of ``trained`` (tokenized by ``tokenizer_sha256``) records."""
    lineage = trained.meta.get("lineage") or {}
    name = lineage.get("variant")
    spec = variants.get(name) if name is not None else None
    token_order = (trained.meta.get("train_config") or {}).get("token_order")
    if spec is not None:
        token_order = token_order or spec.token_order
    return {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        "exported_by": f"backstory {backstory.__version__}",
        "variant": name,
        "word_order": spec.words if spec else None,
        "token_order": token_order,
        "instruct": spec.instruct if spec else None,
        "layout": lineage.get("layout"),
        "tokenizer_sha256": tokenizer_sha256,
        "corpus_fingerprint": lineage.get("corpus_fingerprint"),
        "how_to_prompt": _how_to_prompt(spec) if spec else
        "No backstory lineage recorded: the text layout is unknown.",
        "model_config": trained.config.to_dict(),
        "meta": trained.meta,
    }


def read_document(document: Any, *, source: str) -> tuple[ModelConfig, dict[str, Any]]:
    """The model config and meta an export document recorded; ValueError if it is not one."""
    if not isinstance(document, Mapping) or document.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{source} is not a {EXPORT_FORMAT} document")
    if document.get("format_version") != EXPORT_FORMAT_VERSION:
        raise ValueError(f"{source} has format_version {document.get('format_version')!r}; "
                         f"this backstory reads version {EXPORT_FORMAT_VERSION}")
    try:
        config = ModelConfig.from_dict(document["model_config"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{source}: bad model_config: {err}") from err
    meta = document.get("meta")
    if not isinstance(meta, Mapping):
        raise ValueError(f"{source} lacks the model meta")
    return config, dict(meta)
