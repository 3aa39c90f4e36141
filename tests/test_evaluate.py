"""Evaluation: loss / bpb arithmetic by hand, per-document bits, unigram baseline, samples."""

from __future__ import annotations

import math
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from backstory import variants
from backstory.core.errors import InputError
from backstory.data.documents import record_key
from backstory.data.text import DEFAULT_TEMPLATES, record_instruction, reverse_words
from backstory.data.token_store import TokenStore
from backstory.data.token_writer import DocBatch, write_token_store
from backstory.data.tokenizer import Tokenizer
from backstory.evaluation.evaluate import (
    EvaluateConfig,
    check_store_holds,
    evaluate_model,
    evaluation_set,
    summarize_scores,
)
from backstory.evaluation.lineage import LineageError, check_lineage
from backstory.evaluation.metrics import (
    covered_documents,
    document_bits,
    document_scores,
    evaluate_loss,
    story_token_counts,
    unigram_bpb,
)
from backstory.evaluation.sampling import (
    ending_prompt,
    generate_story,
    make_samples,
    opening_prompt,
    prompt_ids,
    sample_prompts,
    samples_markdown,
)
from backstory.lm.checkpoint import TrainedModel
from backstory.lm.generate import SamplingConfig
from backstory.lm.model import Transformer
from tests.project import encoded, load_defaults, model_config, trained_tokenizer

GREEDY = {"max_new_tokens": 4, "temperature": 0, "top_k": None, "top_p": None}
EVAL_CONFIG = EvaluateConfig(batch_size=4, n_stories=12, curve_stories=4, n_samples=1,
                             max_new_tokens=4, temperature=0.8, top_k=None, top_p=None, seed=0,
                             device="cpu")
VOCAB = 320  # sentencepiece's 256 byte pieces + 3 specials leave ~60 merges

NAMES = ["Tom", "Lily", "Sam", "Mia", "Ben"]
VERBS = ["ran", "jumped", "slept", "played", "smiled", "looked"]
THINGS = ["the dog", "a red ball", "the big tree", "her mom", "a little cat"]


