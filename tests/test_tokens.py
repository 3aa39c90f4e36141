"""Tests for the H5 token store (backstory.data.token_*), its Kedro dataset and the
training windows drawn from it."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from kedro.io import DataCatalog, DatasetError

import backstory
from backstory.data import token_writer
from backstory.data.token_format import (
    FORMAT,
    FORMAT_VERSION,
    TOKEN_RANGE_CHUNK,
    TokenStoreError,
    token_dtype,
)
from backstory.data.token_store import TokenStore
from backstory.data.token_writer import DocBatch, TokenStream, write_token_store
from backstory.datasets.token_store_dataset import TokenStoreDataset
from backstory.lm.training.loop import random_windows

VOCAB = 65536  # the largest uint16 vocabulary: token value == position in the tests below
ONES2 = np.ones(2, dtype=np.int64)


def base_attrs(**overrides: object) -> dict:
    attrs = {
        "variant": "forward",
        "layout": "bos_story",
        "vocab_size": VOCAB,
        "bos_id": 1,
        "eos_id": 2,
        "tokenizer_sha256": "0" * 64,
        "corpus_fingerprint": "fp-123",
    }
    attrs.update(overrides)
    return attrs


def make_docs(n_docs: int, seed: int = 0) -> list[tuple[np.ndarray, tuple[int, int], int]]:
    """Documents whose token ids equal their absolute positions (ids < VOCAB)."""
    rng = np.random.default_rng(seed)
    docs, position = [], 0
    for _ in range(n_docs):
        length = int(rng.integers(0, 40))
        start = int(rng.integers(0, length + 1))
        end = int(rng.integers(start, length + 1))
        docs.append((np.arange(position, position + length), (start, end), 3 * length + 1))
        position += length
    return docs


def to_batches(docs: list, batch_docs: int) -> list[DocBatch]:
    """Group documents into DocBatches of `batch_docs` documents each."""
    batches = []
    for i in range(0, len(docs), batch_docs):
        group = docs[i : i + batch_docs]
        tokens = [d[0] for d in group]
        batches.append(
            DocBatch(
                tokens=np.concatenate(tokens) if tokens else np.zeros(0, np.int64),
                doc_lengths=np.array([len(t) for t in tokens], dtype=np.int64),
                story_spans=np.array([d[1] for d in group], dtype=np.int64).reshape(-1, 2),
                doc_bytes=np.array([d[2] for d in group], dtype=np.int64),
            )
        )
    return batches


@pytest.fixture
def docs() -> list:
    return make_docs(60)


@pytest.fixture
def store_path(tmp_path: Path, docs: list) -> Path:
    path = tmp_path / "train.h5"
    write_token_store(path, to_batches(docs, 7), attrs=base_attrs())
    return path


# ------------------------------------------------------------------------- writing


def test_round_trip(tmp_path: Path, docs: list) -> None:
    path = tmp_path / "store.h5"
    lineage = {"seed": 3, "shards": ["data00.json", "data01.json"], "nested": {"b": 1, "a": None}}
    summary = write_token_store(
        path,
        iter(to_batches(docs, 9)),
        attrs=base_attrs(lineage=lineage, note="hi", lr=0.5, flag=True),
    )
    n_tokens = sum(len(d[0]) for d in docs)
    assert summary == {"n_docs": len(docs), "n_tokens": n_tokens, "dtype": "uint16"}

    with TokenStore(path) as store:
        assert (store.n_docs, store.n_tokens) == (len(docs), n_tokens)
        assert np.array_equal(store.tokens, np.arange(n_tokens))
        lengths = [len(d[0]) for d in docs]
        assert np.array_equal(store.doc_offsets, np.concatenate([[0], np.cumsum(lengths)]))
        expected_spans = [
            (off + s, off + e) for off, (_, (s, e), _) in zip(store.doc_offsets, docs, strict=False)
        ]
        assert np.array_equal(store.story_spans, np.array(expected_spans))
        assert np.array_equal(store.doc_bytes, [d[2] for d in docs])
        for i in (0, 5, len(docs) - 1, -1):
            assert np.array_equal(store.document(i), docs[i][0])
            s, e = docs[i][1]
            assert np.array_equal(store.story_tokens(i), docs[i][0][s:e])
        assert store.attrs == {
            **base_attrs(lineage=lineage, note="hi", lr=0.5, flag=True),
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "n_docs": len(docs),
            "n_tokens": n_tokens,
            "package_version": backstory.__version__,
            "token_min": 0,
            "token_max": n_tokens - 1,
            "token_range_chunk": TOKEN_RANGE_CHUNK,
        }
        assert store.token_ranges.tolist() == [[0, n_tokens - 1]]
        assert (store.variant, store.vocab_size, store.bos_id, store.eos_id) == (
            "forward",
            VOCAB,
            1,
            2,
        )
    with h5py.File(path, "r") as f:
        assert f["tokens"].chunks is None and f["tokens"].compression is None
        assert f["doc_offsets"].dtype == np.int64 and f["story_spans"].shape == (len(docs), 2)
        assert isinstance(f.attrs["lineage"], str)  # dicts are stored as JSON text


@pytest.mark.parametrize(
    ("vocab_size", "dtype", "top_id"),
    [(65536, np.uint16, 65535), (65537, np.uint32, 65536), (100_000, np.uint32, 99_999)],
)
def test_token_dtype_follows_vocab_size(
    tmp_path: Path, vocab_size: int, dtype: type, top_id: int
) -> None:
    assert token_dtype(vocab_size) == np.dtype(dtype)
    path = tmp_path / "s.h5"
    tokens = np.array([0, top_id, 7], dtype=np.int64)
    batch = DocBatch(tokens, np.array([3]), np.array([[1, 3]]), np.array([9]))
    summary = write_token_store(path, [batch], attrs=base_attrs(vocab_size=vocab_size))
    assert summary["dtype"] == np.dtype(dtype).name
    with TokenStore(path) as store:
        assert store.tokens.dtype == dtype
        assert store.tokens.tolist() == [0, top_id, 7]


def test_tokens_are_a_read_only_memmap(store_path: Path) -> None:
    with TokenStore(store_path) as store:
        assert isinstance(store.tokens, np.memmap)
        assert Path(store.tokens.filename) == store_path.resolve()
        with h5py.File(store_path, "r") as f:
            assert store.tokens.offset == f["tokens"].id.get_offset()
        assert not store.tokens.flags.writeable
        with pytest.raises(ValueError):
            store.tokens[0] = 5
        assert not store.doc_offsets.flags.writeable


def test_same_content_gives_same_bytes(tmp_path: Path, docs: list) -> None:
    lineage = {"b": [1, 2], "a": "x"}
    first, second = tmp_path / "a.h5", tmp_path / "b.h5"
    write_token_store(first, to_batches(docs, 7), attrs=base_attrs(lineage=lineage))
    time.sleep(1.1)  # HDF5 timestamps have one-second resolution: make any stored one differ
    reordered = dict(reversed(list(base_attrs(lineage=dict(reversed(lineage.items()))).items())))
    write_token_store(second, to_batches(docs, 13), attrs=reordered)  # other batching too
    assert first.read_bytes() == second.read_bytes()


def test_empty_corpus_is_a_valid_empty_store(tmp_path: Path) -> None:
    path = tmp_path / "empty.h5"
    assert write_token_store(path, [], attrs=base_attrs())["n_tokens"] == 0
    with TokenStore(path) as store:
        assert store.n_docs == 0 and store.tokens.size == 0
        assert store.story_mask().size == 0
        with pytest.raises(TokenStoreError, match="0 tokens"):
            random_windows(store, 0, 2, 4, seed=1)


@pytest.mark.parametrize("bad_id", [-1, VOCAB])
def test_bad_token_id_names_the_document(tmp_path: Path, docs: list, bad_id: int) -> None:
    batches = to_batches(docs, 10)
    bad = batches[2]
    tokens = bad.tokens.copy()
    doc = 3  # fourth document of the third batch: global index 23
    position = int(bad.doc_lengths[:doc].sum())
    while bad.doc_lengths[doc] == 0:
        doc += 1
        position = int(bad.doc_lengths[:doc].sum())
    tokens[position] = bad_id
    batches[2] = DocBatch(tokens, bad.doc_lengths, bad.story_spans, bad.doc_bytes)
    path = tmp_path / "bad.h5"
    with pytest.raises(ValueError, match=rf"document {20 + doc} .*token id {bad_id}"):
        write_token_store(path, batches, attrs=base_attrs())
    assert list(tmp_path.iterdir()) == []  # no file, no .tmp, no spill folder


@pytest.mark.parametrize("missing", ["variant", "vocab_size", "tokenizer_sha256", "bos_id"])
def test_missing_attr_is_rejected(tmp_path: Path, missing: str) -> None:
    attrs = base_attrs()
    del attrs[missing]
    with pytest.raises(ValueError, match=f"missing required .*{missing}"):
        write_token_store(tmp_path / "s.h5", [], attrs=attrs)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_tokens": 5}, "set by the writer"),
        ({"vocab_size": 0}, "vocab_size"),
        ({"vocab_size": True}, "vocab_size"),
        ({"eos_id": VOCAB}, "eos_id"),
        ({"variant": ""}, "variant"),
        ({"when": object()}, "unsupported type"),
        ({"when": None}, "unsupported type"),
    ],
)
def test_bad_attrs_are_rejected(tmp_path: Path, overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_token_store(tmp_path / "s.h5", [], attrs=base_attrs(**overrides))


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        (DocBatch(np.arange(5), np.array([2, 2]), np.zeros((2, 2), int), ONES2), "sum to 4"),
        (
            DocBatch(np.arange(4), np.array([2, 2]), np.array([[0, 1], [0, 3]]), ONES2),
            "document 1 has a story span outside",
        ),
        (DocBatch(np.arange(4), np.array([2, 2]), np.zeros((3, 2), int), ONES2), r"\(2, 2\)"),
        (DocBatch(np.arange(4) * 1.0, np.array([4]), np.zeros((1, 2), int), ONES2), "integers"),
        (DocBatch(np.arange(4), np.array([4]), np.zeros((1, 2), int), -ONES2[:1]), "doc_bytes"),
        (DocBatch(np.arange(4), np.array([5, -1]), np.zeros((2, 2), int), ONES2), "negative"),
    ],
)
def test_inconsistent_batch_is_rejected(tmp_path: Path, batch: DocBatch, message: str) -> None:
    path = tmp_path / "s.h5"
    with pytest.raises(ValueError, match=message) as err:
        write_token_store(path, [batch], attrs=base_attrs())
    assert str(path) in str(err.value)


def test_failed_write_keeps_the_old_file(tmp_path: Path, store_path: Path) -> None:
    before = store_path.read_bytes()

    def broken_stream():
        yield from to_batches(make_docs(5, seed=9), 2)
        raise RuntimeError("tokenizer crashed")

    with pytest.raises(RuntimeError, match="tokenizer crashed"):
        write_token_store(store_path, broken_stream(), attrs=base_attrs())
    assert store_path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.h5"]


# ------------------------------------------------------------------------- reading


def test_random_windows_are_deterministic_and_in_bounds(store_path: Path) -> None:
    store = TokenStore(store_path)
    seq_len = 16
    first = random_windows(store, 3, 8, seq_len, seed=11)
    assert first.shape == (8, seq_len + 1) and first.dtype == np.int64
    assert np.array_equal(first, random_windows(TokenStore(store_path), 3, 8, seq_len, seed=11))
    assert not np.array_equal(first, random_windows(store, 4, 8, seq_len, seed=11))
    assert not np.array_equal(first, random_windows(store, 3, 8, seq_len, seed=12))

    starts = set()
    for batch_index in range(300):
        windows = random_windows(store, batch_index, 64, seq_len, seed=0)
        # Token value == position, so each row must be a contiguous run of the stream.
        assert np.array_equal(windows, windows[:, :1] + np.arange(seq_len + 1))
        starts.update(windows[:, 0].tolist())
    # Every legal start is drawn, the last one (n_tokens - seq_len - 1) included.
    assert starts == set(range(store.n_tokens - seq_len))


def test_random_windows_need_enough_tokens(tmp_path: Path) -> None:
    path = tmp_path / "tiny.h5"
    write_token_store(path, to_batches([(np.arange(8), (0, 8), 8)], 1), attrs=base_attrs())
    store = TokenStore(path)
    assert random_windows(store, 0, 4, 7, seed=0).tolist() == [list(range(8))] * 4
    with pytest.raises(TokenStoreError, match=r"tiny\.h5: 8 tokens .*seq_len=8"):
        random_windows(store, 0, 4, 8, seed=0)


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("batch_index", (-1, 2, 4, 0)),
        ("batch_size", (0, 0, 4, 0)),
        ("seq_len", (0, 2, 0, 0)),
        ("seed", (0, 2, 4, -5)),
    ],
)
def test_random_windows_reject_bad_arguments(store_path: Path, name: str, args: tuple) -> None:
    with pytest.raises(ValueError, match=name):
        random_windows(TokenStore(store_path), *args)


def naive_story_mask(store: TokenStore) -> np.ndarray:
    mask = np.zeros(store.n_tokens, dtype=bool)
    for start, end in store.story_spans:
        mask[start:end] = True
    return mask


def test_story_mask_matches_the_spans(store_path: Path) -> None:
    store = TokenStore(store_path)
    mask = store.story_mask()
    assert mask.dtype == bool and mask.shape == (store.n_tokens,)
    assert np.array_equal(mask, naive_story_mask(store))
    assert 0 < mask.sum() < store.n_tokens  # the fixture has both kinds of token


@pytest.mark.parametrize(
    ("seq_len", "batch_size", "limit_tokens"),
    [(16, 4, None), (7, 3, None), (32, 64, 500), (1, 50, 101), (1000, 2, None), (5, 2, 2)],
)
def test_sequential_windows_tile_every_target_once(
    store_path: Path, seq_len: int, batch_size: int, limit_tokens: int | None
) -> None:
    store = TokenStore(store_path)
    covered = store.n_tokens if limit_tokens is None else min(limit_tokens, store.n_tokens)
    expected_mask = naive_story_mask(store)
    targets, masks, previous_last = [], [], None
    for windows, mask in store.sequential_windows(
        seq_len, batch_size=batch_size, limit_tokens=limit_tokens
    ):
        assert windows.dtype == np.int64 and mask.dtype == bool
        assert windows.shape[1] == seq_len + 1 and mask.shape == (len(windows), seq_len)
        assert 1 <= len(windows) <= batch_size
        for row, row_mask in zip(windows, mask, strict=True):
            if previous_last is not None:
                assert row[0] == previous_last  # consecutive windows share one token
            real = row[1:] != -1
            targets.append(row[1:][real])
            masks.append(row_mask[real])
            assert not row_mask[~real].any()
            previous_last = row[-1]
    all_targets = np.concatenate(targets)
    assert np.array_equal(all_targets, np.arange(1, covered))  # every target exactly once
    assert np.array_equal(np.concatenate(masks), expected_mask[1:covered])


def test_sequential_windows_pad_only_the_tail(store_path: Path) -> None:
    store = TokenStore(store_path)
    seq_len = 50
    batches = list(store.sequential_windows(seq_len, batch_size=1000))
    windows = np.concatenate([w for w, _ in batches])
    assert (windows[:-1] != -1).all()
    last = windows[-1]
    n_real = (store.n_tokens - 1) - (len(windows) - 1) * seq_len + 1  # tokens in last window
    assert (last[:n_real] != -1).all() and (last[n_real:] == -1).all()


def test_sequential_windows_reject_bad_arguments(tmp_path: Path, store_path: Path) -> None:
    store = TokenStore(store_path)
    with pytest.raises(ValueError, match="seq_len"):
        store.sequential_windows(0, batch_size=2)
    with pytest.raises(ValueError, match="limit_tokens"):
        store.sequential_windows(4, batch_size=2, limit_tokens=1)
    one = tmp_path / "one.h5"
    write_token_store(one, to_batches([(np.arange(1), (0, 1), 1)], 1), attrs=base_attrs())
    with pytest.raises(TokenStoreError, match="1 tokens"):
        TokenStore(one).sequential_windows(4, batch_size=2)  # raised before iteration


def test_document_index_out_of_range(store_path: Path) -> None:
    store = TokenStore(store_path)
    with pytest.raises(IndexError, match=f"document {store.n_docs} out of range"):
        store.document(store.n_docs)
    with pytest.raises(IndexError):
        store.story_tokens(-store.n_docs - 1)


def test_pickle_reopens_from_the_path(store_path: Path) -> None:
    store = TokenStore(store_path)
    payload = pickle.dumps(store)
    assert len(payload) < 1000  # the path, not the tokens
    clone = pickle.loads(payload)
    assert isinstance(clone.tokens, np.memmap)
    assert np.array_equal(clone.tokens, store.tokens)
    assert clone.attrs == store.attrs
    assert np.array_equal(random_windows(clone, 1, 4, 8, 5), random_windows(store, 1, 4, 8, 5))


def test_closed_store_cannot_be_read(store_path: Path) -> None:
    with TokenStore(store_path) as store:
        pass
    with pytest.raises(TokenStoreError, match="closed"):
        random_windows(store, 0, 1, 4, seed=0)


# ------------------------------------------------------------------------- bad files


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TokenStoreError, match=r"nope\.h5: token store does not exist"):
        TokenStore(tmp_path / "nope.h5")


def test_text_file_renamed_h5(tmp_path: Path) -> None:
    path = tmp_path / "story.h5"
    path.write_text("Once upon a time there was a token store.\n")
    with pytest.raises(TokenStoreError, match=r"story\.h5: not an HDF5 file"):
        TokenStore(path)


def test_truncated_file(store_path: Path) -> None:
    data = store_path.read_bytes()
    store_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TokenStoreError, match=r"train\.h5: .*truncated"):
        TokenStore(store_path)


def test_foreign_h5(tmp_path: Path) -> None:
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("tokens", data=np.arange(10, dtype=np.int32))  # Arrows of Time style
        f.create_dataset("labels", data=np.zeros(3))
    with pytest.raises(TokenStoreError, match=r"other\.h5: not a backstory token store"):
        TokenStore(path)


@pytest.mark.parametrize(
    ("attr", "value", "message"),
    [
        ("format", "someone-else", "format is 'someone-else'"),
        ("format_version", 7, "format_version 7 is not supported"),
        ("n_tokens", 10**6, "tokens has shape"),
        ("n_docs", 3, r"doc_offsets is int64 \(61,\)"),
        ("vocab_size", 70_000, "dtype uint16 does not match"),
    ],
)
def test_tampered_store(store_path: Path, attr: str, value: object, message: str) -> None:
    with h5py.File(store_path, "r+") as f:
        f.attrs[attr] = value
    with pytest.raises(TokenStoreError, match=message) as err:
        TokenStore(store_path)
    assert str(store_path) in str(err.value)


def test_inconsistent_offsets(store_path: Path) -> None:
    with h5py.File(store_path, "r+") as f:
        offsets = f["doc_offsets"][()]
        offsets[5], offsets[6] = offsets[6] + 1, offsets[5]
        f["doc_offsets"][...] = offsets
    with pytest.raises(TokenStoreError, match="decrease|outside the document"):
        TokenStore(store_path)


def test_missing_dataset(store_path: Path) -> None:
    with h5py.File(store_path, "r+") as f:
        del f["doc_bytes"]
    with pytest.raises(TokenStoreError, match=r"lacks datasets \['doc_bytes'\]"):
        TokenStore(store_path)


# ------------------------------------------------------------------------- Kedro dataset


def test_dataset_round_trip(tmp_path: Path, docs: list) -> None:
    path = tmp_path / "05_model_input" / "forward" / "val.h5"
    dataset = TokenStoreDataset(filepath=str(path))
    assert not dataset.exists()
    stream = TokenStream(batches=(b for b in to_batches(docs, 5)), attrs=base_attrs())
    dataset.save(stream)
    assert dataset.exists()
    store = dataset.load()
    assert isinstance(store, TokenStore)
    assert store.n_docs == len(docs)
    assert np.array_equal(store.tokens, np.arange(store.n_tokens))
    assert str(path) in str(dataset)


def test_dataset_from_catalog(tmp_path: Path, docs: list) -> None:
    catalog = DataCatalog.from_config(
        {
            "forward.val_tokens": {
                "type": "backstory.datasets.token_store_dataset.TokenStoreDataset",
                "filepath": str(tmp_path / "val.h5"),
            }
        }
    )
    catalog.save("forward.val_tokens", TokenStream(to_batches(docs, 5), base_attrs()))
    assert catalog.load("forward.val_tokens").n_docs == len(docs)


def test_dataset_errors(tmp_path: Path) -> None:
    dataset = TokenStoreDataset(filepath=str(tmp_path / "missing.h5"))
    with pytest.raises(DatasetError, match="does not exist") as err:
        dataset.load()
    assert isinstance(err.value.__cause__, TokenStoreError)
    with pytest.raises(DatasetError, match="saves a TokenStream"):
        dataset.save({"batches": [], "attrs": base_attrs()})
    with pytest.raises(DatasetError, match="missing required"):
        dataset.save(TokenStream([], {"variant": "forward"}))
    assert not dataset.exists()


# ------------------------------------------------------------------------- id ranges (issue 13)


def test_each_chunk_records_its_id_range(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(token_writer, "TOKEN_RANGE_CHUNK", 10)
    docs = make_docs(30, seed=4)
    path = tmp_path / "s.h5"
    write_token_store(path, to_batches(docs, 4), attrs=base_attrs())
    with TokenStore(path) as store:
        ids = np.concatenate([d[0] for d in docs])
        expected = [[int(c.min()), int(c.max())] for c in np.array_split(
            ids, range(10, ids.size, 10))]
        assert store.token_ranges.tolist() == expected
        assert (store.attrs["token_min"], store.attrs["token_max"]) == (0, ids.size - 1)


def test_a_store_read_with_a_smaller_vocabulary_is_refused_naming_the_file(
    store_path: Path,
) -> None:
    with h5py.File(store_path, "r+") as f:
        f.attrs["vocab_size"] = 1000  # the ids go up to 1,164
    with pytest.raises(TokenStoreError, match=r"train\.h5: tokens 0\.\.1048575 hold ids from 0 "
                                              r"to 1164, outside \[0, vocab_size=1000\)"):
        TokenStore(store_path)


def test_ids_changed_after_writing_are_caught(store_path: Path) -> None:
    with h5py.File(store_path, "r+") as f:
        f["tokens"][7] = 65000
        f.attrs["vocab_size"] = 60000
        f["token_ranges"][0, 1] = 1164
    with TokenStore(store_path) as store:
        with pytest.raises(TokenStoreError, match=r"train\.h5: training batch 0 holds token id "
                                                  r"65000 >= vocab_size 60000"):
            for batch in range(50):
                random_windows(store, batch, 64, 8, seed=0)


def test_altered_range_records_are_refused(store_path: Path) -> None:
    with h5py.File(store_path, "r+") as f:
        f["token_ranges"][0, 1] = 99
    with pytest.raises(TokenStoreError, match="do not match the chunk ranges"):
        TokenStore(store_path)


def test_version_one_stores_are_checked_by_reading_their_ids(store_path: Path) -> None:
    with h5py.File(store_path, "r+") as f:
        del f["token_ranges"]
        for key in ("token_min", "token_max", "token_range_chunk"):
            del f.attrs[key]
        f.attrs["format_version"] = 1
    with TokenStore(store_path) as store:
        assert store.token_ranges.tolist() == [[0, 1164]]
    with h5py.File(store_path, "r+") as f:
        f.attrs["vocab_size"] = 900
    with pytest.raises(TokenStoreError, match=r"outside \[0, vocab_size=900\)"):
        TokenStore(store_path)
