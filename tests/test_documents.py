"""Variant layouts, spans, byte counts and batching of encode_documents."""

import random

import numpy as np
import pytest

from backstory import variants
from backstory.data.documents import variant_text
from backstory.data.text import DEFAULT_TEMPLATES, choose_template, reverse_words
from backstory.data.tokenizer import Tokenizer
from tests.project import encoded, trained_tokenizer

VARIANTS = ("forward", "reversed", "instruct")  # the variants with documents of their own

SUMMARIES = [
    "Lily and Ben play in the park and find a big red ball.",
    "The story is about a dog named Max who loses his bone.",
    "",
]


def make_records(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    words = "Lily Ben ball park happy dog ran saw the a big red and then said".split()
    records = []
    for i in range(n):
        body = " ".join(rng.choice(words) for _ in range(rng.randint(5, 30)))
        records.append({
            "story": f'{body}. "Hi, {rng.choice(words)}!" she said.\n\nThe end.',
            "summary": SUMMARIES[i % 3],
            "words": ["play", "ball", "red"] if i % 2 == 0 else [],
            "features": ["Dialogue"] if i % 3 != 1 else [],
            "source": "GPT-4",
            "shard": f"data{i % 2:02d}.json",
            "record": i,
        })
    return records


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return make_records(23)


@pytest.fixture(scope="module")
def tok(records) -> Tokenizer:
    texts = [r["story"] for r in records] + [reverse_words(r["story"]) for r in records]
    return Tokenizer.from_bytes(trained_tokenizer(texts, vocab_size=320))


def split_docs(batch):
    ends = np.cumsum(batch.doc_lengths)
    return np.split(batch.tokens.astype(np.int64), ends[:-1])


def collect(records, tok, **kwargs):
    batches = list(encoded(records, tok, **kwargs))
    docs = [d for b in batches for d in split_docs(b)]
    spans = np.concatenate([b.story_spans for b in batches])
    nbytes = np.concatenate([b.doc_bytes for b in batches])
    return batches, docs, spans, nbytes


@pytest.mark.parametrize("variant", ["forward", "reversed"])
def test_bos_then_story(records, tok, variant):
    batches, docs, spans, nbytes = collect(records, tok, variant=variant, batch_size=5)
    assert [len(b.doc_lengths) for b in batches] == [5, 5, 5, 5, 3]
    assert batches[0].tokens.dtype == np.uint32
    for record, doc, span, size in zip(records, docs, spans, nbytes, strict=True):
        text = variant_text(record, variant)
        assert doc[0] == tok.bos_id
        assert doc[1:].tolist() == tok.encode_one(text)
        assert tuple(span) == (1, len(doc))
        assert tok.decode(doc[span[0] : span[1]].tolist()) == text
        assert size == len(record["story"].encode()) == len(text.encode())


def test_instruct_layout(records, tok):
    _, docs, spans, nbytes = collect(records, tok, variant="instruct", seed=3, batch_size=8)
    for record, doc, (start, end), size in zip(records, docs, spans, nbytes, strict=True):
        story = doc[start:end].tolist()
        assert doc[start - 1] == tok.bos_id and doc[-1] == tok.eos_id and end == len(doc) - 1
        assert tok.decode(story) == record["story"]
        prompt = tok.decode(doc[: start - 1].tolist())
        assert prompt.startswith("Write a ") and prompt.endswith(".")
        assert size == len(record["story"].encode())
    # Record 0 has every field: its prompt comes from the seeded template choice.
    template = choose_template(DEFAULT_TEMPLATES, 3, "data00.json:0")
    first = tok.decode(docs[0][: spans[0][0] - 1].tolist())
    assert first == template.format(
        summary_clause="Lily and Ben play in the park and find a big red ball",
        summary_topic="how Lily and Ben play in the park and find a big red ball",
        words='"play", "ball" and "red"',
        features="dialogue",
    )


def test_same_inputs_same_tokens_whatever_batching(records, tok):
    def tokens(**kw):
        return np.concatenate([b.tokens for b in encoded(records, tok, **kw)])

    one = tokens(variant="instruct", batch_size=1, num_threads=1)
    assert np.array_equal(one, tokens(variant="instruct", batch_size=64, num_threads=2))
    assert not np.array_equal(one, tokens(variant="instruct", seed=1))


def test_numpy_list_columns_are_accepted(records, tok):
    as_parquet = [dict(r, words=np.array(r["words"]), features=np.array(r["features"]))
                  for r in records]
    a = next(encoded(as_parquet, tok, variant="instruct"))
    b = next(encoded(records, tok, variant="instruct"))
    assert np.array_equal(a.tokens, b.tokens)


def test_errors_name_the_record_or_the_variants(records, tok):
    with pytest.raises(ValueError, match="'forward''s token stores"):
        next(encoded(records, tok, variant="backward"))
    with pytest.raises(ValueError, match="registered variants: forward, reversed, instruct"):
        next(encoded(records, tok, variant="sideways"))
    bare = dict(records[2], summary="", words=[], features=[], shard="data09.json", record=4)
    with pytest.raises(ValueError, match="data09.json:4"):
        list(encoded([bare], tok, variant="instruct"))
    with pytest.raises(ValueError, match="data09.json:4: empty story"):
        list(encoded([dict(bare, story="")], tok, variant="forward"))
    with pytest.raises(ValueError, match="batch_size"):
        next(encoded(records, tok, variant="forward", batch_size=0))


def test_layout_names():
    assert [variants.get(v).layout for v in VARIANTS] == [
        "bos+story", "bos+reversed_story", "prompt+bos+story+eos"
    ]
    assert list(encoded([], None, variant="forward")) == []
