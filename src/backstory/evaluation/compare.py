"""Cross-variant comparison: the arrow-of-time delta, text scoring and instruction checks.

The asymmetry measure is that of Arrows of Time (Papadopoulos et al., 2024):
``delta = E[x_bw - x_fw] / (0.5 * E[x_bw + x_fw])`` over documents, where x is a
document's loss under the backward and the forward model. Documents are the unit of
the bootstrap, because tokens inside one story are not independent.

Texts (generated or real stories, in normal reading order) are scored by writing them
as a small token store in a variant's own layout and passing that to
``evaluate.document_bits``, so a text is scored exactly as the validation stories are.

Instruction following is checked on the words and characters of a record: a story
"uses" a required word when one of its words is that word or a regular inflection of
it (fill -> fills, filled, filling); it "names the characters" when every name of the
summary occurs in it as a whole word.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from backstory import variants
from backstory.data.documents import encode_documents
from backstory.data.tokenizer import Tokenizer
from backstory.data.tokens import TokenStore, write_token_store
from backstory.evaluation.metrics import document_bits
from backstory.evaluation.sampling import prompt_ids, story_text
from backstory.lm.generate import check_sampling, generate
from backstory.lm.model import Transformer

logger = logging.getLogger(__name__)

# Resamples per bootstrap chunk: bounds memory at chunk x n_docs indices.
_BOOT_CHUNK = 256
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
_CAPITALIZED = re.compile(r"\b[A-Z][a-z]+(?:'s)?\b")
# Stripped before a word to see what precedes it: spaces, tabs and quotes.
_OPENERS = " \t\"'\u201c\u201d"
_VOWELS = set("aeiou")
# Capitalized words that are never a character's name even mid-sentence.
_NOT_NAMES = frozenset({"I", "Once", "The", "A", "An", "One", "In", "On", "At", "Then"})


class CompareError(ValueError):
    """Inputs to the comparison that do not fit together (different stories, sizes, ...)."""


# ----------------------------------------------------------------------- the delta


def _paired(x_bw: Sequence[float], x_fw: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    bw = np.asarray(x_bw, dtype=np.float64)
    fw = np.asarray(x_fw, dtype=np.float64)
    if bw.ndim != 1 or bw.shape != fw.shape:
        raise CompareError(
            f"backward and forward losses must be 1-D and paired per document, got shapes "
            f"{bw.shape} and {fw.shape}"
        )
    if bw.size == 0:
        raise CompareError("no documents to compare")
    if not (np.isfinite(bw).all() and np.isfinite(fw).all()):
        raise CompareError("losses must be finite numbers")
    return bw, fw


def asymmetry_delta(x_bw: Sequence[float], x_fw: Sequence[float]) -> float:
    """E[x_bw - x_fw] / (0.5 E[x_bw + x_fw]) over paired documents."""
    bw, fw = _paired(x_bw, x_fw)
    scale = 0.5 * (bw.mean() + fw.mean())
    if scale <= 0:
        raise CompareError("the mean loss is not positive, so the relative delta is undefined")
    return float((bw.mean() - fw.mean()) / scale)


def bootstrap_delta(
    x_bw: Sequence[float],
    x_fw: Sequence[float],
    *,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float | int]:
    """The delta and its percentile bootstrap interval, resampling documents in pairs.

    Same inputs and seed give the same interval. Returns delta, low, high, n_docs,
    n_boot and confidence.
    """
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 10:
        raise ValueError(f"compare.n_boot must be an integer >= 10, got {n_boot!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"compare.confidence must be in (0, 1), got {confidence!r}")
    bw, fw = _paired(x_bw, x_fw)
    rng = np.random.default_rng(seed)
    deltas = []
    for start in range(0, n_boot, _BOOT_CHUNK):
        size = min(_BOOT_CHUNK, n_boot - start)
        index = rng.integers(0, bw.size, size=(size, bw.size))  # (size, n_docs)
        mean_bw, mean_fw = bw[index].mean(axis=1), fw[index].mean(axis=1)
        deltas.append((mean_bw - mean_fw) / (0.5 * (mean_bw + mean_fw)))
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(np.concatenate(deltas), [tail, 100 - tail])
    return {
        "delta": asymmetry_delta(bw, fw),
        "low": float(low),
        "high": float(high),
        "n_docs": int(bw.size),
        "n_boot": n_boot,
        "confidence": confidence,
    }


# --------------------------------------------------------------- validation documents


def check_same_stories(stores: Mapping[str, TokenStore], n_docs: int) -> None:
    """Raise CompareError unless the stores hold the same first ``n_docs`` stories."""
    items = list(stores.items())
    if not items:
        raise CompareError("no token stores to compare")
    name0, store0 = items[0]
    for name, store in items:
        if store.n_docs < n_docs:
            raise CompareError(f"{store.path} ({name}) holds {store.n_docs} documents, "
                               f"fewer than the {n_docs} compared")
        for key in ("tokenizer_sha256", "corpus_fingerprint"):
            if store.attrs.get(key) != store0.attrs.get(key):
                raise CompareError(
                    f"{store.path} ({name}) and {store0.path} ({name0}) differ in {key}; "
                    "rerun the variants on one corpus and tokenizer"
                )
        if not np.array_equal(store.doc_bytes[:n_docs], store0.doc_bytes[:n_docs]):
            raise CompareError(f"{store.path} ({name}) does not hold the same stories in the "
                               f"same order as {store0.path} ({name0})")


def story_tokens_per_doc(store: TokenStore, n_docs: int) -> np.ndarray:
    """int64 (n_docs,): the story-text tokens of each of the first ``n_docs`` documents."""
    spans = store.story_spans[:n_docs]
    return (spans[:, 1] - spans[:, 0]).astype(np.int64)


def token_order_pairs(models: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(forward-order name, backward-order name) pairs that share one token layout.

    ``models`` maps a name to ``{"layout": ..., "token_order": ...}``. Only such pairs
    predict the same tokens, so only they compare in nats per token.
    """
    pairs = []
    for fw, fw_info in models.items():
        if fw_info.get("token_order") != "forward":
            continue
        for bw, bw_info in models.items():
            if bw_info.get("token_order") == "backward" and bw_info.get("layout") == \
                    fw_info.get("layout"):
                pairs.append((fw, bw))
    return pairs


