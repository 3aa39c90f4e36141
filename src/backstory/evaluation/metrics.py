"""Evaluation metrics: loss, perplexity and bits per byte, per-document bits, unigram.

Bits per byte (bpb) are those of the story text only: the summed losses of the
story-text tokens (nats / ln 2) over the UTF-8 bytes of exactly those stories, so
models with different tokenizers or layouts compare. To keep the numerator and the
denominator about the same text, evaluation always covers whole documents: with
``max_tokens`` it takes the first K complete documents, never a cut one.

A model is evaluated in the token order it was trained in (``backstory.lm.orders`` reads
the windows and documents in it; a permuted model's ``permutation_seed`` comes from its
training settings): the same tokens, each scored once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from backstory import params
from backstory.data.token_store import TokenStore
from backstory.lm.families import LanguageModel
from backstory.lm.model import eval_mode, model_device
from backstory.lm.orders import ORDERS, check_order

LN2 = math.log(2.0)


# ------------------------------------------------------------------------- shared checks


def _check_request(model: LanguageModel, store: TokenStore, seq_len: int, batch_size: int,
                   token_order: str, permutation_seed: int | None,
                   device: str | torch.device | None) -> torch.device:
    """The model's device, once the request fits the model (a different requested device is
    an error, not a silent move)."""
    params.check_int("", "batch_size", batch_size, 1)
    params.check_int("", "seq_len", seq_len, 1)
    if seq_len > model.config.max_seq_len:
        raise ValueError(
            f"seq_len={seq_len} exceeds the model's max_seq_len={model.config.max_seq_len}"
        )
    check_order(token_order, permutation_seed)
    if store.vocab_size > model.config.vocab_size:
        raise ValueError(
            f"{store.path}: vocab_size {store.vocab_size} is larger than the model's "
            f"{model.config.vocab_size}; the store was made with another tokenizer"
        )
    return model_device(model, device)


# ----------------------------------------------------------------------- per-token losses


@torch.inference_mode()
def _target_losses(model: LanguageModel, windows: np.ndarray, device: torch.device) -> torch.Tensor:
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


# --------------------------------------------------------------------- whole-store loss


def covered_documents(store: TokenStore, max_tokens: int | None) -> int:
    """How many leading complete documents fit in ``max_tokens`` (all of them for None)."""
    if max_tokens is None:
        return store.n_docs
    params.check_int("", "max_tokens", max_tokens, 1)
    k = int(np.searchsorted(store.doc_offsets, max_tokens, side="right")) - 1
    if k < 1:
        raise ValueError(
            f"{store.path}: max_tokens={max_tokens} is smaller than the first document "
            f"({int(store.doc_offsets[1]) if store.n_docs else 0} tokens); bits per byte "
            "need whole documents, so raise max_tokens"
        )
    return min(k, store.n_docs)


def evaluate_loss(
    model: LanguageModel,
    store: TokenStore,
    *,
    seq_len: int,
    batch_size: int,
    max_tokens: int | None = None,
    device: str | torch.device | None = None,
    token_order: str = "forward",
    permutation_seed: int | None = None,
) -> dict[str, float | int]:
    """Mean loss, perplexity and story bits per byte over whole documents of ``store``.

    Windows are the store's sequential windows over the first K complete documents
    (all of them when ``max_tokens`` is None). ``val_loss`` is the mean over every
    target token; ``val_bpb`` sums only story-text targets and divides by those
    documents' ``doc_bytes``. ``device`` None means the model's device.
    """
    device = _check_request(model, store, seq_len, batch_size, token_order, permutation_seed,
                            device)
    if store.n_docs == 0:
        raise ValueError(f"{store.path}: token store holds no documents to evaluate")
    k = covered_documents(store, max_tokens)
    covered = int(store.doc_offsets[k])
    if covered < 2:
        raise ValueError(f"{store.path}: {covered} tokens is too few to evaluate")
    batches = store.sequential_windows(seq_len, batch_size=batch_size, limit_tokens=covered)
    batches = ORDERS[token_order].scored(batches, store, k, permutation_seed)
    sums = _accumulate(model, batches, device)
    return _loss_report(store, k, sums)


@dataclass
class _Sums:
    loss: float = 0.0
    story_loss: float = 0.0
    n_tokens: int = 0
    n_story: int = 0


def _accumulate(
    model: LanguageModel, batches: Iterator[tuple[np.ndarray, np.ndarray]], device: torch.device
) -> _Sums:
    sums = _Sums()
    # Loss sums stay on the device until the end: no host sync per batch on a GPU.
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    with eval_mode(model):
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
    """Tokens of document i as scored, and their story mask, in the model's order."""
    tokens = store.document(i).astype(np.int64)
    start = int(store.doc_offsets[i])
    story = np.zeros(tokens.size, dtype=bool)
    span_start, span_end = (int(x) - start for x in store.story_spans[i])
    story[span_start:span_end] = True
    return ORDERS[token_order].document(store, i, tokens, story)


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
) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """(document, window tokens, story-target mask, scored-target mask) of every chunk of
    every document: each target of a document is scored by exactly one chunk."""
    for i in docs:
        tokens, story = _document_sequence(store, i, token_order)
        if tokens.size < 2:
            continue  # nothing to predict, and (with the check above) no story tokens
        for start, end, scored in _chunks(tokens.size, seq_len, stride):
            new = np.ones(end - start - 1, dtype=bool)
            new[: scored - start - 1] = False  # scored by an earlier chunk
            yield i, tokens[start:end], story[start + 1 : end] & new, new


