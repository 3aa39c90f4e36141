"""sentencepiece training, determinism, errors, round trips, the chunk cache, Kedro dataset."""

import io
import pickle
import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import sentencepiece as spm
from hypothesis import given, settings
from hypothesis import strategies as st
from kedro.io.core import DatasetError

from backstory.core.locks import artifact_lock_path
from backstory.data import chunk_cache as chunk_cache_module
from backstory.data.chunk_cache import (
    DEFAULT_CACHE_ENTRIES,
    _pieces_allow_chunking,
    _slot_pair,
    _slots,
)
from backstory.data.corpus.storyworld import generate_records
from backstory.data.text import DEFAULT_TEMPLATES, record_instruction, reverse_words
from backstory.data.tokenizer import Tokenizer
from backstory.datasets.tokenizer_dataset import SentencePieceDataset
from tests.project import encoded, trained_tokenizer

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
    return trained_tokenizer(texts, vocab_size=400)


@pytest.fixture(scope="module")
def tok(model_bytes) -> Tokenizer:
    return Tokenizer.from_bytes(model_bytes)


def test_special_ids_and_identity(tok, model_bytes):
    assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (400, 1, 2)
    assert tok.model_bytes == model_bytes
    assert len(tok.sha256) == 64 and tok.sha256 == Tokenizer.from_bytes(model_bytes).sha256


def test_same_input_gives_identical_bytes(texts, model_bytes):
    assert trained_tokenizer(texts, vocab_size=400) == model_bytes
    # With 2 threads the run is repeatable too (the thread count is part of the model).
    two = trained_tokenizer(texts, vocab_size=400, num_threads=2)
    assert trained_tokenizer(texts, vocab_size=400, num_threads=2) == two


@pytest.mark.parametrize("model_type", ["unigram", "char"])
def test_other_model_types_train_deterministically(texts, model_type):
    first = trained_tokenizer(texts, vocab_size=300, model_type=model_type)
    assert trained_tokenizer(iter(texts), vocab_size=300, model_type=model_type) == first
    tok = Tokenizer.from_bytes(first)
    assert tok.decode(tok.encode_one(texts[0])) == texts[0]


def test_only_the_first_max_sentences_are_used(texts):
    capped = trained_tokenizer(texts[:100], vocab_size=350)
    assert trained_tokenizer(texts, vocab_size=350, max_sentences=100) == capped
    assert trained_tokenizer(texts, vocab_size=350) != capped


def test_long_and_blank_texts_are_counted_not_passed(texts):
    # Leaving them out must equal never having given them.
    padded = texts[:50] + ["x " * 400, "   ", ""] + texts[50:100]
    left_out = trained_tokenizer(padded, vocab_size=350, max_sentence_bytes=700)
    short = [t for t in texts[:100] if len(t.encode()) <= 700]
    assert left_out == trained_tokenizer(short, vocab_size=350, max_sentence_bytes=700)


def test_vocab_size_errors_name_the_setting(texts):
    with pytest.raises(ValueError, match="tokenizer.vocab_size=100 "):
        trained_tokenizer(texts, vocab_size=100)  # needs 3 specials + 256 bytes + characters
    with pytest.raises(ValueError, match="tokenizer.vocab_size=50000 "):
        trained_tokenizer(texts, vocab_size=50_000)


def test_bad_arguments_raise(texts):
    with pytest.raises(ValueError, match="tokenizer.model_type"):
        trained_tokenizer(texts, vocab_size=400, model_type="wordpiece")
    with pytest.raises(ValueError, match="no usable training text"):
        trained_tokenizer(["", "  "], vocab_size=400)
    with pytest.raises(ValueError, match="training text 2 is int"):
        trained_tokenizer([texts[0], texts[1], 7], vocab_size=300)


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
    # No temp leftovers; the lock file names the runs using the tokenizer (backstory.core.locks).
    assert sorted(p.name for p in path.parent.iterdir()) == [artifact_lock_path(path).name,
                                                             "tokenizer.model"]
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


# --- chunk cache: encode_arrays must equal sentencepiece exactly --------------------------

SPACE_MARK = "\u2581"


