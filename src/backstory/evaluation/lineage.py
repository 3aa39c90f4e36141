"""Lineage checks: a model, a tokenizer and a token store must have been made together."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from backstory.core.errors import UserError


class LineageError(UserError, ValueError):
    """A model, tokenizer or token store that were not made to go together."""


# ------------------------------------------------------------------------------ lineage


def check_lineage(
    model_meta: Mapping[str, Any],
    tokenizer_sha256: str,
    store_attrs: Mapping[str, Any] | None = None,
    *,
    model_path: str | None = None,
    tokenizer_path: str | None = None,
    store_path: str | None = None,
) -> None:
    """Raise LineageError unless model, tokenizer (and store) share one tokenizer.

    The model's ``meta["lineage"]["tokenizer_sha256"]`` must equal ``tokenizer_sha256``
    and, when given, the store's ``tokenizer_sha256`` attribute.
    """
    model_where = f" ({model_path})" if model_path else ""
    lineage = model_meta.get("lineage") if isinstance(model_meta, Mapping) else None
    if not isinstance(lineage, Mapping) or not lineage.get("tokenizer_sha256"):
        raise LineageError(
            f"model{model_where} records no lineage.tokenizer_sha256 in its meta, so it cannot "
            "be matched to a tokenizer; save it through backstory's training"
        )
    model_sha = str(lineage["tokenizer_sha256"])
    if tokenizer_sha256 != model_sha:
        tok_where = f" ({tokenizer_path})" if tokenizer_path else ""
        raise LineageError(
            f"tokenizer{tok_where} has sha256 {tokenizer_sha256} but the model{model_where} "
            f"was trained with tokenizer sha256 {model_sha}; use the tokenizer it was trained with"
        )
    if store_attrs is not None and store_attrs.get("tokenizer_sha256") != model_sha:
        store_where = f" ({store_path})" if store_path else ""
        raise LineageError(
            f"token store{store_where} was encoded with tokenizer sha256 "
            f"{store_attrs.get('tokenizer_sha256')} but the model{model_where} was trained "
            f"with tokenizer sha256 {model_sha}"
        )


def model_variant(model_meta: Mapping[str, Any]) -> str | None:
    """The variant a model was trained for, from its lineage (None when not recorded)."""
    lineage = model_meta.get("lineage") if isinstance(model_meta, Mapping) else None
    return lineage.get("variant") if isinstance(lineage, Mapping) else None