def _pad_rows(rows: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    width = max(len(tokens) for _, tokens, _, _ in rows)
    windows = np.full((len(rows), width), -1, dtype=np.int64)
    story = np.zeros((len(rows), width - 1), dtype=bool)
    scored = np.zeros((len(rows), width - 1), dtype=bool)
    for r, (_, tokens, story_mask, scored_mask) in enumerate(rows):
        windows[r, : len(tokens)] = tokens
        story[r, : len(story_mask)] = story_mask
        scored[r, : len(scored_mask)] = scored_mask
    return np.array([doc for doc, _, _, _ in rows]), windows, story, scored


def document_bits(model: LanguageModel, store: TokenStore, **options: Any) -> np.ndarray:
    """Bits of each document's story text (float64, one per entry of ``docs``): the
    ``bits`` of ``document_scores``, which takes the same options."""
    return document_scores(model, store, **options)["bits"]


def document_scores(
    model: LanguageModel,
    store: TokenStore,
    *,
    seq_len: int,
    batch_size: int,
    token_order: str = "forward",
    stride: int | None = None,
    docs: Sequence[int] | None = None,
    device: str | torch.device | None = None,
    permutation_seed: int | None = None,
) -> dict[str, np.ndarray]:
    """Per-document scores, one entry per document of ``docs``.

    Each document is scored on its own: forward from its first token (a BOS or the
    instruction), backward reversed with the token that follows it in the stream as the
    first context token. Every story token is scored exactly once, so bits / doc_bytes
    is the document's bpb. Documents longer than seq_len + 1 tokens are scored in
    sliding windows that advance by ``stride`` tokens (default seq_len // 2): each later
    target sees at least seq_len + 1 - stride tokens of context. A permuted model reads
    each window (its targets masked as above) in its permutation.

    - ``bits``: bits of the story text (float64);
    - ``nats``: nats of every scored target of the document, instruction, BOS and EOS
      included (float64);
    - ``targets``: how many targets that is (int64): every token but the first, or in
      backward order every token (the first is predicted from the one after the document).
    """
    device = _check_request(model, store, seq_len, batch_size, token_order, permutation_seed,
                            device)
    stride = max(1, seq_len // 2) if stride is None else stride
    params.check_int("", "stride", stride, 1)
    if stride > seq_len:
        raise ValueError(f"stride={stride} must be <= seq_len={seq_len} (or targets are skipped)")
    docs = list(range(store.n_docs)) if docs is None else [int(d) for d in docs]
    bad = [d for d in docs if not 0 <= d < store.n_docs]
    if bad:
        raise ValueError(
            f"{store.path}: documents {bad[:5]} out of range ({store.n_docs} documents)"
        )
    position = {doc: p for p, doc in enumerate(docs)}
    if len(position) != len(docs):
        raise ValueError("docs lists a document more than once")
    story_nats = torch.zeros(len(docs), dtype=torch.float64, device=device)
    all_nats = torch.zeros(len(docs), dtype=torch.float64, device=device)
    targets = np.zeros(len(docs), dtype=np.int64)
    rows = _document_rows(store, docs, seq_len, stride, token_order)
    with eval_mode(model):
        for batch in tqdm(_batched(rows, batch_size), desc="document bits", unit="batch",
                          leave=False):
            doc_ids, windows, story, scored = _pad_rows(batch)
            windows, story, scored = ORDERS[token_order].rows(windows, story, scored,
                                                              permutation_seed)
            losses = _target_losses(model, windows, device).double()  # (b, T)
            where = torch.tensor([position[d] for d in doc_ids], device=device)
            # a long document spans several rows
            story_nats.index_add_(0, where, (losses * torch.from_numpy(story).to(device)).sum(1))
            all_nats.index_add_(0, where, (losses * torch.from_numpy(scored).to(device)).sum(1))
            np.add.at(targets, where.cpu().numpy(), scored.sum(axis=1))
    return {"bits": story_nats.cpu().numpy() / LN2, "nats": all_nats.cpu().numpy(),
            "targets": targets}


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


def story_token_counts(store: TokenStore, n_docs: int | None = None) -> np.ndarray:
    """int64 (vocab_size,): how often each id occurs in the story text of the store's
    first ``n_docs`` documents (all of them for None)."""
    counts = np.zeros(store.vocab_size, dtype=np.int64)
    n_docs = store.n_docs if n_docs is None else min(int(n_docs), store.n_docs)
    spans = store.story_spans[:n_docs]
    first = 0
    while first < n_docs:
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


def unigram_bpb(train_store: TokenStore, val_store: TokenStore, n_docs: int | None = None
                ) -> float:
    """Story bits per byte of ``val_store`` (its first ``n_docs`` documents; all for None)
    under a unigram model of ``train_store``.

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
    val_counts = story_token_counts(val_store, n_docs)
    n_bytes = int(val_store.doc_bytes[: val_store.n_docs if n_docs is None else n_docs].sum())
    if n_bytes == 0:
        raise ValueError(f"{val_store.path}: the validation stories hold no bytes")
    log2_p = np.log2(train_counts + 1.0) - math.log2(train_counts.sum() + train_store.vocab_size)
    return float(-(val_counts * log2_p).sum() / n_bytes)


def resolve_device(device: str) -> str:
    """'auto' -> cuda when available, else cpu; anything else is used as given."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


