"""The raw corpus and the story table: collisions, parallel = serial, resume after a kill,
atomic commits under write failures and a full disk, damage, locks, local listings,
split strategies and per-file limits."""

from __future__ import annotations

import errno
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

from backstory.core.locks import FolderLock, LockedError
from backstory.data.corpus import story_table, storyworld
from backstory.data.corpus.clean import RecordCleaner
from backstory.data.corpus.raw_store import (
    MANIFEST as RAW_MANIFEST,
)
from backstory.data.corpus.raw_store import (
    RawCorpusError,
    load_raw_corpus,
    write_raw_corpus,
)
from backstory.data.corpus.readers import read_records
from backstory.data.corpus.sources import DEFAULT_HUB, CorpusConfig, plan_corpus
from backstory.data.corpus.splits import SplitRule
from backstory.data.corpus.story_table import (
    MANIFEST,
    WORK,
    CleanPlan,
    CleanSettings,
    StoryTable,
    StoryTableError,
    build_story_table,
)
from tests.project import REAL_DATA, real_excerpt

REAL = REAL_DATA
STORIES = real_excerpt("stories_100.json")
MORE = real_excerpt("stories_50_more.json")
HEADERS = real_excerpt("instruct_headers_25.json")


def shard_bytes(n: int, seed: int, words: str = "") -> bytes:
    rng = random.Random(seed)
    records = [{"story": f"\n\n{rng.choice(STORIES)} {words}({seed}.{i})",
                "instruction": {"prompt:": "Write.", "words": ["a", "b", "c"],
                                "features": rng.sample(["Dialogue", "Twist"], 1)},
                "summary": f"Summary {i}.", "source": "GPT-4"} for i in range(n)]
    return json.dumps(records).encode()


def text_bytes(stories: list[str]) -> bytes:
    return "".join(f"{s}\n<|endoftext|>\n" for s in stories).encode()


def local_config(folder: Path) -> CorpusConfig:
    return CorpusConfig("local", 0, 0, 1, "all_data", DEFAULT_HUB, str(folder / "dl"), None,
                        str(folder))


def raw_corpus(tmp_path: Path, files: dict[str, bytes], name: str = "raw"):
    source = tmp_path / f"{name}-src"
    source.mkdir(parents=True, exist_ok=True)
    for file_name, data in files.items():
        (source / file_name).write_bytes(data)
    return write_raw_corpus(tmp_path / name, plan_corpus(local_config(source), workers=1))


def build(folder: Path, raw, *, strategy: str = "hash", val_files=(), workers: int = 1,
          on_bad: str = "raise", limit: int | None = None, **kwargs) -> StoryTable:
    settings = CleanSettings(on_bad, SplitRule(strategy, 0.2, tuple(val_files)), limit)
    return build_story_table(folder, CleanPlan(raw, settings, workers), **kwargs)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def all_records(table: StoryTable) -> list[dict]:
    return [r for split in ("train", "val") for r in table.records(split)]


# ---------------------------------------------------------------- issue 13, item 1


def test_files_with_the_same_stem_never_share_a_partition(tmp_path) -> None:
    raw = raw_corpus(tmp_path, {"data00.json": shard_bytes(40, 1),
                                "data00.txt": text_bytes(STORIES[:30])})
    table = build(tmp_path / "stories", raw)
    report = table.report
    assert [row["name"] for row in report["files"]] == ["data00.json", "data00.txt"]
    assert report["n_kept"] == 70
    records = all_records(table)
    assert len(records) == 70
    assert sorted({r["shard"] for r in records}) == ["data00.json", "data00.txt"]
    assert {r["story"] for r in records if r["shard"] == "data00.txt"} == {
        s.strip() for s in STORIES[:30]}
    names = table.partition_names()
    assert {name.split("/")[0] for name in names} == {"data00.json", "data00.txt"}
    assert sum(p["rows"] for p in table.partitions) == report["n_kept"]


# ---------------------------------------------------------------- parallel, ranges


