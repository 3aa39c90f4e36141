"""sentencepiece training options, determinism, errors, round trips and the Kedro dataset."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kedro.io.core import DatasetError

from backstory.datasets.tokenizer_dataset import SentencePieceDataset
from backstory.tokenizer import Tokenizer, train_tokenizer

NAMES = ["Lily", "Ben", "Tom", "Sue", "Max", "Mia"]
WORDS = (
    "the a little big red happy sad dog cat ball park tree sun mom dad friend toy boat "
    "play run jump find share smile look see want like went was said and but then so"
).split()


def story(rng: random.Random) -> str:
    sentences = []
    for _ in range(rng.randint(3, 8)):
        body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 10)))
        sentence = f"{rng.choice(NAMES)} {body}{rng.choice('.!?')}"
        if rng.random() < 0.3:
            sentence = f'"{sentence}" said {rng.choice(NAMES)}, 42 times.'
        sentences.append(sentence)
    return " ".join(sentences[:3]) + "\n\n" + " ".join(sentences[3:])


def corpus(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [story(rng) for _ in range(n)]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return corpus(300)


@pytest.fixture(scope="module")
def model_bytes(texts) -> bytes:
    return train_tokenizer(texts, vocab_size=400)


@pytest.fixture(scope="module")
def tok(model_bytes) -> Tokenizer:
    return Tokenizer.from_bytes(model_bytes)


def test_special_ids_and_identity(tok, model_bytes):
    assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (400, 1, 2)
    assert tok.model_bytes == model_bytes
    assert len(tok.sha256) == 64 and tok.sha256 == Tokenizer.from_bytes(model_bytes).sha256


def test_same_input_gives_identical_bytes(texts, model_bytes):
    assert train_tokenizer(texts, vocab_size=400) == model_bytes
    # With 2 threads the run is repeatable too (the thread count is part of the model).
    two = train_tokenizer(texts, vocab_size=400, num_threads=2)
    assert train_tokenizer(texts, vocab_size=400, num_threads=2) == two


@pytest.mark.parametrize("model_type", ["unigram", "char"])
def test_other_model_types_train_deterministically(texts, model_type):
    first = train_tokenizer(texts, vocab_size=300, model_type=model_type)
    assert train_tokenizer(iter(texts), vocab_size=300, model_type=model_type) == first
    tok = Tokenizer.from_bytes(first)
    assert tok.decode(tok.encode_one(texts[0])) == texts[0]


def test_only_the_first_max_sentences_are_used(texts):
    capped = train_tokenizer(texts[:100], vocab_size=350)
    assert train_tokenizer(texts, vocab_size=350, max_sentences=100) == capped
    assert train_tokenizer(texts, vocab_size=350) != capped


def test_long_and_blank_texts_are_counted_not_passed(texts):
    # Leaving them out must equal never having given them.
    padded = texts[:50] + ["x " * 400, "   ", ""] + texts[50:100]
    left_out = train_tokenizer(padded, vocab_size=350, max_sentence_bytes=700)
    short = [t for t in texts[:100] if len(t.encode()) <= 700]
    assert left_out == train_tokenizer(short, vocab_size=350, max_sentence_bytes=700)


def test_vocab_size_errors_name_the_setting(texts):
    with pytest.raises(ValueError, match="tokenizer.vocab_size=100 "):
        train_tokenizer(texts, vocab_size=100)  # needs 3 specials + 256 bytes + characters
    with pytest.raises(ValueError, match="tokenizer.vocab_size=50000 "):
        train_tokenizer(texts, vocab_size=50_000)


def test_bad_arguments_raise(texts):
    with pytest.raises(ValueError, match="tokenizer.model_type"):
        train_tokenizer(texts, vocab_size=400, model_type="wordpiece")
    with pytest.raises(ValueError, match="no usable training text"):
        train_tokenizer(["", "  "], vocab_size=400)
    with pytest.raises(ValueError, match="training text 2 is int"):
        train_tokenizer([texts[0], texts[1], 7], vocab_size=300)


def test_round_trip_on_stories(tok):
    for text in corpus(50, seed=1):
        assert tok.decode(tok.encode_one(text)) == text


def test_round_trip_keeps_spaces_newlines_and_unseen_characters(tok):
    for text in [" leading", "trailing ", "two  spaces", "a\n\n b\t", "café 日本 “quoted”"]:
        assert tok.decode(tok.encode_one(text)) == text
    # The one documented exception: U+2581 is sentencepiece's own space mark.
    assert tok.decode(tok.encode_one("a\u2581b")) == "a b"


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.characters(exclude_characters="\u2581", exclude_categories=["Cs"])))
def test_round_trip_on_any_text(tok, text):
    assert tok.decode(tok.encode_one(text)) == text


def test_batch_encode_matches_single(tok):
    batch = corpus(40, seed=2)
    expected = [tok.encode_one(t) for t in batch]
    assert tok.encode(batch, num_threads=2) == expected
    assert [a.tolist() for a in tok.encode_arrays(batch, num_threads=2)] == expected
    assert tok.decode([tok.bos_id, *expected[0], tok.eos_id]) == batch[0]


def test_not_a_model_is_a_clear_error():
    with pytest.raises(ValueError, match="not a sentencepiece model"):
        Tokenizer.from_bytes(b"definitely not a model")


# --- Kedro dataset ---------------------------------------------------------------------


def test_dataset_saves_and_loads(tmp_path, tok, model_bytes):
    path = tmp_path / "tokenizer" / "tokenizer.model"
    dataset = SentencePieceDataset(filepath=str(path))
    assert not dataset.exists()
    dataset.save(model_bytes)
    assert dataset.exists() and path.read_bytes() == model_bytes
    assert dataset.load().sha256 == tok.sha256
    dataset.save(tok)  # a Tokenizer saves as its bytes
    assert path.read_bytes() == model_bytes
    assert [p.name for p in path.parent.iterdir()] == ["tokenizer.model"]  # no temp leftovers
    assert str(path) in str(dataset)


def test_dataset_errors(tmp_path):
    missing = tmp_path / "nope.model"
    with pytest.raises(DatasetError, match="nope.model"):
        SentencePieceDataset(filepath=str(missing)).load()
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"not a model")
    with pytest.raises(DatasetError, match="not a sentencepiece model"):
        SentencePieceDataset(filepath=str(junk)).load()
    target = SentencePieceDataset(filepath=str(tmp_path / "out.model"))
    with pytest.raises(DatasetError, match="not a sentencepiece model"):
        target.save(b"junk")
    assert not target.exists()
    with pytest.raises(DatasetError, match="saves bytes or a Tokenizer"):
        target.save("a string")