# --------------------------------------------------------------------- scoring texts


def _text_records(texts: Sequence[str]) -> list[dict]:
    records = []
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"text {i} is empty or not a string; nothing to score")
        records.append({"story": text.strip(), "shard": "texts", "record": i})
    return records


def _texts_store(path: Path, texts: Sequence[str], tokenizer: Tokenizer, source: str
                 ) -> TokenStore:
    """Write ``texts`` as a token store in the ``source`` variant's layout and open it."""
    attrs = {
        "variant": source,
        "layout": variants.get(source).layout,
        "vocab_size": tokenizer.vocab_size,
        "bos_id": tokenizer.bos_id,
        "eos_id": tokenizer.eos_id,
        "tokenizer_sha256": tokenizer.sha256,
        "corpus_fingerprint": "scored-texts",
    }
    batches = encode_documents(_text_records(texts), tokenizer, variant=source, num_threads=1)
    write_token_store(path, batches, attrs=attrs)
    return TokenStore(path)


def score_texts(
    model: Transformer,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    *,
    variant: str,
    batch_size: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """(bits, bytes) of each text (normal reading order) under a model of ``variant``.

    Each text is laid out as the variant's documents are (a reversed model reads
    ``reverse_words(text)``) and scored in the variant's token order.
    """
    spec = variants.get(variant)
    if spec.instruct:
        raise ValueError(f"score_texts scores plain stories; {variant} documents carry an "
                         "instruction")
    if not texts:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    with tempfile.TemporaryDirectory(prefix="backstory-score-") as folder:
        store = _texts_store(Path(folder) / "texts.h5", texts, tokenizer, spec.token_source)
        try:
            bits = document_bits(model, store, seq_len=model.config.max_seq_len,
                                 batch_size=batch_size, token_order=spec.token_order)
            n_bytes = np.array(store.doc_bytes, dtype=np.int64)
        finally:
            store.close()
    return bits, n_bytes


# ------------------------------------------------------------------ batched samples


def generate_batched(
    model: Transformer,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    *,
    variant: str,
    batch_size: int = 16,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One story per prompt in ``variant``'s mode, ``batch_size`` prompts per decode.

    Like ``sampling.generate_story`` (same prompt ids, stop ids and text in reading
    order), but batched: batch b samples with seed + b, so a story depends on its batch.
    The token budget is capped by the context left after the batch's longest prompt.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"compare.generate_batch_size must be an integer >= 1, got {batch_size!r}")
    check_sampling(temperature, top_k, top_p)
    ids = [prompt_ids(tokenizer, variant, prompt) for prompt in prompts]
    out: list[dict[str, Any]] = []
    for b, start in enumerate(range(0, len(ids), batch_size)):
        batch = ids[start : start + batch_size]
        budget = min(max_new_tokens, model.config.max_seq_len - max(map(len, batch)))
        if budget < 1:
            raise ValueError(f"a prompt of {max(map(len, batch))} tokens leaves no room in the "
                             f"model's context of {model.config.max_seq_len} tokens")
        new = generate(model, batch, max_new_tokens=budget, temperature=temperature, top_k=top_k,
                       top_p=top_p, stop_ids=(tokenizer.bos_id, tokenizer.eos_id), seed=seed + b)
        # sampling.story_text is the one definition of how a sample reads in normal order.
        for prompt, prompt_tokens, tokens in zip(prompts[start:], batch, new, strict=False):
            out.append({"variant": variant, "mode": variants.get(variant).mode,
                        "prompt": prompt,
                        "text": story_text(tokenizer, variant, prompt_tokens, tokens),
                        "n_new_tokens": len(tokens), "stopped": len(tokens) < budget,
                        "seed": seed + b})
    return out


# ----------------------------------------------------------- instruction following


def word_forms(word: str) -> set[str]:
    """Lower-case regular inflections of ``word``: -s/-es, -ed, -ing, -er, -est, -y rules."""
    w = word.strip().lower()
    if not w or not _WORD.fullmatch(w):
        raise ValueError(f"required word {word!r} is not a single word")
    forms = {w, w + "s", w + "es", w + "ed", w + "ing", w + "er", w + "est", w + "ly"}
    if w.endswith("e"):
        stem = w[:-1]
        forms |= {w + "d", w + "r", w + "st", stem + "ing"}
    if w.endswith("y") and len(w) > 1 and w[-2] not in _VOWELS:
        stem = w[:-1]
        forms |= {stem + "ies", stem + "ied", stem + "ier", stem + "iest", stem + "ily"}
    if len(w) >= 3 and w[-1] not in _VOWELS | {"w", "x", "y"} and w[-2] in _VOWELS \
            and w[-3] not in _VOWELS:
        # stop -> stopped, big -> bigger: a short final consonant doubles
        forms |= {w + w[-1] + end for end in ("ed", "ing", "er", "est")}
    return forms


def story_words(story: str) -> set[str]:
    """The lower-case words of a story (a trailing 's drops: "Pete's" counts as "pete")."""
    return {w.lower().removesuffix("'s") for w in _WORD.findall(story)}


def uses_words(story: str, words: Iterable[str]) -> bool:
    """Whether every required word occurs in ``story`` (any regular inflection)."""
    present = story_words(story)
    return all(word_forms(w) & present for w in words)


def _mid_sentence_capitals(text: str) -> set[str]:
    """Capitalized words of ``text`` that do not start a sentence (so names, mostly)."""
    found = set()
    for match in _CAPITALIZED.finditer(text):
        before = text[max(0, match.start() - 8) : match.start()].rstrip(_OPENERS)
        if before and before[-1] not in ".!?\n":
            found.add(match.group().removesuffix("'s"))
    return found


def summary_characters(summary: str, reference: str = "") -> list[str]:
    """Names of the characters in ``summary``, in order of first mention.

    A capitalized word is a name when it stands mid-sentence in the summary or in the
    ``reference`` story (a sentence's first word is capitalized anyway, so it counts
    only when it is capitalized elsewhere too: "Shy Pete meets ..." gives ["Pete"]).
    """
    known = _mid_sentence_capitals(summary) | _mid_sentence_capitals(reference)
    names: list[str] = []
    for match in _CAPITALIZED.finditer(summary):
        name = match.group().removesuffix("'s")
        if name in known and name not in _NOT_NAMES and name not in names:
            names.append(name)
    return names


def names_characters(story: str, names: Iterable[str]) -> bool:
    """Whether every name occurs in ``story`` as a whole word (case-sensitive)."""
    present = {w.removesuffix("'s") for w in _WORD.findall(story)}
    return all(name in present for name in names)


def instruction_checks(story: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """Which requirements of ``record`` (words, summary characters) ``story`` meets."""
    words = [str(w) for w in record.get("words", [])]
    names = summary_characters(str(record.get("summary", "")), str(record.get("story", "")))
    return {
        "words": words,
        "characters": names,
        "uses_words": uses_words(story, words),
        "names_characters": names_characters(story, names),
    }


def instruction_shares(stories: Sequence[str], records: Sequence[Mapping[str, Any]]
                       ) -> dict[str, float | int]:
    """Shares of ``stories`` that use all words / name all characters of their record."""
    if len(stories) != len(records):
        raise CompareError(f"{len(stories)} stories but {len(records)} records to check them by")
    if not stories:
        raise CompareError("no stories to check")
    checks = [instruction_checks(s, r) for s, r in zip(stories, records, strict=True)]
    n = len(checks)
    words = sum(c["uses_words"] for c in checks)
    names = sum(c["names_characters"] for c in checks)
    both = sum(c["uses_words"] and c["names_characters"] for c in checks)
    return {"n": n, "uses_words": words / n, "names_characters": names / n, "both": both / n}