def test_parallel_cleaning_gives_the_same_bytes_as_one_process(tmp_path) -> None:
    files = {f"data{k:02d}.json": shard_bytes(25, k) for k in range(3)}
    files["TinyStories-valid.txt"] = text_bytes(STORIES + MORE)
    raw = raw_corpus(tmp_path, files)
    serial = build(tmp_path / "serial", raw, workers=1, range_bytes=20_000, part_records=7)
    parallel = build(tmp_path / "parallel", raw, workers=2, range_bytes=20_000, part_records=7)
    assert serial.report["files"][0]["n_ranges"] > 3
    assert len(serial.partitions) > 20
    assert folder_bytes(tmp_path / "serial") == folder_bytes(tmp_path / "parallel")
    assert serial.fingerprint == parallel.fingerprint
    assert all_records(serial) == all_records(parallel)


def test_text_ranges_read_the_same_records_as_one_pass(tmp_path) -> None:
    raw = raw_corpus(tmp_path, {"TinyStories-train.txt": text_bytes(STORIES + MORE)})
    whole = build(tmp_path / "whole", raw)
    ranged = build(tmp_path / "ranged", raw, range_bytes=5_000)
    assert ranged.report["files"][0]["n_ranges"] > 10
    assert all_records(ranged) == all_records(whole)
    offsets, position = [], 0
    for story in STORIES + MORE:
        offsets.append(position)
        position += len(story.encode()) + len("\n<|endoftext|>\n")
    assert sorted(r["record"] for r in all_records(whole)) == offsets


# ---------------------------------------------------------------- kill and resume

KILLED_BUILD = textwrap.dedent("""
    import sys
    from backstory.data.corpus.raw_store import load_raw_corpus
    from backstory.data.corpus.splits import SplitRule
    from backstory.data.corpus.story_table import CleanPlan, CleanSettings, build_story_table
    raw = load_raw_corpus(sys.argv[1])
    settings = CleanSettings("raise", SplitRule("hash", 0.2), None)
    build_story_table(sys.argv[2], CleanPlan(raw, settings, workers=1))
""")


def run_until_killed(tmp_path: Path, raw_folder: Path, folder: Path, markers: int) -> None:
    script = tmp_path / "build.py"
    script.write_text(KILLED_BUILD)
    process = subprocess.Popen([sys.executable, str(script), str(raw_folder), str(folder)],
                               start_new_session=True, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while len(list((folder / WORK).glob("*.json"))) < markers:
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.005)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_a_killed_build_resumes_without_redoing_finished_tasks(tmp_path) -> None:
    files = {f"data{k:02d}.json": shard_bytes(600, k) for k in range(40)}
    raw = raw_corpus(tmp_path, files)
    folder = tmp_path / "stories"
    # An earlier, different table: a kill must leave it whole, under its own fingerprint.
    old = build(folder, raw, strategy="shard", val_files=["data00.json"])
    old_manifest = (folder / MANIFEST).read_bytes()
    run_until_killed(tmp_path, raw.folder, folder, markers=3)
    assert (folder / MANIFEST).read_bytes() == old_manifest
    survivor = StoryTable(folder)
    survivor.verify()
    assert survivor.fingerprint == old.fingerprint
    done = [json.loads(p.read_text()) for p in sorted((folder / WORK).glob("*.json"))]
    assert 3 <= len(done) < 40
    finished = {p["file"]: (folder / p["file"]).stat() for r in done for p in r["partitions"]}
    resumed = build(folder, raw)
    for name, before in finished.items():
        after = (folder / name).stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    fresh = build(tmp_path / "fresh", raw)
    assert folder_bytes(folder) == folder_bytes(tmp_path / "fresh")
    assert resumed.fingerprint == fresh.fingerprint != old.fingerprint
    assert not (folder / WORK).exists()


# ---------------------------------------------------------------- issue 13, item 4


def test_a_failed_write_keeps_the_previous_table_whole(tmp_path, monkeypatch) -> None:
    raw = raw_corpus(tmp_path, {f"data{k:02d}.json": shard_bytes(30, k) for k in range(4)})
    folder = tmp_path / "stories"
    old = build(folder, raw, part_records=10)
    before = folder_bytes(folder)
    real_write = story_table.write_bytes_atomically
    calls = []

    def failing_write(path, data):
        calls.append(path)
        if len(calls) == 5:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_write(path, data)

    monkeypatch.setattr(story_table, "write_bytes_atomically", failing_write)
    with pytest.raises(OSError, match="No space left"):
        build(folder, raw, strategy="shard", val_files=["data01.json"], part_records=10)
    table = StoryTable(folder)
    table.verify()
    assert table.fingerprint == old.fingerprint
    assert (folder / MANIFEST).read_bytes() == before[MANIFEST]
    assert not [p for p in folder.rglob("*.tmp")]
    monkeypatch.setattr(story_table, "write_bytes_atomically", real_write)
    new = build(folder, raw, strategy="shard", val_files=["data01.json"], part_records=10)
    fresh = build(tmp_path / "fresh", raw, strategy="shard", val_files=["data01.json"],
                  part_records=10)
    assert new.fingerprint == fresh.fingerprint
    assert folder_bytes(folder) == folder_bytes(tmp_path / "fresh")


