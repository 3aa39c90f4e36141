"""Token export from a story table: parallel = serial byte for byte, resume after a kill,
the corpus-fingerprint check, and every kept story of every raw file in the H5 stores."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from backstory import variants
from backstory.data.corpus.raw_store import write_raw_corpus
from backstory.data.corpus.sources import DEFAULT_HUB, CorpusConfig, plan_corpus
from backstory.data.corpus.splits import SplitRule
from backstory.data.corpus.story_table import (
    CleanPlan,
    CleanSettings,
    StoryTable,
    build_story_table,
    iter_records,
)
from backstory.data.documents import StoryDocuments
from backstory.data.text import reverse_words
from backstory.data.token_export import work_folder, write_token_store_parallel
from backstory.data.token_format import TokenStoreError
from backstory.data.token_store import TokenStore
from backstory.data.token_writer import write_token_store
from backstory.data.tokenizer import Tokenizer
from tests.project import (
    REAL_DATA,
    encoded,
    real_excerpt,
    story_documents,
    text_defaults,
    trained_tokenizer,
)

REAL = REAL_DATA
STORIES = real_excerpt("stories_100.json")
MORE = real_excerpt("stories_50_more.json")


def shard(n: int, seed: int) -> bytes:
    rng = random.Random(seed)
    return json.dumps([{"story": f"{rng.choice(STORIES)} ({seed}.{i})",
                        "instruction": {"prompt:": "", "words": ["dog", "run", "big"],
                                        "features": ["Dialogue"]},
                        "summary": "Lily finds a red ball in the park.", "source": "GPT-4"}
                       for i in range(n)]).encode()


def make_table(tmp_path: Path, files: dict[str, bytes], part_records: int = 40) -> StoryTable:
    source = tmp_path / "src"
    source.mkdir()
    for name, data in files.items():
        (source / name).write_bytes(data)
    config = CorpusConfig("local", 0, 0, 1, "all_data", DEFAULT_HUB, "", None, str(source))
    raw = write_raw_corpus(tmp_path / "raw", plan_corpus(config, workers=1))
    settings = CleanSettings("raise", SplitRule("hash", 0.2), None)
    return build_story_table(tmp_path / "stories", CleanPlan(raw, settings, workers=1),
                             part_records=part_records)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    texts = STORIES + MORE + [reverse_words(s) for s in STORIES + MORE]
    return Tokenizer.from_bytes(trained_tokenizer(texts, vocab_size=600))


def attrs_for(table: StoryTable, tokenizer: Tokenizer, variant: str, split: str) -> dict:
    return {"variant": variant, "split": split, "layout": variants.get(variant).layout,
            "vocab_size": tokenizer.vocab_size, "bos_id": tokenizer.bos_id,
            "eos_id": tokenizer.eos_id, "tokenizer_sha256": tokenizer.sha256,
            "corpus_fingerprint": table.fingerprint}


@pytest.mark.parametrize("variant", ["forward", "reversed", "instruct"])
def test_parallel_export_gives_the_bytes_of_a_serial_one(tmp_path, tokenizer, variant) -> None:
    table = make_table(tmp_path, {f"data{k:02d}.json": shard(70, k) for k in range(3)})
    assert len(table.partition_names("train")) >= 5
    attrs = attrs_for(table, tokenizer, variant, "train")
    documents = story_documents(table, "train", tokenizer, variant=variant, seed=3)
    write_token_store_parallel(tmp_path / "one.h5", documents, attrs=attrs, workers=1)
    write_token_store_parallel(tmp_path / "two.h5", documents, attrs=attrs, workers=2)
    serial = encoded(iter_records(table, "train"), tokenizer, variant=variant, seed=3,
                              batch_size=17)
    write_token_store(tmp_path / "serial.h5", serial, attrs=attrs)
    one = (tmp_path / "one.h5").read_bytes()
    assert one == (tmp_path / "two.h5").read_bytes() == (tmp_path / "serial.h5").read_bytes()
    assert not work_folder(tmp_path / "two.h5").exists()
    with TokenStore(tmp_path / "two.h5") as store:
        assert store.n_docs == table.report["n_train"]


KILLED_EXPORT = textwrap.dedent("""
    import json, sys
    from backstory.data.corpus.story_table import StoryTable
    from backstory.data.documents import StoryDocuments
    from backstory.data.token_export import write_token_store_parallel
    from backstory.data.tokenizer import Tokenizer
    table = StoryTable(sys.argv[1])
    tokenizer = Tokenizer.from_file(sys.argv[2])
    documents = StoryDocuments(table, "train", tokenizer, variant="reversed",
                               **json.loads(sys.argv[5]))
    write_token_store_parallel(sys.argv[3], documents, attrs=json.loads(sys.argv[4]), workers=1)
