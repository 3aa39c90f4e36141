"""Evaluation: loss, perplexity and bits per byte, per-document bits, and samples.

Bits per byte (bpb) are those of the story text only: the summed losses of the
story-text tokens (nats / ln 2) over the UTF-8 bytes of exactly those stories, so
models with different tokenizers or layouts compare. To keep the numerator and the
denominator about the same text, evaluation always covers whole documents: with
``max_tokens`` it takes the first K complete documents, never a cut one.

``token_order="backward"`` evaluates a model trained on windows reversed in token space
(Arrows of Time): the forward windows are reversed, so the same tokens are predicted,
right to left. A stream's last token is then only predictable from the token that
follows it; at the end of the evaluated range that is the next document's first token
(or the store's first token after the last document, the token documents start with).

Samples use each variant's natural mode: forward completes a story opening, reversed
writes a story backwards towards a given ending, instruct follows an instruction.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from backstory.lm.checkpoint import TrainedModel, build_model
from backstory.lm.generate import check_sampling, generate
from backstory.lm.model import Transformer
from backstory.data.text import DEFAULT_TEMPLATES, record_instruction, reverse_words
from backstory.data.tokenizer import Tokenizer
from backstory.data.tokens import TokenStore

logger = logging.getLogger(__name__)

VARIANTS = ("forward", "reversed", "instruct")
TOKEN_ORDERS = ("forward", "backward")
# How each variant is prompted: its natural generation mode.
MODES = {"forward": "completion", "reversed": "ending", "instruct": "instruction"}
LN2 = math.log(2.0)
# Forward prompts: the story's first sentence, or its first words when that runs long.
PROMPT_MAX_WORDS = 16
PROMPT_FALLBACK_WORDS = 8
# A sentence ends at . ! ? (optionally closed by a quote) followed by whitespace.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"'\u201d])\s+")


class LineageError(ValueError):
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


# ------------------------------------------------------------------------- shared checks


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")


def _check_order(token_order: str) -> None:
    if token_order not in TOKEN_ORDERS:
        raise ValueError(f"token_order must be one of {TOKEN_ORDERS}, got {token_order!r}")


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _model_device(model: Transformer, device: str | torch.device | None) -> torch.device:
    """The model's device; a different requested device is an error, not a silent move."""
    have = model.tok_embeddings.weight.device
    if device is None:
        return have
    wanted = torch.device(device)
    if wanted.type != have.type or wanted.index not in (None, have.index):
        raise ValueError(
            f"device={wanted} but the model is on {have}; move it with model.to(device) first"
        )
    return have


def _check_seq_len(model: Transformer, seq_len: int) -> None:
    _check_positive("seq_len", seq_len)
    if seq_len > model.config.max_seq_len:
        raise ValueError(
            f"seq_len={seq_len} exceeds the model's max_seq_len={model.config.max_seq_len}"
        )


def _check_store_fits(model: Transformer, store: TokenStore) -> None:
    if store.vocab_size > model.config.vocab_size:
        raise ValueError(
            f"{store.path}: vocab_size {store.vocab_size} is larger than the model's "
            f"{model.config.vocab_size}; the store was made with another tokenizer"
        )


# ----------------------------------------------------------------------- per-token losses


@torch.inference_mode()
def _target_losses(model: Transformer, windows: np.ndarray, device: torch.device) -> torch.Tensor:
    """Cross-entropy in nats (b, T) of windows (b, T + 1) padded with -1 (0 where padded)."""
    batch = torch.from_numpy(np.ascontiguousarray(windows)).to(device)
    inputs = batch[:, :-1].clamp(min=0)  # padded inputs only feed padded targets
    targets = batch[:, 1:]
    logits, _ = model(inputs)  # (b, T, V)
    # Flat rows (b * T, V) keep the softmax on contiguous memory: ~3x faster on CPU
    # than classes on dim 1 of a transposed (b, V, T) view.
    flat = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=-1, reduction="none")
    return flat.view(targets.shape)  # (b, T)


class _EvalMode:
    """Run a block with the model in eval mode and restore its previous mode after."""

    def __init__(self, model: Transformer) -> None:
        self.model = model
        self.was_training = model.training

    def __enter__(self) -> Transformer:
        self.model.eval()
        return self.model

    def __exit__(self, *exc_info: object) -> None:
        self.model.train(self.was_training)


# --------------------------------------------------------------------- whole-store loss