def sentencepiece_ids(model_bytes: bytes, texts: list[str]) -> list[list[int]]:
    """The reference: sentencepiece's own encoder on a fresh processor."""
    processor = spm.SentencePieceProcessor()
    processor.LoadFromSerializedProto(model_bytes)
    return processor.encode(texts, out_type=int)


def cached_ids(tok: Tokenizer, texts: list[str]) -> list[list[int]]:
    arrays = tok.encode_arrays(texts, num_threads=2)
    assert all(a.dtype == np.int32 for a in arrays)  # the dtype sentencepiece returns
    return [a.tolist() for a in arrays]


def naive_chunk_ids(tok: Tokenizer, text: str) -> list[int]:
    """Concatenated ids of the space-separated chunks, each encoded alone."""
    return [i for chunk in text.split(" ") for i in tok.encode_one(chunk)]


@pytest.fixture(scope="module")
def world_records() -> list[dict]:
    return list(generate_records(1337, 0, 3000))


@pytest.fixture(scope="module")
def world_stories(world_records) -> list[str]:
    return [r["story"] for r in world_records]


def messy(text: str, rng: random.Random) -> str:
    """``text`` with some spaces turned into runs, tabs, newlines, digits and NBSP."""
    seps = [" "] * 8 + ["  ", "   ", "\t", " \t ", "\n ", " 12 ", "\u00a0"]
    words = text.split(" ")
    joined = words[0] + "".join(rng.choice(seps) + w for w in words[1:])
    return "  " + joined if rng.random() < 0.3 else joined


@pytest.fixture(scope="module")
def world_model(world_stories) -> bytes:
    # Messy texts in training give whitespace-only pieces ("▁▁") and pieces with tabs.
    rng = random.Random(0)
    messy_texts = [messy(s, rng) for s in world_stories[600:900]]
    return trained_tokenizer(world_stories[:600] + messy_texts, vocab_size=800)


@pytest.fixture(scope="module")
def world_tok(world_model) -> Tokenizer:
    return Tokenizer.from_bytes(world_model)


def test_the_model_has_whitespace_only_pieces_and_uses_the_cache(world_tok):
    pieces = {world_tok._sp.id_to_piece(i) for i in range(world_tok.vocab_size)}
    assert SPACE_MARK * 2 in pieces and world_tok.uses_chunk_cache


@pytest.mark.parametrize("variant", ["forward", "reversed"])
def test_cache_equals_sentencepiece_on_storyworld(world_model, world_stories, variant):
    texts = world_stories if variant == "forward" else [reverse_words(s) for s in world_stories]
    expected = sentencepiece_ids(world_model, texts)
    tok = Tokenizer.from_bytes(world_model)
    assert cached_ids(tok, texts) == expected  # cold: every chunk is new
    size = tok.chunk_cache_size
    assert size > 1000  # the cache path really ran
    assert cached_ids(tok, texts[::-1]) == expected[::-1]  # warm, other batch order
    assert tok.chunk_cache_size == size  # warm: every chunk was found, none added again
    # A cache bound far below the distinct chunks: chunks past it are encoded per round.
    small = Tokenizer.from_bytes(world_model, cache_entries=300)
    assert cached_ids(small, texts) == expected
    assert small.chunk_cache_size == 300
    assert small._cache._n_rows == 301  # the rows past the bound were dropped again
    small.clear_chunk_cache()
    assert small.chunk_cache_size == 0 and cached_ids(small, texts[:50]) == expected[:50]


def test_cache_equals_sentencepiece_on_instruct_prompts(world_model, world_records):
    prompts = []
    for index, record in enumerate(world_records[:1000]):
        words, features = record["instruction"]["words"], record["instruction"]["features"]
        prompts.append(
            record_instruction(
                record["summary"], words, features,
                templates=DEFAULT_TEMPLATES, seed=0, key=f"sw:{index}",
            )
        )  # fmt: skip
        prompts.append(record["instruction"]["prompt:"])  # the TinyStories-style prompt
    tok = Tokenizer.from_bytes(world_model)
    assert cached_ids(tok, prompts) == sentencepiece_ids(world_model, prompts)