""")


def test_a_killed_export_resumes_without_encoding_finished_parts_again(tmp_path, tokenizer,
                                                                       monkeypatch) -> None:
    table = make_table(tmp_path, {f"data{k:02d}.json": shard(400, k) for k in range(10)},
                       part_records=50)
    attrs = attrs_for(table, tokenizer, "reversed", "train")
    (tmp_path / "tok.model").write_bytes(tokenizer.model_bytes)
    (tmp_path / "export.py").write_text(KILLED_EXPORT)
    target = tmp_path / "out" / "train.h5"
    target.parent.mkdir()
    work = work_folder(target)
    process = subprocess.Popen(
        [sys.executable, str(tmp_path / "export.py"), str(table.folder),
         str(tmp_path / "tok.model"), str(target), json.dumps(attrs),
         json.dumps(text_defaults())],
        start_new_session=True, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while len(list(work.glob("part-*.json"))) < 3:
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.005)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert not target.exists()
    markers = sorted(work.glob("part-*.json"))
    assert 3 <= len(markers) < len(table.partition_names("train"))
    documents = story_documents(table, "train", tokenizer, variant="reversed")
    done = {documents.parts[int(m.stem.split("-")[1])] for m in markers}
    encoded = []
    real_encode = StoryDocuments.encode_part

    def counting(self, name, num_threads=None):
        encoded.append(name)
        return real_encode(self, name, num_threads)

    monkeypatch.setattr(StoryDocuments, "encode_part", counting)
    write_token_store_parallel(target, documents, attrs=attrs, workers=1)
    assert encoded == [name for name in documents.parts if name not in done]
    monkeypatch.undo()
    write_token_store_parallel(tmp_path / "fresh.h5", documents, attrs=attrs, workers=2)
    assert target.read_bytes() == (tmp_path / "fresh.h5").read_bytes()


def test_resume_reuses_the_parts_on_disk_and_redoes_damaged_ones(tmp_path, tokenizer,
                                                                 monkeypatch) -> None:
    from backstory.data import token_export

    table = make_table(tmp_path, {f"data{k:02d}.json": shard(60, k) for k in range(3)},
                       part_records=20)
    attrs = attrs_for(table, tokenizer, "forward", "train")
    documents = story_documents(table, "train", tokenizer, variant="forward")
    target = tmp_path / "train.h5"
    real_assemble = token_export.token_writer.assemble_token_store

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # stands in for a kill after every part was encoded

    monkeypatch.setattr(token_export.token_writer, "assemble_token_store", crash)
    with pytest.raises(KeyboardInterrupt):
        write_token_store_parallel(target, documents, attrs=attrs, workers=1)
    monkeypatch.setattr(token_export.token_writer, "assemble_token_store", real_assemble)
    work = work_folder(target)
    spills = sorted(p for p in work.iterdir() if p.suffix == ".tokens")
    damaged = spills[1]
    data = bytearray(damaged.read_bytes())
    data[0] ^= 1
    damaged.write_bytes(bytes(data))
    encoded = []
    real_encode = StoryDocuments.encode_part

    def counting(self, name, num_threads=None):
        encoded.append(name)
        return real_encode(self, name, num_threads)

    monkeypatch.setattr(StoryDocuments, "encode_part", counting)
    write_token_store_parallel(target, documents, attrs=attrs, workers=1)
    assert encoded == [documents.parts[1]]  # only the damaged part again
    fresh = tmp_path / "fresh.h5"
    write_token_store_parallel(fresh, documents, attrs=attrs, workers=1)
    assert target.read_bytes() == fresh.read_bytes()


def test_a_table_that_changed_after_its_report_is_refused(tmp_path, tokenizer) -> None:
    table = make_table(tmp_path, {"data00.json": shard(30, 0)})
    attrs = attrs_for(table, tokenizer, "forward", "train") | {"corpus_fingerprint": "0" * 64}
    documents = story_documents(table, "train", tokenizer, variant="forward")
    with pytest.raises(TokenStoreError, match="not the one the ingest report describes"):
        write_token_store_parallel(tmp_path / "t.h5", documents, attrs=attrs)


def test_parts_of_another_export_are_discarded(tmp_path, tokenizer) -> None:
    table = make_table(tmp_path, {"data00.json": shard(30, 0)})
    target = tmp_path / "t.h5"
    stale = work_folder(target)
    stale.mkdir()
    (stale / "identity.json").write_text('{"identity": "something else"}')
    (stale / "part-00000.json").write_text("{}")
    documents = story_documents(table, "train", tokenizer, variant="forward")
    write_token_store_parallel(target, documents,
                               attrs=attrs_for(table, tokenizer, "forward", "train"))
    assert not stale.exists()
    with TokenStore(target) as store:
        assert store.n_docs == table.report["n_train"]