def make_records(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    records = []
    for i in range(n):
        sentences = [
            f"{rng.choice(NAMES)} {rng.choice(VERBS)} with {rng.choice(THINGS)}."
            for _ in range(rng.randint(2, 4))
        ]
        records.append({
            "story": " ".join(sentences),
            "summary": f"{rng.choice(NAMES)} plays with {rng.choice(THINGS)}",
            "words": [rng.choice(VERBS), "ball", "red"],
            "features": ["Dialogue"] if i % 2 else [],
            "shard": "data00.json",
            "record": i,
        })
    return records


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    texts = [r["story"] for r in make_records(200, seed=1)]
    texts += [reverse_words(t) for t in texts] + ["Write a short story about the end."]
    return Tokenizer(trained_tokenizer(texts, vocab_size=VOCAB))


def store_attrs(tokenizer: Tokenizer, variant: str, **overrides: object) -> dict:
    attrs = {
        "variant": variant,
        "layout": variants.get(variant).layout,
        "vocab_size": tokenizer.vocab_size,
        "bos_id": tokenizer.bos_id,
        "eos_id": tokenizer.eos_id,
        "tokenizer_sha256": tokenizer.sha256,
        "corpus_fingerprint": "test-corpus",
    }
    return attrs | overrides


def write_store(path: Path, tokenizer: Tokenizer, records: list[dict], variant: str
                ) -> TokenStore:
    batches = encoded(records, tokenizer, variant=variant, batch_size=3, num_threads=1)
    write_token_store(path, batches, attrs=store_attrs(tokenizer, variant))
    return TokenStore(path)


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return make_records(12, seed=2)


@pytest.fixture(scope="module")
def stores(tmp_path_factory, tokenizer: Tokenizer, records: list[dict]) -> dict[str, TokenStore]:
    root = tmp_path_factory.mktemp("stores")
    return {v: write_store(root / f"{v}.h5", tokenizer, records, v)
            for v in ("forward", "reversed", "instruct")}


@pytest.fixture(scope="module")
def train_store(tmp_path_factory, tokenizer: Tokenizer) -> TokenStore:
    path = tmp_path_factory.mktemp("train") / "train.h5"
    return write_store(path, tokenizer, make_records(40, seed=3), "forward")


def tiny_transformer(vocab: int = VOCAB, max_seq_len: int = 64, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    config = model_config(vocab_size=vocab, dim=16, n_layers=1, n_heads=2, n_kv_heads=1,
                         max_seq_len=max_seq_len)
    return Transformer(config).eval()


# ---------------------------------------------------------------------- test doubles


class BigramModel(nn.Module):
    """Logits depend only on the current input token, so every loss has a closed form."""

    def __init__(self, vocab: int = VOCAB, max_seq_len: int = 64, seed: int = 0) -> None:
        super().__init__()
        self.config = SimpleNamespace(vocab_size=vocab, max_seq_len=max_seq_len)
        self.tok_embeddings = nn.Embedding(vocab, vocab)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.tok_embeddings.weight.copy_(torch.randn(vocab, vocab, generator=generator))

    def forward(self, tokens, targets=None, *, cache=None):
        if cache is not None:
            cache.length += tokens.shape[1]
        return self.tok_embeddings(tokens), None

    def new_cache(self, batch_size, max_len=None):
        return SimpleNamespace(length=0)

    def log_probs(self) -> np.ndarray:
        """(V, V) float64: log p(next | current)."""
        return torch.log_softmax(self.tok_embeddings.weight.double(), -1).detach().numpy()


class ScriptedModel(nn.Module):
    """Greedy decoding reproduces `script`: position p predicts script[p + 1]."""

    def __init__(self, script: list[int], vocab: int = VOCAB, max_seq_len: int = 64) -> None:
        super().__init__()
        self.config = SimpleNamespace(vocab_size=vocab, max_seq_len=max_seq_len)
        self.tok_embeddings = nn.Embedding(1, 1)  # only carries the device
        self.script = script

    def forward(self, tokens, targets=None, *, cache=None):
        start = 0 if cache is None else cache.length
        if cache is not None:
            cache.length += tokens.shape[1]
        B, T = tokens.shape
        logits = torch.zeros(B, T, self.config.vocab_size)
        for t in range(T):
            nxt = start + t + 1
            logits[:, t, self.script[nxt] if nxt < len(self.script) else 0] = 10.0
        return logits, None

    def new_cache(self, batch_size, max_len=None):
        return SimpleNamespace(length=0)


def story_positions(store: TokenStore, k: int) -> np.ndarray:
    return np.concatenate([np.arange(s, e) for s, e in store.story_spans[:k]])


# ------------------------------------------------------------- evaluate_loss by hand


@pytest.mark.parametrize("variant", ["forward", "instruct"])
@pytest.mark.parametrize("seq_len,batch_size", [(16, 3), (7, 1), (64, 8)])
def test_forward_loss_and_bpb_match_a_hand_computation(stores, variant, seq_len, batch_size):
    store, model = stores[variant], BigramModel()
    table, t = model.log_probs(), store.tokens.astype(np.int64)
    nll = -table[t[:-1], t[1:]]  # loss of target position p = 1 .. n - 1
    story = story_positions(store, store.n_docs)
    result = evaluate_loss(model, store, seq_len=seq_len, batch_size=batch_size)
    assert result["n_tokens"] == store.n_tokens - 1
    assert result["val_loss"] == pytest.approx(nll.mean(), rel=1e-5)
    assert result["val_perplexity"] == pytest.approx(math.exp(nll.mean()), rel=1e-5)
    assert result["n_story_tokens"] == story.size
    assert result["n_bytes"] == int(store.doc_bytes.sum())
    bpb = nll[story - 1].sum() / math.log(2) / store.doc_bytes.sum()
    assert result["val_bpb"] == pytest.approx(bpb, rel=1e-5)
    assert result["n_docs"] == store.n_docs


@pytest.mark.parametrize("max_tokens", [None, 60, 125])
@pytest.mark.parametrize("seq_len,batch_size", [(16, 3), (5, 2)])
def test_backward_loss_predicts_every_token_from_the_one_after(
    stores, max_tokens, seq_len, batch_size
):
    store, model = stores["forward"], BigramModel(seed=1)
    k = covered_documents(store, max_tokens)
    covered = int(store.doc_offsets[k])
    t = store.tokens[:covered].astype(np.int64)
    boundary = store.tokens[covered] if covered < store.n_tokens else store.tokens[0]
    following = np.append(t[1:], boundary)  # the context of each backward target
    nll = -model.log_probs()[following, t]
    story = story_positions(store, k)
    result = evaluate_loss(model, store, seq_len=seq_len, batch_size=batch_size,
                           max_tokens=max_tokens, token_order="backward")
    assert result["n_tokens"] == covered
    assert result["n_story_tokens"] == story.size
    assert result["val_loss"] == pytest.approx(nll.mean(), rel=1e-5)
    bpb = nll[story].sum() / math.log(2) / store.doc_bytes[:k].sum()
    assert result["val_bpb"] == pytest.approx(bpb, rel=1e-5)


def test_max_tokens_takes_whole_documents_only(stores):
    store = stores["forward"]
    limit = int(store.doc_offsets[3]) + 2  # two tokens into the fourth document
    result = evaluate_loss(BigramModel(), store, seq_len=16, batch_size=4, max_tokens=limit)
    assert result["n_docs"] == 3
    assert result["n_tokens"] == int(store.doc_offsets[3]) - 1
    assert result["n_bytes"] == int(store.doc_bytes[:3].sum())
    with pytest.raises(ValueError, match="max_tokens=2 is smaller than the first document"):
        evaluate_loss(BigramModel(), store, seq_len=16, batch_size=4, max_tokens=2)


def test_uniform_model_gives_log_vocab_per_token(stores):
    model = tiny_transformer()
    with torch.no_grad():
        model.tok_embeddings.weight.zero_()  # tied output matrix: every logit is 0
    store = stores["reversed"]
    result = evaluate_loss(model, store, seq_len=32, batch_size=4)
    n_story = int((store.story_spans[:, 1] - store.story_spans[:, 0]).sum())
    assert result["val_loss"] == pytest.approx(math.log(VOCAB), rel=1e-6)
    assert result["val_perplexity"] == pytest.approx(VOCAB, rel=1e-5)
    assert result["val_bpb"] == pytest.approx(
        n_story * math.log2(VOCAB) / store.doc_bytes.sum(), rel=1e-6
    )


def test_real_model_loss_matches_its_own_forward_on_one_window(stores):
    store = stores["forward"]
    k = 2
    covered = int(store.doc_offsets[k])
    model = tiny_transformer(max_seq_len=covered)
    t = torch.from_numpy(store.tokens[:covered].astype(np.int64))[None]  # (1, covered)
    with torch.no_grad():
        _, loss = model(t[:, :-1], t[:, 1:])
    result = evaluate_loss(model, store, seq_len=covered - 1, batch_size=2, max_tokens=covered)
    assert result["n_tokens"] == covered - 1
    assert result["val_loss"] == pytest.approx(loss.item(), rel=1e-5)
    again = evaluate_loss(model, store, seq_len=covered - 1, batch_size=2, max_tokens=covered)
    assert again == result  # deterministic


def test_evaluate_loss_rejects_bad_settings(stores, tokenizer, tmp_path):
    store, model = stores["forward"], tiny_transformer(max_seq_len=32)
    with pytest.raises(ValueError, match="token_order"):
        evaluate_loss(model, store, seq_len=16, batch_size=2, token_order="sideways")
    with pytest.raises(ValueError, match="exceeds the model's max_seq_len=32"):
        evaluate_loss(model, store, seq_len=33, batch_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_loss(model, store, seq_len=16, batch_size=0)
    small = tiny_transformer(vocab=100, max_seq_len=32)
    with pytest.raises(ValueError, match="vocab_size 320 is larger than the model's 100"):
        evaluate_loss(small, store, seq_len=16, batch_size=2)


def test_story_at_the_very_first_token_is_not_silently_dropped(tmp_path, tokenizer):
    batch = DocBatch(tokens=np.array([5, 6, 7, 1, 8, 9]), doc_lengths=np.array([3, 3]),
                     story_spans=np.array([[0, 3], [1, 3]]), doc_bytes=np.array([9, 6]))
    path = tmp_path / "odd.h5"
    write_token_store(path, [batch], attrs=store_attrs(tokenizer, "forward"))
    with pytest.raises(ValueError, match="scored 4 story tokens but the 2 documents hold 5"):
        evaluate_loss(BigramModel(), TokenStore(path), seq_len=4, batch_size=2)
    # Backward order predicts the first token from the one after it: nothing is missed.
    result = evaluate_loss(BigramModel(), TokenStore(path), seq_len=4, batch_size=2,
                           token_order="backward")
    assert result["n_story_tokens"] == 5


# ------------------------------------------------------------------- per-document bits


@pytest.mark.parametrize("token_order", ["forward", "backward"])
def test_document_bits_sum_to_the_stream_story_bits(stores, token_order):
    store, model = stores["forward"], BigramModel(seed=2)
    stream = evaluate_loss(model, store, seq_len=16, batch_size=4, token_order=token_order)
    bits = document_bits(model, store, seq_len=64, batch_size=4, token_order=token_order)
    assert bits.shape == (store.n_docs,)
    assert bits.sum() == pytest.approx(stream["val_bpb"] * stream["n_bytes"], rel=1e-6)


@pytest.mark.parametrize("seq_len,stride", [(8, 8), (8, 3), (5, 1), (12, None)])
def test_long_documents_are_chunked_without_scoring_twice(stores, seq_len, stride):
    store, model = stores["instruct"], BigramModel(seed=3)
    docs = [0, 1, 5]  # instruct documents: 40-100 tokens each
    whole = document_bits(model, store, seq_len=64, batch_size=4, docs=docs)
    chunked = document_bits(model, store, seq_len=seq_len, stride=stride, batch_size=8, docs=docs)
    np.testing.assert_allclose(chunked, whole, rtol=1e-6)
    assert (whole > 0).all()


def test_document_bits_of_a_real_model_match_each_document_alone(stores):
    store, model = stores["reversed"], tiny_transformer()
    docs = [0, 4, 7]
    bits = document_bits(model, store, seq_len=64, docs=docs, batch_size=2)
    for got, i in zip(bits, docs, strict=True):
        doc = torch.from_numpy(store.document(i).astype(np.int64))[None]
        with torch.no_grad():
            logits, _ = model(doc[:, :-1])
        nll = F.cross_entropy(logits[0], doc[0, 1:], reduction="none")  # targets from 1
        start, end = store.story_spans[i] - store.doc_offsets[i]
        assert got == pytest.approx(nll[start - 1 : end - 1].sum().item() / math.log(2), rel=1e-5)


def test_document_bits_reject_bad_requests(stores):
    store, model = stores["forward"], BigramModel()
    with pytest.raises(ValueError, match="out of range"):
        document_bits(model, store, seq_len=16, batch_size=4, docs=[0, store.n_docs])
    with pytest.raises(ValueError, match="more than once"):
        document_bits(model, store, seq_len=16, batch_size=4, docs=[1, 1])
    with pytest.raises(ValueError, match="stride=17 must be <= seq_len=16"):
        document_bits(model, store, seq_len=16, batch_size=4, stride=17)


# --------------------------------------------------------------------- unigram baseline


def hand_store(path: Path, tokenizer: Tokenizer, docs: list[list[int]], spans, doc_bytes
               ) -> TokenStore:
    batch = DocBatch(tokens=np.concatenate(docs), doc_lengths=np.array([len(d) for d in docs]),
                     story_spans=np.array(spans), doc_bytes=np.array(doc_bytes))
    write_token_store(path, [batch], attrs=store_attrs(tokenizer, "forward"))
    return TokenStore(path)


def test_unigram_bpb_by_hand(tmp_path, tokenizer):
    # Training stories: ids 3, 3, 4 (BOS 1 and the instruction-like 9 lie outside).
    train = hand_store(tmp_path / "t.h5", tokenizer, [[1, 3, 3], [9, 1, 4]],
                       [[1, 3], [2, 3]], [5, 2])
    val = hand_store(tmp_path / "v.h5", tokenizer, [[1, 3, 4], [1, 4, 7]],
                     [[1, 3], [1, 3]], [4, 2])
    np.testing.assert_array_equal(np.nonzero(story_token_counts(train))[0], [3, 4])
    n, v = 3, VOCAB
    p3, p4, p7 = (2 + 1) / (n + v), (1 + 1) / (n + v), 1 / (n + v)
    expected = -(math.log2(p3) + 2 * math.log2(p4) + math.log2(p7)) / 6
    assert unigram_bpb(train, val) == pytest.approx(expected, rel=1e-12)


def test_story_token_counts_in_small_blocks_match_the_whole(stores, monkeypatch):
    import backstory.evaluation.metrics as metrics_module

    store = stores["instruct"]
    whole = story_token_counts(store)
    monkeypatch.setattr(metrics_module, "_COUNT_BLOCK", 7)
    np.testing.assert_array_equal(story_token_counts(store), whole)
    assert whole.sum() == (store.story_spans[:, 1] - store.story_spans[:, 0]).sum()


def test_unigram_bpb_needs_the_same_tokenizer(tmp_path, tokenizer, stores):
    other = tmp_path / "other.h5"
    batch = DocBatch(tokens=np.array([1, 3]), doc_lengths=np.array([2]),
                     story_spans=np.array([[1, 2]]), doc_bytes=np.array([1]))
    write_token_store(other, [batch], attrs=store_attrs(tokenizer, "forward",
                                                        tokenizer_sha256="f" * 64))
    with pytest.raises(ValueError, match="differ in tokenizer_sha256"):
        unigram_bpb(TokenStore(other), stores["forward"])


# ----------------------------------------------------------------------------- lineage


def test_check_lineage_names_both_hashes_and_paths():
    meta = {"lineage": {"tokenizer_sha256": "a" * 64, "variant": "forward"}}
    check_lineage(meta, "a" * 64, {"tokenizer_sha256": "a" * 64})
    with pytest.raises(LineageError) as err:
        check_lineage(meta, "b" * 64, model_path="m/model", tokenizer_path="t/tok.model")
    assert "a" * 64 in str(err.value) and "b" * 64 in str(err.value)
    assert "m/model" in str(err.value) and "t/tok.model" in str(err.value)
    with pytest.raises(LineageError, match="token store \\(v.h5\\) was encoded with tokenizer"):
        check_lineage(meta, "a" * 64, {"tokenizer_sha256": "c" * 64}, store_path="v.h5")
    with pytest.raises(LineageError, match="no lineage.tokenizer_sha256"):
        check_lineage({}, "a" * 64)


# ----------------------------------------------------------------------------- samples


def test_reversed_sample_ends_with_the_given_ending(tokenizer):
    ending = "Lily smiled with the dog."
    prompt = [tokenizer.bos_id] + tokenizer.encode_one(reverse_words(ending))
    continuation = tokenizer.encode_one(".cat little a with played Tom")
    model = ScriptedModel(prompt + continuation + [tokenizer.bos_id, 5, 6])
    sample = generate_story(model, tokenizer, variant="reversed", prompt=ending,
                            max_new_tokens=40, temperature=0, top_k=None, top_p=None, seed=0)
    assert sample["text"] == "Tom played with a little cat. Lily smiled with the dog."
    assert sample["text"].endswith(ending)
    assert sample["prompt"] == ending and sample["mode"] == "ending"
    assert sample["stopped"] and sample["n_new_tokens"] == len(continuation)


def test_backward_token_order_sample_writes_what_comes_before_the_ending(tokenizer):
    ending = "Lily smiled with the dog."
    ending_ids = tokenizer.encode_one(ending)
    before = tokenizer.encode_one("Tom played.")
    # Trained on token-reversed windows: it reads the ending last token first, then
    # writes the tokens before it, last first, and ends at the story's BOS.
    model = ScriptedModel(ending_ids[::-1] + before[::-1] + [tokenizer.bos_id, 5])
    sample = generate_story(model, tokenizer, variant="backward", prompt=ending,
                            max_new_tokens=40, temperature=0, top_k=None, top_p=None, seed=0)
    assert sample["text"] == "Tom played. Lily smiled with the dog."
    assert sample["stopped"] and sample["n_new_tokens"] == len(before)
    assert sample["mode"] == "ending, token order backward"


def test_forward_sample_is_prompt_plus_continuation(tokenizer):
    opening = "Tom ran with the dog."
    prompt = [tokenizer.bos_id] + tokenizer.encode_one(opening)
    continuation = tokenizer.encode_one("Mia slept.")
    model = ScriptedModel(prompt + continuation + [tokenizer.eos_id])
    sample = generate_story(model, tokenizer, variant="forward", prompt=opening,
                            max_new_tokens=40, temperature=0, top_k=None, top_p=None, seed=0)
    assert sample["text"] == "Tom ran with the dog. Mia slept."
    assert sample["stopped"] and sample["mode"] == "completion"


@pytest.mark.parametrize("stop", ["eos", "bos"])
def test_instruct_sample_is_only_the_story_between_bos_and_the_stop(tokenizer, stop):
    instruction = "Write a short story about the end."
    prompt = ([tokenizer.eos_id] + tokenizer.encode_one(instruction) + [tokenizer.bos_id])
    story = tokenizer.encode_one("Sam jumped with her mom.")
    stop_id = tokenizer.eos_id if stop == "eos" else tokenizer.bos_id
    model = ScriptedModel(prompt + story + [stop_id] + tokenizer.encode_one("Ben ran."))
    sample = generate_story(model, tokenizer, variant="instruct", prompt=instruction,
                            max_new_tokens=40, temperature=0, top_k=None, top_p=None, seed=0)
    assert sample["text"] == "Sam jumped with her mom."
    assert sample["stopped"] and sample["n_new_tokens"] == len(story)


def test_budget_runs_out_without_a_stop_and_is_capped_by_the_context(tokenizer):
    prompt = [tokenizer.bos_id] + tokenizer.encode_one("Tom ran.")
    story = tokenizer.encode_one(" Mia slept with the big tree and the dog." * 3)
    model = ScriptedModel(prompt + story, max_seq_len=len(prompt) + 10)
    sample = generate_story(model, tokenizer, variant="forward", prompt="Tom ran.",
                            max_new_tokens=500, temperature=0, top_k=None, top_p=None, seed=0)
    assert not sample["stopped"] and sample["n_new_tokens"] == 10
    assert sample["text"] == tokenizer.decode(prompt + story[:10])
    with pytest.raises(ValueError, match="leaves no room"):
        generate_story(ScriptedModel(prompt, max_seq_len=len(prompt)), tokenizer,
                       variant="forward", prompt="Tom ran.", **{**GREEDY, "max_new_tokens": 5},
                       seed=0)


def test_generate_story_rejects_bad_settings(tokenizer):
    model = tiny_transformer()
    with pytest.raises(ValueError, match="registered variants: forward, reversed"):
        generate_story(model, tokenizer, variant="sideways", prompt="x", **GREEDY, seed=0)
    with pytest.raises(ValueError, match="temperature"):
        generate_story(model, tokenizer, variant="forward", prompt="x", max_new_tokens=4,
                       temperature=-1, top_k=None, top_p=None, seed=0)
    with pytest.raises(ValueError, match="needs a non-empty prompt"):
        generate_story(model, tokenizer, variant="reversed", prompt="  ", **GREEDY, seed=0)


def test_prompts_come_from_the_store_in_normal_reading_order(stores, tokenizer, records):
    forward = sample_prompts(stores["forward"], tokenizer, variant="forward", n=3, seed=0)
    assert forward == [opening_prompt(r["story"]) for r in records[:3]]
    reversed_ = sample_prompts(stores["reversed"], tokenizer, variant="reversed", n=3, seed=0)
    assert reversed_ == [ending_prompt(r["story"]) for r in records[:3]]
    assert all(r["story"].endswith(p) for r, p in zip(records, reversed_, strict=False))
    instruct = sample_prompts(stores["instruct"], tokenizer, variant="instruct", n=3, seed=0)
    assert instruct == [
        record_instruction(r["summary"], r["words"], r["features"], templates=DEFAULT_TEMPLATES,
                           seed=0, key=record_key(r))
        for r in records[:3]
    ]
    with pytest.raises(ValueError, match="reads 'reversed' documents"):
        sample_prompts(stores["forward"], tokenizer, variant="reversed", n=1, seed=0)


def test_prompts_too_long_for_the_context_are_passed_over(stores, tokenizer):
    store = stores["instruct"]
    every = sample_prompts(store, tokenizer, variant="instruct", n=store.n_docs, seed=0)
    lengths = [len(prompt_ids(tokenizer, "instruct", p)) for p in every]
    limit = sorted(lengths)[2]  # only the three shortest fit
    short = sample_prompts(store, tokenizer, variant="instruct", n=5, max_prompt_tokens=limit,
                           seed=0)
    assert short == [p for p, n in zip(every, lengths, strict=True) if n <= limit]
    model = tiny_transformer(max_seq_len=limit + 4)
    samples = make_samples(model, tokenizer, store, variant="instruct", n=2,
                           sampling=SamplingConfig(**GREEDY), seed=0)
    assert [s["prompt"] for s in samples] == short[:2]


def test_prompt_helpers():
    story = 'Tom ran. "Come back!" said Mia. They were happy.'
    assert opening_prompt(story) == "Tom ran."
    assert ending_prompt(story) == "They were happy."
    assert opening_prompt("one two three " * 10) == "one two three one two three one two"
    with pytest.raises(ValueError, match="empty story"):
        ending_prompt("  ")


def test_make_samples_from_records_is_deterministic(tokenizer, records):
    model = tiny_transformer()
    sampling = SamplingConfig(max_new_tokens=8, temperature=1.0, top_k=None, top_p=0.9)
    kwargs = dict(variant="forward", n=3, sampling=sampling, seed=5)
    first = make_samples(model, tokenizer, records, **kwargs)
    assert first == make_samples(model, tokenizer, records, **kwargs)
    assert [s["seed"] for s in first] == [5, 6, 7]
    assert all(s["text"].startswith(s["prompt"]) for s in first)
    assert {"variant", "mode", "prompt", "text", "n_new_tokens", "stopped"} <= set(first[0])
    report = samples_markdown(first)
    assert report.startswith("# Samples") and all(s["prompt"] in report for s in first)


def test_a_runs_samples_use_its_evaluate_top_p(tokenizer, records):
    # top_p in a run's evaluate settings reaches sampling: a nucleus this small keeps only
    # the likeliest token, so sampling at temperature 1 gives the greedy stories.
    model = tiny_transformer()
    settings = load_defaults("evaluate") | {"max_new_tokens": 8, "temperature": 1.0}

    def texts(**changes) -> list[str]:
        config = EvaluateConfig.from_params(settings | changes)
        return [s["text"] for s in make_samples(model, tokenizer, records, variant="forward",
                                                n=3, sampling=config.sampling, seed=config.seed)]

    assert texts(top_p=1e-6) == texts(temperature=0)
    assert texts(top_p=None) != texts(temperature=0)


# --------------------------------------------------------------- the pipeline's evaluation


@pytest.mark.parametrize("variant", ["forward", "reversed", "instruct"])
def test_evaluate_model_reports_metrics_and_samples(stores, train_store, tokenizer, records,
                                                    variant):
    model = tiny_transformer()
    meta = {"lineage": {"tokenizer_sha256": tokenizer.sha256, "variant": variant},
            "train_config": {"token_order": "forward"}, "steps": 0}
    trained = TrainedModel(model.config, model.state_dict(), meta)
    chosen = evaluation_set(records, 10)
    metrics, documents, samples, report = evaluate_model(
        trained, stores[variant], train_store, tokenizer,
        EvaluateConfig(batch_size=4, n_stories=10, curve_stories=0, n_samples=2,
                       max_new_tokens=6, temperature=0.8, top_k=None, top_p=0.9, seed=0,
                       device="cpu"),
        variant=variant, stories=chosen,
    )
    assert {"val_loss", "val_perplexity", "val_bpb", "unigram_bpb", "n_tokens"} <= set(metrics)
    assert metrics["variant"] == variant and metrics["token_order"] == "forward"
    assert metrics["val_bpb"] > 0 and metrics["unigram_bpb"] > 0
    assert metrics["n_docs"] == 10 and metrics["eval_stories"] == chosen.identity()
    assert metrics["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    # One row per evaluation story, in order, with the bits each story scores on its own.
    assert documents["story"].tolist() == [record_key(r) for r in records[:10]]
    expected = document_bits(model, stores[variant], seq_len=64, docs=range(10), batch_size=4)
    np.testing.assert_allclose(documents["bits"], expected, rtol=1e-12)
    assert metrics["val_bpb"] == pytest.approx(documents["bits"].sum()
                                               / documents["n_bytes"].sum())
    assert len(samples) == 2 and all(s["variant"] == variant for s in samples)
    assert report.count("## ") == 2


def test_evaluation_set_is_the_first_stories_in_table_order(records, stores):
    chosen = evaluation_set(iter(records), 5)
    assert chosen.ids == tuple(record_key(r) for r in records[:5])
    assert chosen.n_bytes == tuple(len(r["story"].encode()) for r in records[:5])
    identity = chosen.identity()
    assert (identity["n_stories"], identity["first"], identity["last"]) == (
        5, "data00.json:0", "data00.json:4")
    assert evaluation_set(records, 5) == chosen  # the same stories, the same fingerprint
    other = [dict(r) for r in records]
    other[2]["story"] += " The end."
    assert evaluation_set(other, 5).sha256 != chosen.sha256
    assert evaluation_set(records, 99).n_stories == len(records)  # fewer: all, with a warning
    with pytest.raises(InputError, match="no validation stories"):
        evaluation_set([], 5)
    for store in stores.values():  # every variant's store begins with the same stories
        check_store_holds(store, evaluation_set(records, len(records)))


def test_a_store_of_other_stories_is_refused(records, stores):
    shifted = evaluation_set(records[1:], 5)  # the stories of documents 1..5
    with pytest.raises(InputError, match="does not begin with the 5 validation stories"):
        check_store_holds(stores["forward"], shifted)
    with pytest.raises(InputError, match="does not begin with"):
        check_store_holds(stores["forward"], evaluation_set(records + records, 20))


@pytest.mark.parametrize("token_order", ["forward", "backward"])
def test_document_scores_count_every_target_once(stores, token_order):
    store, model = stores["instruct"], BigramModel(seed=4)
    docs = [0, 3, 7]
    whole = document_scores(model, store, seq_len=64, batch_size=4, docs=docs,
                            token_order=token_order)
    chunked = document_scores(model, store, seq_len=9, batch_size=4, stride=4, docs=docs,
                              token_order=token_order)
    lengths = np.diff(store.doc_offsets)[docs]
    # Forward: every token but the document's first; backward: every token (the first is
    # predicted from the token after the document).
    expected = lengths - 1 if token_order == "forward" else lengths
    assert whole["targets"].tolist() == expected.tolist() == chunked["targets"].tolist()
    np.testing.assert_allclose(chunked["nats"], whole["nats"], rtol=1e-6)
    np.testing.assert_allclose(chunked["bits"], whole["bits"], rtol=1e-6)
    log_p = model.log_probs()
    for got, doc in zip(whole["nats"], docs, strict=True):  # the bigram model by hand
        tokens = store.document(doc).astype(np.int64)
        if token_order == "backward":
            after = int(store.doc_offsets[doc + 1]) if doc + 1 < store.n_docs else 0
            tokens = np.append(tokens, store.tokens[after])[::-1]
        assert got == pytest.approx(-log_p[tokens[:-1], tokens[1:]].sum(), rel=1e-6)


def test_summarized_scores_give_loss_and_bits_per_byte():
    documents = pd.DataFrame({"bits": [10.0, 30.0], "nats": [8.0, 12.0], "targets": [4, 6],
                              "n_bytes": [5, 15], "story_tokens": [3, 5]})
    summary = summarize_scores(documents)
    assert summary["val_loss"] == pytest.approx(2.0) and summary["val_bpb"] == pytest.approx(2.0)
    assert summary["val_perplexity"] == pytest.approx(math.exp(2.0))
    assert summary["story_nats_per_token"] == pytest.approx(40 * math.log(2) / 8)
    assert (summary["n_docs"], summary["n_tokens"], summary["n_bytes"]) == (2, 10, 20)


@pytest.mark.parametrize("settings, match", [
    ({"n_stories": 0}, "evaluate.n_stories"), ({"curve_stories": -1}, "evaluate.curve_stories"),
    ({"curve_stories": 13}, "at most evaluate.n_stories=12"),
])
def test_evaluate_settings_are_checked(settings, match):
    with pytest.raises(ValueError, match=match):
        EvaluateConfig(**{**EVAL_CONFIG.to_dict(), **settings})


def test_evaluate_model_refuses_a_model_of_another_variant(stores, train_store, tokenizer):
    model = tiny_transformer()
    meta = {"lineage": {"tokenizer_sha256": tokenizer.sha256, "variant": "reversed"}}
    trained = TrainedModel(model.config, model.state_dict(), meta)
    with pytest.raises(LineageError, match="trained for the 'reversed' variant, not 'forward'"):
        evaluate_model(trained, stores["forward"], train_store, tokenizer, EVAL_CONFIG,
                       variant="forward", stories=evaluation_set(make_records(12, seed=2), 12))