def covered_documents(store: TokenStore, max_tokens: int | None) -> int:
    """How many leading complete documents fit in ``max_tokens`` (all of them for None)."""
    if max_tokens is None:
        return store.n_docs
    _check_positive("max_tokens", max_tokens)
    k = int(np.searchsorted(store.doc_offsets, max_tokens, side="right")) - 1
    if k < 1:
        raise ValueError(
            f"{store.path}: max_tokens={max_tokens} is smaller than the first document "
            f"({int(store.doc_offsets[1]) if store.n_docs else 0} tokens); bits per byte "
            "need whole documents, so raise max_tokens"
        )
    return min(k, store.n_docs)


def _boundary_token(store: TokenStore, k: int) -> int:
    """The token after the first k documents: the next one's first, or the store's first."""
    position = int(store.doc_offsets[k]) if k < store.n_docs else 0
    return int(store.tokens[position])


def _first_is_story(store: TokenStore) -> bool:
    start, end = store.story_spans[0]
    return bool(start == 0 and end > 0)


def _reverse_rows(windows: np.ndarray, position_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reverse each row's valid (non -1) prefix of windows (b, L+1) and its position mask."""
    width = windows.shape[1]
    n_valid = (windows >= 0).sum(axis=1, keepdims=True)  # (b, 1)
    j = np.arange(width)[None, :]  # (1, L+1)
    index = np.where(j < n_valid, n_valid - 1 - j, j)  # (b, L+1): mirror the valid part
    return np.take_along_axis(windows, index, 1), np.take_along_axis(position_mask, index, 1)


def _with_boundary(
    windows: np.ndarray, position_mask: np.ndarray, boundary: int
) -> tuple[np.ndarray, np.ndarray]:
    """Append `boundary` after the last valid token (in the padding, or in one more row)."""
    last = windows[-1]
    n_valid = int((last >= 0).sum())
    if n_valid < windows.shape[1]:
        windows, position_mask = windows.copy(), position_mask.copy()
        windows[-1, n_valid] = boundary
        return windows, position_mask
    row = np.full((1, windows.shape[1]), -1, dtype=windows.dtype)
    row[0, :2] = (last[-1], boundary)
    row_mask = np.zeros((1, windows.shape[1]), dtype=bool)
    row_mask[0, 0] = position_mask[-1, -1]
    return np.vstack([windows, row]), np.vstack([position_mask, row_mask])


def _backward_batches(
    batches: Iterator[tuple[np.ndarray, np.ndarray]], first_mask: bool, boundary: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Reverse forward windows in token space; targets become positions 0 .. covered - 1."""
    carry = first_mask  # story mask of each window's position 0 = previous window's last
    pending: tuple[np.ndarray, np.ndarray] | None = None
    for windows, target_mask in batches:
        firsts = np.concatenate([[carry], target_mask[:-1, -1]])  # (b,)
        carry = bool(target_mask[-1, -1])
        position_mask = np.concatenate([firsts[:, None], target_mask], axis=1)  # (b, L+1)
        if pending is not None:
            yield _reversed_targets(*pending)
        pending = (windows, position_mask)
    if pending is not None:
        yield _reversed_targets(*_with_boundary(*pending, boundary))


def _reversed_targets(windows: np.ndarray, position_mask: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    reversed_windows, reversed_mask = _reverse_rows(windows, position_mask)
    return reversed_windows, reversed_mask[:, 1:] & (reversed_windows[:, 1:] >= 0)


def evaluate_loss(
    model: Transformer,
    store: TokenStore,
    *,
    seq_len: int,
    batch_size: int,
    max_tokens: int | None = None,
    device: str | torch.device | None = None,
    token_order: str = "forward",
) -> dict[str, float | int]:
    """Mean loss, perplexity and story bits per byte over whole documents of ``store``.

    Windows are the store's sequential windows over the first K complete documents
    (all of them when ``max_tokens`` is None). ``val_loss`` is the mean over every
    target token; ``val_bpb`` sums only story-text targets and divides by those
    documents' ``doc_bytes``. ``device`` None means the model's device.
    """
    _check_positive("batch_size", batch_size)
    _check_seq_len(model, seq_len)
    _check_order(token_order)
    _check_store_fits(model, store)
    device = _model_device(model, device)
    if store.n_docs == 0:
        raise ValueError(f"{store.path}: token store holds no documents to evaluate")
    k = covered_documents(store, max_tokens)
    covered = int(store.doc_offsets[k])
    if covered < 2:
        raise ValueError(f"{store.path}: {covered} tokens is too few to evaluate")
    batches = store.sequential_windows(seq_len, batch_size=batch_size, limit_tokens=covered)
    if token_order == "backward":
        batches = _backward_batches(batches, _first_is_story(store), _boundary_token(store, k))
    sums = _accumulate(model, batches, device)
    return _loss_report(store, k, sums)


@dataclass
class _Sums:
    loss: float = 0.0
    story_loss: float = 0.0
    n_tokens: int = 0
    n_story: int = 0


def _accumulate(
    model: Transformer, batches: Iterator[tuple[np.ndarray, np.ndarray]], device: torch.device
) -> _Sums:
    sums = _Sums()
    # Loss sums stay on the device until the end: no host sync per batch on a GPU.
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    with _EvalMode(model):
        for windows, story in tqdm(batches, desc="evaluate loss", unit="batch", leave=False):
            losses = _target_losses(model, windows, device).double()  # (b, L), 0 where padded
            story_t = torch.from_numpy(np.ascontiguousarray(story)).to(device)
            totals[0] += losses.sum()
            totals[1] += (losses * story_t).sum()
            sums.n_tokens += int((windows[:, 1:] >= 0).sum())
            sums.n_story += int(story.sum())
    sums.loss, sums.story_loss = totals.tolist()
    return sums


def _loss_report(store: TokenStore, k: int, sums: _Sums) -> dict[str, float | int]:
    spans = store.story_spans[:k]
    expected = int((spans[:, 1] - spans[:, 0]).sum())
    if sums.n_story != expected:
        # Only a story starting at the very first token of the store can go unscored.
        raise ValueError(
            f"{store.path}: scored {sums.n_story} story tokens but the {k} documents hold "
            f"{expected}; a story that starts at the store's first token has no context "
            "to be predicted from"
        )
    n_bytes = int(store.doc_bytes[:k].sum())
    if n_bytes == 0:
        raise ValueError(f"{store.path}: the evaluated documents hold no story bytes")
    mean = sums.loss / sums.n_tokens
    return {
        "val_loss": mean,
        "val_perplexity": math.exp(mean),
        "val_bpb": sums.story_loss / LN2 / n_bytes,
        "n_tokens": sums.n_tokens,
        "n_story_tokens": sums.n_story,
        "n_bytes": n_bytes,
        "n_docs": k,
    }


# ------------------------------------------------------------------- per-document bits


def _document_sequence(store: TokenStore, i: int, token_order: str
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Tokens of document i as scored, and their story mask (forward or reversed)."""
    tokens = store.document(i).astype(np.int64)
    start = int(store.doc_offsets[i])
    story = np.zeros(tokens.size, dtype=bool)
    span_start, span_end = (int(x) - start for x in store.story_spans[i])
    story[span_start:span_end] = True
    if token_order == "forward":
        if span_start == 0 and span_end > 0:
            raise ValueError(
                f"{store.path}: document {i}'s story starts at its first token, which no "
                "context predicts; per-document forward bits need a token before the story"
            )
        return tokens, story
    # The token after the document (the next one's first) gives the last token context.
    boundary = _boundary_token(store, i + 1)
    return np.append(tokens, boundary)[::-1].copy(), np.append(story, False)[::-1].copy()


def _chunks(n: int, seq_len: int, stride: int) -> Iterator[tuple[int, int, int]]:
    """(start, end, first scored) windows over n tokens scoring targets 1 .. n - 1 once."""
    start, scored = 0, 1
    while True:
        end = min(start + seq_len + 1, n)
        yield start, end, scored
        if end >= n:
            return
        scored = end
        start = min(start + stride, n - seq_len - 1)


def _document_rows(
    store: TokenStore, docs: Sequence[int], seq_len: int, stride: int, token_order: str
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(document, window tokens, scored story-target mask) for every chunk of every doc."""
    for i in docs:
        tokens, story = _document_sequence(store, i, token_order)
        if tokens.size < 2:
            continue  # nothing to predict, and (with the check above) no story tokens
        for start, end, scored in _chunks(tokens.size, seq_len, stride):
            target_story = story[start + 1 : end].copy()
            target_story[: scored - start - 1] = False  # scored by an earlier chunk
            yield i, tokens[start:end], target_story


def _pad_rows(rows: list[tuple[int, np.ndarray, np.ndarray]]
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    width = max(len(tokens) for _, tokens, _ in rows)
    windows = np.full((len(rows), width), -1, dtype=np.int64)
    story = np.zeros((len(rows), width - 1), dtype=bool)
    for r, (_, tokens, mask) in enumerate(rows):
        windows[r, : len(tokens)] = tokens
        story[r, : len(mask)] = mask
    return np.array([doc for doc, _, _ in rows]), windows, story


def document_bits(
    model: Transformer,
    store: TokenStore,
    *,
    seq_len: int,
    batch_size: int = 16,
    token_order: str = "forward",
    stride: int | None = None,
    docs: Sequence[int] | None = None,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Bits of each document's story text (float64, one per entry of ``docs``).

    Each document is scored on its own: forward from its first token (a BOS or the
    instruction), backward reversed with the token that follows it in the stream as the
    first context token. Every story token is scored exactly once, so bits / doc_bytes
    is the document's bpb. Documents longer than seq_len + 1 tokens are scored in
    sliding windows that advance by ``stride`` tokens (default seq_len // 2): each later
    target sees at least seq_len + 1 - stride tokens of context.
    """
    _check_positive("batch_size", batch_size)
    _check_seq_len(model, seq_len)
    _check_order(token_order)
    _check_store_fits(model, store)
    stride = max(1, seq_len // 2) if stride is None else stride
    _check_positive("stride", stride)
    if stride > seq_len:
        raise ValueError(f"stride={stride} must be <= seq_len={seq_len} (or targets are skipped)")
    device = _model_device(model, device)
    docs = list(range(store.n_docs)) if docs is None else [int(d) for d in docs]
    bad = [d for d in docs if not 0 <= d < store.n_docs]
    if bad:
        raise ValueError(
            f"{store.path}: documents {bad[:5]} out of range ({store.n_docs} documents)"
        )
    position = {doc: p for p, doc in enumerate(docs)}
    if len(position) != len(docs):
        raise ValueError("docs lists a document more than once")
    bits = torch.zeros(len(docs), dtype=torch.float64, device=device)
    rows = _document_rows(store, docs, seq_len, stride, token_order)
    with _EvalMode(model):
        for batch in tqdm(_batched(rows, batch_size), desc="document bits", unit="batch",
                          leave=False):
            doc_ids, windows, story = _pad_rows(batch)
            losses = _target_losses(model, windows, device).double()  # (b, T)
            row_nats = (losses * torch.from_numpy(story).to(device)).sum(dim=1)  # (b,)
            where = torch.tensor([position[d] for d in doc_ids], device=device)
            bits.index_add_(0, where, row_nats)  # a long document spans several rows
    return bits.cpu().numpy() / LN2


def _batched(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# ---------------------------------------------------------------------- unigram baseline

# Tokens per block when counting a store's story tokens: bounds memory for any store.
_COUNT_BLOCK = 1 << 24


def story_token_counts(store: TokenStore) -> np.ndarray:
    """int64 (vocab_size,): how often each id occurs in the store's story text."""
    counts = np.zeros(store.vocab_size, dtype=np.int64)
    spans = store.story_spans
    first = 0
    while first < store.n_docs:
        # Documents [first, last) whose story tokens span at most about one block.
        limit = spans[first, 0] + _COUNT_BLOCK
        last = max(first + 1, int(np.searchsorted(spans[:, 1], limit, side="right")))
        block = spans[first:last]
        lo, hi = int(block[0, 0]), int(block[-1, 1])
        tokens = np.asarray(store.tokens[lo:hi])
        counts += np.bincount(tokens[_span_mask(block - lo, hi - lo)], minlength=store.vocab_size)
        first = last
    return counts


def _span_mask(spans: np.ndarray, size: int) -> np.ndarray:
    """Bool (size,): True inside the disjoint [start, end) spans."""
    depth = np.bincount(spans[:, 0], minlength=size + 1) - np.bincount(spans[:, 1],
                                                                     minlength=size + 1)
    return np.cumsum(depth[:size]) > 0


def unigram_bpb(train_store: TokenStore, val_store: TokenStore) -> float:
    """Story bits per byte of ``val_store`` under a unigram model of ``train_store``.

    p(id) = (count of id in the training stories + 1) / (training story tokens + V):
    add-one smoothing over the whole vocabulary, so unseen ids cost log2(N + V) bits.
    """
    for key in ("tokenizer_sha256", "vocab_size"):
        if train_store.attrs.get(key) != val_store.attrs.get(key):
            raise ValueError(
                f"train store {train_store.path} and validation store {val_store.path} differ "
                f"in {key} ({train_store.attrs.get(key)!r} vs {val_store.attrs.get(key)!r})"
            )
    train_counts = story_token_counts(train_store)
    val_counts = story_token_counts(val_store)
    n_bytes = int(val_store.doc_bytes.sum())
    if n_bytes == 0:
        raise ValueError(f"{val_store.path}: the validation stories hold no bytes")
    log2_p = np.log2(train_counts + 1.0) - math.log2(train_counts.sum() + train_store.vocab_size)
    return float(-(val_counts * log2_p).sum() / n_bytes)


# ------------------------------------------------------------------------------ samples


def _sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def opening_prompt(story: str) -> str:
    """A forward prompt: the first sentence, or its first words when it runs long."""
    sentences = _sentences(story)
    if not sentences:
        raise ValueError("cannot make a prompt from an empty story")
    words = sentences[0].split()
    if len(words) > PROMPT_MAX_WORDS:
        return " ".join(words[:PROMPT_FALLBACK_WORDS])
    return sentences[0]


def ending_prompt(story: str) -> str:
    """A reversed-model prompt: the story's last sentence, in normal word order."""
    sentences = _sentences(story)
    if not sentences:
        raise ValueError("cannot make an ending from an empty story")
    return sentences[-1]


def prompt_ids(tokenizer: Tokenizer, variant: str, prompt: str) -> list[int]:
    """The token ids that start generation for ``prompt`` (given in normal reading order)."""
    _check_variant(variant)
    if not prompt.strip() and variant != "forward":
        raise ValueError(f"the {variant} variant needs a non-empty prompt")
    if variant == "forward":
        return [tokenizer.bos_id] + (tokenizer.encode_one(prompt) if prompt else [])
    if variant == "reversed":
        return [tokenizer.bos_id] + tokenizer.encode_one(reverse_words(prompt))
    # Instruction mode: [EOS] + instruction + [BOS]; the story follows the BOS.
    return [tokenizer.eos_id] + tokenizer.encode_one(prompt) + [tokenizer.bos_id]


def _story_text(tokenizer: Tokenizer, variant: str, ids: list[int], new: list[int]) -> str:
    """The story in normal reading order from the prompt ids and the generated ids."""
    if variant == "forward":
        return tokenizer.decode(ids + new)
    if variant == "reversed":
        return reverse_words(tokenizer.decode(ids + new))
    return tokenizer.decode(new)  # only what follows the prompt's BOS


def _room(model: Transformer, n_prompt: int, max_new_tokens: int) -> int:
    """max_new_tokens, capped by what is left of the model's context after the prompt."""
    _check_positive("max_new_tokens", max_new_tokens)
    room = model.config.max_seq_len - n_prompt
    if room < 1:
        raise ValueError(
            f"the prompt is {n_prompt} tokens, which leaves no room in the model's context "
            f"of {model.config.max_seq_len} tokens; shorten it"
        )
    if max_new_tokens > room:
        logger.info("max_new_tokens %d capped at %d: the context holds %d tokens",
                    max_new_tokens, room, model.config.max_seq_len)
    return min(max_new_tokens, room)


def _generate_backward(model: Transformer, tokenizer: Tokenizer, *, variant: str, prompt: str,
                       max_new_tokens: int, temperature: float, top_k: int | None,
                       top_p: float | None, seed: int) -> dict[str, Any]:
    """The story before ``prompt`` from a model trained on token-reversed windows."""
    if variant != "forward":
        raise ValueError(f"token-order backward sampling needs the forward layout, not {variant!r}")
    ending = tokenizer.encode_one(prompt)
    if not ending:
        raise ValueError("token-order backward sampling needs a non-empty ending")
    ids = ending[::-1]  # the ending read last token first
    budget = _room(model, len(ids), max_new_tokens)
    new = generate(model, [ids], max_new_tokens=budget, temperature=temperature, top_k=top_k,
                   top_p=top_p, stop_ids=(tokenizer.bos_id, tokenizer.eos_id), seed=seed)[0]
    return _sample(variant, "ending, token order backward", prompt,
                   tokenizer.decode(new[::-1] + ending), new, budget, seed)


def _sample(variant: str, mode: str, prompt: str, text: str, new: list[int], budget: int,
            seed: int) -> dict[str, Any]:
    """One sample record; generate cuts before the first stop id, so a short result means
    one was hit."""
    return {"variant": variant, "mode": mode, "prompt": prompt, "text": text,
            "n_new_tokens": len(new), "stopped": len(new) < budget, "seed": seed}


def generate_story(
    model: Transformer,
    tokenizer: Tokenizer,
    *,
    variant: str,
    prompt: str,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    token_order: str = "forward",
) -> dict[str, Any]:
    """Generate one story in ``variant``'s mode; the result reads in normal order.

    forward continues ``prompt`` (text = prompt + continuation); reversed takes an
    ending, generates the story backwards and returns it ending with that ending;
    instruct follows the instruction ``prompt`` (text = the story alone). Generation
    stops at BOS or EOS (``stopped`` True) or after the token budget.
    ``token_order="backward"`` (forward layout only) takes an ending and generates the
    tokens before it, last first, as the model was trained (Arrows of Time).
    """
    _check_variant(variant)
    _check_order(token_order)
    check_sampling(temperature, top_k, top_p)
    if token_order == "backward":
        return _generate_backward(model, tokenizer, variant=variant, prompt=prompt,
                                  max_new_tokens=max_new_tokens, temperature=temperature,
                                  top_k=top_k, top_p=top_p, seed=seed)
    ids = prompt_ids(tokenizer, variant, prompt)
    budget = _room(model, len(ids), max_new_tokens)
    stops = (tokenizer.bos_id, tokenizer.eos_id)
    new = generate(model, [ids], max_new_tokens=budget, temperature=temperature, top_k=top_k,
                   top_p=top_p, stop_ids=stops, seed=seed)[0]
    return _sample(variant, MODES[variant], prompt, _story_text(tokenizer, variant, ids, new),
                   new, budget, seed)


def _record_prompt(record: Mapping[str, Any], variant: str, index: int, seed: int) -> str:
    if variant == "instruct":
        return record_instruction(
            str(record.get("summary", "")), list(record.get("words", [])),
            list(record.get("features", [])), templates=DEFAULT_TEMPLATES, seed=seed,
            key=f"sample {index}",
        )
    story = record.get("story")
    if not isinstance(story, str):
        raise ValueError(f"sample record {index} has no 'story' text")
    return opening_prompt(story) if variant == "forward" else ending_prompt(story)


def _store_prompt(store: TokenStore, tokenizer: Tokenizer, variant: str, i: int,
                  token_order: str = "forward") -> str:
    """The prompt for document i, decoded from the store (reversed text read back).

    A token-order backward model writes towards the start, so it gets the ending.
    """
    if variant == "instruct":
        # The instruction is what precedes the story; BOS/EOS decode to nothing.
        before = store.document(i)[: int(store.story_spans[i, 0] - store.doc_offsets[i])]
        instruction = tokenizer.decode(before.tolist()).strip()
        if not instruction:
            raise ValueError(f"{store.path}: document {i} has no instruction before its story")
        return instruction
    story = tokenizer.decode(store.story_tokens(i).tolist())
    if variant == "forward":
        return ending_prompt(story) if token_order == "backward" else opening_prompt(story)
    return ending_prompt(reverse_words(story))


def sample_prompts(
    source: TokenStore | Sequence[Mapping[str, Any]],
    tokenizer: Tokenizer,
    *,
    variant: str,
    n: int,
    seed: int = 0,
    max_prompt_tokens: int | None = None,
    token_order: str = "forward",
) -> list[str]:
    """Prompts (normal reading order) from the first ``n`` validation documents or records.

    With ``max_prompt_tokens``, documents whose prompt ids would be longer are passed
    over (and counted in the log), so a short context still gets ``n`` samples.
    """
    _check_variant(variant)
    _check_positive("n", n)
    is_store = isinstance(source, TokenStore)
    if is_store and source.attrs.get("variant") != variant:
        raise ValueError(
            f"{source.path} holds the {source.attrs.get('variant')!r} variant, not {variant!r}"
        )
    prompts: list[str] = []
    skipped = 0
    for i in range(source.n_docs if is_store else len(source)):
        if len(prompts) == n:
            break
        prompt = (_store_prompt(source, tokenizer, variant, i, token_order) if is_store
                  else _record_prompt(source[i], variant, i, seed))
        if max_prompt_tokens is not None and \
                len(prompt_ids(tokenizer, variant, prompt)) > max_prompt_tokens:
            skipped += 1
            continue
        prompts.append(prompt)
    if skipped:
        logger.info("passed over %d validation documents whose prompts exceed %d tokens",
                    skipped, max_prompt_tokens)
    if len(prompts) < n:
        logger.warning("asked for %d samples but found only %d usable validation documents",
                       n, len(prompts))
    return prompts


def make_samples(
    model: Transformer,
    tokenizer: Tokenizer,
    source: TokenStore | Sequence[Mapping[str, Any]],
    *,
    variant: str,
    n: int,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    token_order: str = "forward",
) -> list[dict[str, Any]]:
    """``n`` samples in the variant's natural mode, prompted from validation data.

    Prompts must leave room for at least min(max_new_tokens, max_seq_len // 4) new
    tokens; sample i uses seed + i, so each sample is reproducible on its own.
    """
    _check_positive("max_new_tokens", max_new_tokens)
    context = model.config.max_seq_len
    longest = context - min(max_new_tokens, max(1, context // 4))
    prompts = sample_prompts(source, tokenizer, variant=variant, n=n, seed=seed,
                             max_prompt_tokens=longest, token_order=token_order)
    return [
        generate_story(model, tokenizer, variant=variant, prompt=prompt,
                       max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                       top_p=top_p, seed=seed + i, token_order=token_order)
        for i, prompt in enumerate(tqdm(prompts, desc=f"{variant} samples", unit="story",
                                        leave=False))
    ]


def samples_markdown(samples: Sequence[Mapping[str, Any]]) -> str:
    """A readable report of samples: prompt, story and how generation ended."""
    lines = ["# Samples", ""]
    for i, sample in enumerate(samples, start=1):
        ending = "stopped at end of story" if sample["stopped"] else "ran out of tokens"
        lines += [
            f"## {i}. {sample['variant']} ({sample['mode']})",
            "",
            f"**Prompt:** {_one_line(sample['prompt'])}",
            "",
            *(f"> {line}" if line else ">" for line in str(sample["text"]).splitlines() or [""]),
            "",
            f"*{sample['n_new_tokens']} new tokens, {ending}.*",
            "",
        ]
    return "\n".join(lines)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


# ------------------------------------------------------------------ the pipeline's node


def resolve_device(device: str) -> str:
    """'auto' -> cuda when available, else cpu; anything else is used as given."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def evaluate_model(
    trained: TrainedModel,
    val_store: TokenStore,
    train_store: TokenStore,
    tokenizer: Tokenizer,
    *,
    variant: str,
    batch_size: int = 16,
    max_tokens: int | None = None,
    n_samples: int = 4,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    device: str = "auto",
) -> tuple[dict[str, Any], list[dict[str, Any]], str]:
    """Metrics, samples and the samples report of one trained variant model.

    Checks that model, tokenizer and stores share a tokenizer and that the model was
    trained for ``variant``; evaluates in the token order the model was trained in.
    """
    _check_variant(variant)
    check_lineage(trained.meta, tokenizer.sha256, val_store.attrs, store_path=str(val_store.path))
    trained_for = model_variant(trained.meta)
    if trained_for not in (None, variant):
        raise LineageError(f"the model was trained for the {trained_for!r} variant, "
                           f"not {variant!r}")
    token_order = str(trained.meta.get("train_config", {}).get("token_order", "forward"))
    model = build_model(trained).to(resolve_device(device)).eval()
    seq_len = trained.config.max_seq_len
    metrics: dict[str, Any] = evaluate_loss(model, val_store, seq_len=seq_len,
                                            batch_size=batch_size, max_tokens=max_tokens,
                                            token_order=token_order)
    metrics["unigram_bpb"] = unigram_bpb(train_store, val_store)
    metrics.update(variant=variant, token_order=token_order, seq_len=seq_len,
                   n_params=model.num_parameters(), steps=trained.meta.get("steps"))
    logger.info("%s: val loss %.4f, perplexity %.2f, %.4f bits per byte (unigram %.4f)",
                variant, metrics["val_loss"], metrics["val_perplexity"], metrics["val_bpb"],
                metrics["unigram_bpb"])
    samples = make_samples(model, tokenizer, val_store, variant=variant, n=n_samples,
                           max_new_tokens=max_new_tokens, temperature=temperature,
                           top_k=top_k, top_p=top_p, seed=seed, token_order=token_order)
    return metrics, samples, samples_markdown(samples)