def test_instruct_documents_are_the_same_with_and_without_cache(world_model, world_records):
    records = [
        {
            "story": r["story"],
            "summary": r["summary"],
            "words": r["instruction"]["words"],
            "features": r["instruction"]["features"],
            "shard": "sw",
            "record": i,
        }
        for i, r in enumerate(world_records[:300])
    ]
    for variant in ("forward", "reversed", "instruct"):
        batches = [
            list(encoded(records, Tokenizer.from_bytes(world_model, cache_entries=n),
                                  variant=variant, batch_size=128))
            for n in (DEFAULT_CACHE_ENTRIES, 0)
        ]  # fmt: skip
        for cached, plain in zip(*batches, strict=True):
            assert np.array_equal(cached.tokens, plain.tokens)
            assert np.array_equal(cached.story_spans, plain.story_spans)


# Words: anything but a space (tabs, newlines, NBSP, "▁", digits, NUL, any script, and
# words longer than the 15 bytes the cache keys hold); separators mostly single spaces.
ANY_WORD = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters=" "),
    min_size=1,
    max_size=24,
)
SEPARATORS = st.sampled_from(
    [" "] * 12 + ["  ", "\n", "\t", " \n", "\n ", SPACE_MARK, f" {SPACE_MARK} ", "\u3000"]
)


@st.composite
def spaced_texts(draw) -> str:
    words = draw(st.lists(ANY_WORD, min_size=1, max_size=12))
    text = words[0]
    for word in words[1:]:
        text += draw(SEPARATORS) + word
    return (
        draw(st.sampled_from(["", "", "", " ", "  "]))
        + text
        + draw(st.sampled_from(["", "", "", " ", "\n"]))
    )


ANY_TEXT = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40)


@pytest.fixture(scope="module")
def small_cache_tok(world_model) -> Tokenizer:
    return Tokenizer.from_bytes(world_model, cache_entries=200)


@settings(max_examples=300, deadline=None)
@given(st.lists(spaced_texts() | ANY_TEXT, min_size=1, max_size=8))
def test_cache_equals_sentencepiece_on_any_text(world_tok, small_cache_tok, world_model, texts):
    expected = sentencepiece_ids(world_model, texts)
    assert cached_ids(world_tok, texts) == expected
    assert cached_ids(small_cache_tok, texts) == expected
    assert world_tok.encode(texts) == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(ANY_WORD, min_size=1, max_size=10))
def test_single_spaced_text_is_its_chunks_encoded_alone(world_tok, words):
    # The argument the cache rests on, checked on sentencepiece itself.
    text = " ".join(words)
    if SPACE_MARK not in text:
        assert naive_chunk_ids(world_tok, text) == world_tok.encode_one(text)


def test_edge_chunks_are_exact(world_model):
    tok = Tokenizer.from_bytes(world_model)
    texts = [
        "a", "a\x00", "a\x00\x00", "\x00", "\x00a", "ab\x00\x00\x00\x00\x00\x00\x00\x00b",
        "x" * 14, "x" * 15, "x" * 16, "x" * 17, "é" * 7 + "x", "é" * 8, "日本語のテキスト",
        "1234567890 0987654321", "\n\n", "\t", "a \tb", "tab\tin word", "café 🙂 ok",
        "long" * 30, "two words", "\u00a0a b\u00a0",
    ]  # fmt: skip
    joined = [" ".join(texts)]
    # Twice: first as new chunks, then found again (nothing added on the second pass).
    sizes = []
    for _ in range(2):
        assert cached_ids(tok, texts) == sentencepiece_ids(world_model, texts)
        assert cached_ids(tok, joined) == sentencepiece_ids(world_model, joined)
        sizes.append(tok.chunk_cache_size)
    assert sizes[0] == sizes[1] > 20


def test_chunks_the_table_cannot_place_go_to_the_dict(world_model, world_stories, monkeypatch):
    # No cuckoo moves: every chunk whose first slot is taken is looked up by str instead.
    monkeypatch.setattr(chunk_cache_module, "_MAX_KICKS", 0)
    tok = Tokenizer.from_bytes(world_model)
    texts = world_stories[:500]
    expected = sentencepiece_ids(world_model, texts)
    assert cached_ids(tok, texts) == expected
    size = tok.chunk_cache_size
    assert cached_ids(tok, texts) == expected and tok.chunk_cache_size == size
    assert len(tok._cache._by_text) > 100  # the dict path was exercised


