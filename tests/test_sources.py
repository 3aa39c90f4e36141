"""Published TinyStories files: pinned URLs, and each published set downloaded through a
127.0.0.1 server, verified (size, published or recorded sha256) and ingested."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from backstory.data.corpus import sources
from backstory.data.corpus.download import CorruptArchiveError, SizeError, recorded_hash_path
from backstory.data.corpus.raw_store import write_raw_corpus
from backstory.data.corpus.sources import PUBLISHED, CorpusConfig, PublishedFile, plan_corpus
from backstory.data.corpus.splits import SplitRule
from backstory.data.corpus.story_table import CleanPlan, CleanSettings, build_story_table
from tests.project import REAL_DATA, real_excerpt
from tests.test_download import build_archive

REAL = REAL_DATA
STORIES = real_excerpt("stories_100.json")
MORE = real_excerpt("stories_50_more.json")
HEADERS = real_excerpt("instruct_headers_25.json")
PINNED = re.compile(r"https://huggingface\.co/datasets/roneneldan/TinyStories(Instruct)?"
                    r"/resolve/[0-9a-f]{40}/[A-Za-z0-9_.-]+")


def test_every_published_file_is_pinned_to_a_commit() -> None:
    for files in PUBLISHED.values():
        for item in files:
            url = item.url()
            assert PINNED.fullmatch(url), url
            assert "/main/" not in url and url.endswith("/" + item.name)
            if item.repo == sources.TINYSTORIES:
                assert item.size is not None and item.size > 10_000_000
    (archive,) = PUBLISHED["all_data"]
    assert archive.sha256 == "26cf7605aca15bc4ea6fa637256400d9d01317b28ed296172b2d1dd160cd7699"
    assert {item.role for item in PUBLISHED["v2"]} == {"train", "valid"}


def json_shard(stories: list[str]) -> bytes:
    return json.dumps([{"story": "\n\n" + s, "instruction": {"prompt:": "Write.", "words": [],
                        "features": []}, "summary": "S.", "source": "GPT-4"}
                       for s in stories]).encode()


def text_file(stories: list[str]) -> bytes:
    return "".join(f"{s}\n<|endoftext|>\n" for s in stories).encode()


def instruct_file(headers: list[str], stories: list[str]) -> bytes:
    return "".join(f"{h}{s}\n<|endoftext|>\n" for h, s in zip(headers, stories,
                                                                strict=False)).encode()


def curly(stories: list[str]) -> list[str]:
    return [s.replace('"', "\u201c", 1).replace('"', "\u201d", 1) for s in stories]


def fake_contents(dataset: str) -> dict[str, bytes]:
    """Small files with the published names and the real shapes."""
    if dataset == "all_data":
        members = [("data00.json", json_shard(STORIES[:20])),
                   ("data01.json", json_shard(STORIES[20:60])), ("README.md", b"no shard")]
        return {"TinyStories_all_data.tar.gz": build_archive(members)}
    if dataset == "v1":
        return {"TinyStories-train.txt": text_file(STORIES),
                "TinyStories-valid.txt": text_file(MORE)}
    if dataset == "v2":
        return {"TinyStoriesV2-GPT4-train.txt": text_file(curly(STORIES)),
                "TinyStoriesV2-GPT4-valid.txt": text_file(curly(MORE))}
    return {"TinyStories-Instruct-train.txt": instruct_file(HEADERS[:20], STORIES),
            "TinyStories-Instruct-valid.txt": instruct_file(HEADERS[20:], MORE)}


def publish(monkeypatch, server, dataset: str, contents: dict[str, bytes], *,
            size_offset: int = 0) -> list[PublishedFile]:
    """Serve ``contents`` under the pinned paths, and make the registry describe them."""
    base, state = server
    published = []
    for item in PUBLISHED[dataset]:
        data = contents[item.name]
        path = item.url(base)[len(base):]
        state.files[path] = data
        sha = hashlib.sha256(data).hexdigest() if item.sha256 else None
        size = None if item.size is None else len(data) + size_offset
        published.append(PublishedFile(item.repo, item.revision, item.name, size, sha,
                                       item.role, item.archive))
    monkeypatch.setitem(sources.PUBLISHED, dataset, tuple(published))
    return published


def config(dataset: str, server: str, tmp_path: Path) -> CorpusConfig:
    return CorpusConfig("tinystories", 0, 0, 1, dataset, server, str(tmp_path / "dl"), None, None)


@pytest.mark.parametrize("dataset", ["all_data", "v1", "v2", "instruct"])
def test_each_published_set_downloads_verifies_and_ingests(
    tmp_path, monkeypatch, server, dataset
) -> None:
    contents = fake_contents(dataset)
    published = publish(monkeypatch, server, dataset, contents)
    base, state = server
    plan = plan_corpus(config(dataset, base, tmp_path), workers=1, progress=False)
    assert state.paths == [item.url(base)[len(base):] for item in published]
    assert all(re.search(r"/resolve/[0-9a-f]{40}/", path) for path in state.paths)
    raw = write_raw_corpus(tmp_path / "raw", plan)
    strategy = SplitRule("shard", val_files=("data00.json",)) if dataset == "all_data" \
        else SplitRule("official")
    table = build_story_table(tmp_path / "stories",
                              CleanPlan(raw, CleanSettings("raise", strategy, None), workers=1))
    report = table.report
    assert report["source"]["dataset"] == dataset
    assert report["source"]["urls"] == [item.url(base) for item in published]
    if dataset == "all_data":
        assert [f.name for f in raw.files] == ["data00.json", "data01.json"]
        assert (report["n_train"], report["n_val"]) == (40, 20)
    else:
        assert report["n_val"] == (5 if dataset == "instruct" else 50)
        for item in published:  # no published hash: recorded on the first download
            dest = tmp_path / "dl" / item.name
            assert recorded_hash_path(dest).read_text().strip() == hashlib.sha256(
                contents[item.name]).hexdigest()
    if dataset == "v2":
        assert any("\u201c" in r["story"] for r in table.records("train"))
    # A second acquire verifies the cache and downloads nothing.
    plan_corpus(config(dataset, base, tmp_path), workers=1, progress=False)
    assert len(state.paths) == len(published)


def test_a_file_of_the_wrong_size_is_refused_and_deleted(tmp_path, monkeypatch, server
                                                         ) -> None:
    publish(monkeypatch, server, "v1", fake_contents("v1"), size_offset=1)
    with pytest.raises(SizeError, match="TinyStories-train.txt.*deleted"):
        plan_corpus(config("v1", server[0], tmp_path), workers=1, progress=False)
    assert not (tmp_path / "dl" / "TinyStories-train.txt").exists()


def test_a_cached_file_that_changed_since_its_download_is_fetched_again(
    tmp_path, monkeypatch, server
) -> None:
    contents = fake_contents("v2")
    publish(monkeypatch, server, "v2", contents)
    plan_corpus(config("v2", server[0], tmp_path), workers=1, progress=False)
    cached = tmp_path / "dl" / "TinyStoriesV2-GPT4-valid.txt"
    damaged = bytearray(cached.read_bytes())
    damaged[100] ^= 0x20  # same size, one bit flipped
    cached.write_bytes(bytes(damaged))
    plan_corpus(config("v2", server[0], tmp_path), workers=1, progress=False)
    assert cached.read_bytes() == contents["TinyStoriesV2-GPT4-valid.txt"]
    assert server[1].paths[-1].endswith("/TinyStoriesV2-GPT4-valid.txt")
    assert len(server[1].paths) == 3


def test_a_damaged_cached_archive_is_removed_so_the_next_run_fetches_it(
    tmp_path, monkeypatch, server
) -> None:
    good = fake_contents("all_data")["TinyStories_all_data.tar.gz"]
    damaged = bytearray(good)
    damaged[len(damaged) // 2] ^= 0xFF
    publish(monkeypatch, server, "all_data", {"TinyStories_all_data.tar.gz": bytes(damaged)})
    with pytest.raises(CorruptArchiveError, match="deleted, run again"):
        plan_corpus(config("all_data", server[0], tmp_path), workers=1, progress=False)
    assert not (tmp_path / "dl" / "TinyStories_all_data.tar.gz").exists()
    publish(monkeypatch, server, "all_data", {"TinyStories_all_data.tar.gz": good})
    plan = plan_corpus(config("all_data", server[0], tmp_path), workers=1, progress=False)
    assert [spec.name for spec in plan.files] == ["data00.json", "data01.json"]