@pytest.fixture
def small_disk(tmp_path):
    """A 300 kB tmpfs, where the machine lets us mount one (root in a container)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_keeps_the_previous_table_whole(tmp_path, small_disk) -> None:
    rng = random.Random(0)
    noise = " ".join(f"{rng.getrandbits(64):x}" for _ in range(40))  # compresses badly
    small = raw_corpus(tmp_path, {"data00.json": shard_bytes(20, 0)}, name="small")
    big = raw_corpus(tmp_path, {f"data{k:02d}.json": shard_bytes(300, k, noise)
                                for k in range(6)}, name="big")
    folder = small_disk / "stories"
    old = build(folder, small)
    with pytest.raises(OSError) as info:
        build(folder, big)
    assert info.value.errno == errno.ENOSPC
    table = StoryTable(folder)
    table.verify()
    assert table.fingerprint == old.fingerprint
    assert all_records(table) == all_records(old)


# ---------------------------------------------------------------- damage and locks


def test_a_damaged_partition_is_named_and_cleaned_again(tmp_path) -> None:
    raw = raw_corpus(tmp_path, {f"data{k:02d}.json": shard_bytes(20, k) for k in range(3)})
    folder = tmp_path / "stories"
    table = build(folder, raw)
    victim = folder / table.partitions[1]["file"]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    with pytest.raises(StoryTableError, match=str(victim)):
        StoryTable(folder).verify()
    others = {p["file"]: (folder / p["file"]).stat().st_mtime_ns for p in table.partitions
              if p["file"] != table.partitions[1]["file"]}
    repaired = build(folder, raw)
    repaired.verify()
    assert repaired.fingerprint == table.fingerprint
    assert {f: (folder / f).stat().st_mtime_ns for f in others} == others


def test_a_missing_manifest_says_the_ingest_did_not_finish(tmp_path) -> None:
    (tmp_path / "stories" / WORK).mkdir(parents=True)
    with pytest.raises(StoryTableError, match="interrupted.*kedro run --pipelines ingest"):
        StoryTable(tmp_path / "stories")


def test_a_second_ingest_fails_at_once_naming_the_first(tmp_path) -> None:
    raw = raw_corpus(tmp_path, {"data00.json": shard_bytes(5, 0)})
    for locked in (raw.folder, tmp_path / "stories"):
        with FolderLock(locked, "a test run"):
            started = time.monotonic()
            with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
                build(tmp_path / "stories", raw)
            assert time.monotonic() - started < 5
    with FolderLock(raw.folder, "a test run"), pytest.raises(LockedError):
        write_raw_corpus(raw.folder, plan_corpus(local_config(tmp_path / "raw-src"), workers=1))
    build(tmp_path / "stories", raw)  # the lock dies with its holder


# ---------------------------------------------------------------- issue 13, item 6


def test_every_local_entry_is_read_or_listed_as_ignored(tmp_path) -> None:
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "data01.json").write_bytes(shard_bytes(3, 1))
    (source / "DATA00.JSON").write_bytes(shard_bytes(4, 0))
    (source / "stories.TXT").write_bytes(text_bytes(STORIES[:2]))
    (source / "notes.md").write_text("notes")
    (source / ".hidden.json").write_bytes(shard_bytes(1, 2))
    raw = write_raw_corpus(tmp_path / "raw", plan_corpus(local_config(source), workers=1))
    table = build(tmp_path / "stories", raw)
    report = table.report
    assert [row["name"] for row in report["files"]] == ["DATA00.JSON", "stories.TXT"]
    assert report["n_kept"] == 6
    ignored = {entry["name"]: entry["reason"] for entry in report["files_ignored"]}
    assert set(ignored) == {"sub", "notes.md", ".hidden.json"}
    assert "subfolder" in ignored["sub"] and "hidden" in ignored[".hidden.json"]


def test_case_only_different_names_are_refused(tmp_path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "data00.json").write_bytes(shard_bytes(1, 0))
    (source / "DATA00.json").write_bytes(shard_bytes(1, 1))
    with pytest.raises(RawCorpusError, match="case-insensitive"):
        write_raw_corpus(tmp_path / "raw", plan_corpus(local_config(source), workers=1))


# ---------------------------------------------------------------- splits and limits


def test_official_split_uses_the_datasets_validation_file(tmp_path) -> None:
    raw = raw_corpus(tmp_path, {"TinyStoriesV2-GPT4-train.txt": text_bytes(STORIES),
                                "TinyStoriesV2-GPT4-valid.txt": text_bytes(MORE)})
    table = build(tmp_path / "stories", raw, strategy="official")
    assert table.report["split"] == {"strategy": "official"}
    assert (table.report["n_train"], table.report["n_val"]) == (100, 50)
    assert {r["shard"] for r in table.records("val")} == {"TinyStoriesV2-GPT4-valid.txt"}
    with pytest.raises(ValueError, match="validation file"):
        build(tmp_path / "other", raw_corpus(tmp_path, {"data00.json": shard_bytes(3, 0)},
                                             name="json"), strategy="official")


def test_shard_split_holds_out_the_named_files(tmp_path) -> None:
    raw = raw_corpus(tmp_path, {f"data{k:02d}.json": shard_bytes(10, k) for k in range(3)})
    table = build(tmp_path / "stories", raw, strategy="shard", val_files=["data00.json"])
    assert table.report["split"] == {"strategy": "shard", "val_files": ["data00.json"]}
    assert {r["shard"] for r in table.records("val")} == {"data00.json"}
    assert table.report["n_val"] == 10
    assert table.partition_names("val") == ["data00.json/00000-000"]


def test_first_n_stories_of_each_file(tmp_path) -> None:
    raw = raw_corpus(tmp_path, {"TinyStories-train.txt": text_bytes(STORIES),
                                "data00.json": shard_bytes(30, 0)})
    table = build(tmp_path / "stories", raw, limit=12)
    rows = {row["name"]: row for row in table.report["files"]}
    assert rows["TinyStories-train.txt"]["n_kept"] == rows["data00.json"]["n_kept"] == 12
    assert all(row["stopped_early"] for row in rows.values())
    text = [r for r in all_records(table) if r["shard"] == "TinyStories-train.txt"]
    assert sorted(r["story"] for r in text) == sorted(s.strip() for s in STORIES[:12])


def test_skip_counts_invalid_utf8_stories_in_the_report(tmp_path) -> None:
    data = text_bytes(STORIES[:3]).replace(b"Lily", b"L\xffly", 1)
    raw = raw_corpus(tmp_path, {"TinyStories-train.txt": data})
    table = build(tmp_path / "stories", raw, on_bad="skip")
    assert table.report["skipped_records"] == {"invalid_utf8": 1}
    assert table.report["n_kept"] == 2
    with pytest.raises(Exception, match="record at byte 0: invalid UTF-8"):
        build(tmp_path / "raise", raw)


def test_real_instruct_records_reach_the_table_with_their_quirks_counted(tmp_path) -> None:
    body = "".join(f"{h}{s}\n<|endoftext|>\n" for h, s in zip(HEADERS, STORIES, strict=False))
    raw = raw_corpus(tmp_path, {"TinyStories-Instruct-valid.txt": body.encode()})
    table = build(tmp_path / "stories", raw)
    report = table.report
    assert report["n_kept"] == 25 and report["n_skipped_records"] == 0
    assert report["quirks"]["duplicate:Summary"] == 5
    assert report["quirks"]["random_sentence"] == 8
    records = all_records(table)
    assert sum(bool(r["random_sentence"]) for r in records) == 8
    assert sum(len(r["extra_fields"]) for r in records) == 5


# ---------------------------------------------------------------- raw corpus


def test_raw_corpus_keeps_unchanged_files_and_removes_strays(tmp_path) -> None:
    config = CorpusConfig("storyworld", 30, 7, 10, "all_data", DEFAULT_HUB, "", None, None)
    folder = tmp_path / "raw"
    first = write_raw_corpus(folder, plan_corpus(config, workers=2))
    assert [f.name for f in first.files] == ["data00.json", "data01.json", "data02.json"]
    stamps = {f.name: (folder / f.name).stat().st_mtime_ns for f in first.files}
    (folder / "stray.json").write_text("[]")
    again = write_raw_corpus(folder, plan_corpus(config, workers=1))
    assert again == first
    assert {f.name: (folder / f.name).stat().st_mtime_ns for f in again.files} == stamps
    assert not (folder / "stray.json").exists()
    reseeded = CorpusConfig("storyworld", 20, 8, 10, "all_data", DEFAULT_HUB, "", None, None)
    third = write_raw_corpus(folder, plan_corpus(reseeded, workers=1))
    assert [f.name for f in third.files] == ["data00.json", "data01.json"]
    assert third.files[0].sha256 != first.files[0].sha256
    manifest = json.loads((folder / RAW_MANIFEST).read_text())
    assert manifest["complete"] and manifest["details"] == {"n_stories": 20, "seed": 8}
    (folder / "data01.json").write_text("[]")
    with pytest.raises(RawCorpusError, match="data01.json"):
        load_raw_corpus(folder)


# ---------------------------------------------------------------- presets


@pytest.mark.parametrize(("env", "dataset", "strategy"), [
    ("tinystories", "all_data", "shard"), ("tinystories_v2", "v2", "official"),
    ("tinystories_cpu", "v2", "official")])
def test_real_data_presets_are_complete_and_pinned(env: str, dataset: str, strategy: str
                                                   ) -> None:
    import yaml

    from backstory.data.corpus.sources import PUBLISHED
    from backstory.data.corpus.story_table import IngestConfig
    from backstory.params import build as build_settings
    from tests.project import REPO, deep_update

    base = yaml.safe_load((REPO / "conf/base/parameters_ingest.yml").read_text())
    params = deep_update(base, yaml.safe_load((REPO / f"conf/{env}/parameters_ingest.yml")
                                              .read_text()))
    corpus = build_settings(CorpusConfig, params["corpus"], "corpus")
    assert (corpus.source, corpus.dataset) == ("tinystories", dataset)
    assert all("/resolve/main/" not in item.url() for item in PUBLISHED[corpus.dataset])
    build_settings(IngestConfig, params["ingest"], "ingest")
    assert SplitRule.from_params(params["split"]).strategy == strategy


def test_a_failed_task_never_deletes_partitions_the_committed_table_names(tmp_path) -> None:
    raw = raw_corpus(tmp_path, {"data00.json": shard_bytes(30, 0)})
    folder = tmp_path / "stories"
    old = build(folder, raw, on_bad="skip", part_records=10)
    # The same records cleaned under another policy: same partition contents and names.
    cleaner = RecordCleaner("data00.json", on_bad_record="raise", split=SplitRule("hash", 0.2))
    writer = story_table.PartitionWriter(folder, "data00.json", 0, 10)
    for item in read_records("data00.json", raw.path("data00.json")):
        writer.add(cleaner.take(item))
    assert len(writer.close()) == 3 and writer.created == []
    writer.discard()
    StoryTable(folder).verify()
    assert old.fingerprint == StoryTable(folder).fingerprint


# ---------------------------------------------------------------- issue 19: source_bits


def test_source_bits_survive_ingest_and_split_and_older_records_still_ingest(tmp_path) -> None:
    generated = storyworld.generate_records(5, 0, 40)
    older = [{k: v for k, v in r.items() if k != "source_bits"}
             for r in storyworld.generate_records(5, 40, 50)]  # written before the field
    raw = raw_corpus(tmp_path, {"data00.json": json.dumps(generated).encode(),
                                "data01.json": json.dumps(older).encode(),
                                "TinyStories-train.txt": text_bytes(STORIES[:10])})
    table = build(tmp_path / "stories", raw)
    records = all_records(table)
    assert len(records) == 60 and {r["split"] for r in records} == {"train", "val"}
    by_story = {r["story"].strip(): r["source_bits"] for r in generated}
    for record in records:
        if record["shard"] == "data00.json":
            assert record["source_bits"] == by_story[record["story"]]  # the very float
        else:
            assert record["source_bits"] is None