def test_chunking_is_wrong_where_the_cache_is_not_used(world_tok):
    # Leading, trailing and double spaces and "▁" break the chunk argument; encode_arrays
    # must send such texts to sentencepiece.
    for text in ["  a b", "a b ", "a  b", f"a{SPACE_MARK} b", " a"]:
        assert naive_chunk_ids(world_tok, text) != world_tok.encode_one(text)
        assert cached_ids(world_tok, [text, "plain words"])[0] == world_tok.encode_one(text)


def spm_model(texts: list[str], **options) -> bytes:
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=buffer, vocab_size=600,
        character_coverage=1.0, byte_fallback=True, minloglevel=2, **options,
    )  # fmt: skip
    return buffer.getvalue()


@pytest.mark.parametrize(
    "options",
    [
        {"model_type": "unigram", "normalization_rule_name": "identity"},
        {"model_type": "bpe", "split_by_whitespace": False, "normalization_rule_name": "identity"},
        {"model_type": "bpe"},  # nmt_nfkc normalisation, extra whitespace removed
        {"model_type": "bpe", "treat_whitespace_as_suffix": True},
    ],
)
def test_other_models_skip_the_cache_and_stay_exact(world_stories, options):
    model = spm_model(world_stories[:400], **options)
    tok = Tokenizer.from_bytes(model)
    assert not tok.uses_chunk_cache
    texts = world_stories[400:500] + ["a  b", " x"]
    assert cached_ids(tok, texts) == sentencepiece_ids(model, texts)
    assert tok.chunk_cache_size == 0


def test_pieces_with_inner_space_mark_turn_the_cache_off(world_stories):
    # Without split_by_whitespace, BPE learns pieces across words: chunking would be wrong.
    options = {"split_by_whitespace": False, "remove_extra_whitespaces": False}
    model = spm_model(
        world_stories[:400], model_type="bpe", normalization_rule_name="identity", **options
    )
    tok = Tokenizer.from_bytes(model)
    assert not _pieces_allow_chunking(tok._sp) and not tok.uses_chunk_cache
    assert any(naive_chunk_ids(tok, s) != tok.encode_one(s) for s in world_stories[400:450])


def test_cache_off_on_request_and_bad_cache_sizes(model_bytes):
    assert not Tokenizer.from_bytes(model_bytes, cache_entries=0).uses_chunk_cache
    for bad in (-1, 1.5, "10", True):
        with pytest.raises(ValueError, match="cache_entries"):
            Tokenizer.from_bytes(model_bytes, cache_entries=bad)


def test_vector_and_scalar_slots_agree():
    rng = np.random.default_rng(0)
    key1 = rng.integers(0, 2**63, 200, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    key2 = rng.integers(0, 2**63, 200, dtype=np.uint64)
    for size in (1 << 12, 1 << 20):
        first, second = _slots(key1, key2, size)
        pairs = [_slot_pair(int(a), int(b), size) for a, b in zip(key1, key2, strict=True)]
        assert pairs == list(zip(first.tolist(), second.tolist(), strict=True))
        assert first.max() < size and second.max() < size


def test_bad_texts_raise_value_errors_naming_the_text(model_bytes):
    for cache_entries in (0, 100):
        tok = Tokenizer.from_bytes(model_bytes, cache_entries=cache_entries)
        with pytest.raises(ValueError, match="text 1 is int"):
            tok.encode_arrays(["fine words", 5])
        with pytest.raises(ValueError, match="text 2 is not valid Unicode"):
            tok.encode_arrays(["fine", "words", "bad \ud800 surrogate"])
    assert tok.encode_arrays([]) == []


def test_pickle_and_threads_keep_the_ids(world_model, world_stories):
    tok = Tokenizer.from_bytes(world_model, cache_entries=5000)
    tok.encode_arrays(world_stories[:100])
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.sha256 == tok.sha256 and clone.chunk_cache_size == 0
    texts = world_stories[:600]
    expected = sentencepiece_ids(world_model, texts)
    parts = [texts[i::4] for i in range(4)]
    with ThreadPoolExecutor(4) as pool:  # one shared cache, four callers at once
        results = list(pool.map(lambda part: cached_ids(clone, part), parts))
    assert results == [expected[i::4] for i in range(4)]
