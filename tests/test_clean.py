"""Tests for per-file cleaning, the hash split and the merged ingest report."""

from __future__ import annotations

import json

import pytest

from backstory.data.corpus.clean import (
    TABLE_COLUMNS,
    clean_file,
    merge_reports,
    records_digest,
    to_columns,
)
from backstory.data.corpus.schema import PROMPT_KEY, BadRecordError
from backstory.data.corpus.splits import SplitRule, role_from_name, split_of


def record(story: object, **extra: object) -> dict:
    return {
        "story": story,
        "instruction": {PROMPT_KEY: "Write.", "words": ["run", "dog", "big"], "features": []},
        "summary": "A summary.",
        "source": "GPT-4",
    } | extra


def shard(records: list) -> bytes:
    return json.dumps(records).encode("utf-8")


def synthetic_stories(n: int, offset: int = 0) -> list[str]:
    return [f"Story number {i}. A dog named Rex ran {i % 7} times." for i in range(offset, n)]


SKIP = {"on_bad_record": "skip", "split": SplitRule("hash", 0.1)}
RAISE = {"on_bad_record": "raise", "split": SplitRule("hash", 0.1)}


MIXED = [
    record("\n\nA good story.  "),
    {"summary": "no story"},
    record("   "),
    record("Fine.", summary=12),
    "not an object",
    record("Another good one."),
    record(7),
]


def test_clean_json_shard_adds_location_and_split() -> None:
    result = clean_file("data05.json", shard(MIXED[:1] + MIXED[5:6]), **SKIP)
    assert (result.n_read, result.n_kept, result.skipped) == (2, 2, {})
    first, second = result.records
    assert first["story"] == "A good story."
    assert (first["shard"], first["record"]) == ("data05.json", 0)
    assert (second["shard"], second["record"]) == ("data05.json", 1)
    assert {first["split"], second["split"]} <= {"train", "val"}


def test_skip_counts_bad_records_by_reason() -> None:
    result = clean_file("data03.json", shard(MIXED), **SKIP)
    assert result.n_read == 7
    assert result.n_kept == 2
    assert result.skipped == {
        "missing_story": 1,
        "empty_story": 1,
        "wrong_type:summary": 1,
        "not_object": 1,
        "wrong_type:story": 1,
    }
    assert [r["record"] for r in result.records] == [0, 5]
    assert result.n_read == result.n_kept + sum(result.skipped.values())


def test_raise_names_file_record_and_reason() -> None:
    with pytest.raises(BadRecordError) as info:
        clean_file("data03.json", shard(MIXED), **RAISE)
    err = info.value
    assert (err.source, err.index, err.reason) == ("data03.json", 1, "missing_story")
    assert str(err).startswith("data03.json, record 1: ")


def test_wrong_type_message() -> None:
    with pytest.raises(
        BadRecordError, match=r"record 0: field 'summary' must be a string, got int"
    ):
        clean_file("data03.json", shard([record("Fine.", summary=12)]), **RAISE)


@pytest.mark.parametrize(
    ("data", "reason"),
    [(b'[{"story": "\xff"}]', "invalid_utf8"), (b'{"story": "a"}', "not_json_array")],
)
def test_file_level_error_skips_whole_file(data: bytes, reason: str) -> None:
    result = clean_file("data09.json", data, **SKIP)
    assert result.file_error == reason
    assert (result.n_read, result.n_kept, result.skipped) == (0, 0, {reason: 1})
    assert result.records == []


def test_file_level_error_raises_under_raise() -> None:
    with pytest.raises(BadRecordError) as info:
        clean_file("data09.json", b'{"story": "a"}', **RAISE)
    assert (info.value.index, info.value.reason) == (None, "not_json_array")


def test_text_file_counts_empty_chunks_apart() -> None:
    data = b"<|endoftext|>\nA dog.\n<|endoftext|>\nA cat.\n<|endoftext|>\n"
    result = clean_file("TinyStories-valid.txt", data, **RAISE)
    assert (result.n_read, result.n_kept, result.empty_chunks) == (2, 2, 2)
    # Text records are located by the byte offset where their chunk starts.
    assert [r["record"] for r in result.records] == [data.index(b"A dog"), data.index(b"A cat")]
    assert result.records[0]["source"] == "TinyStories-valid.txt"


def test_instruct_bad_chunk_is_counted_under_skip() -> None:
    data = (b"Story: Fine.\n<|endoftext|>\nHello\nStory: b\n<|endoftext|>\n"
            b"Summary: a\nStory: b\nSummary: c\n<|endoftext|>\n")
    result = clean_file("i.txt", data, **SKIP)
    assert result.skipped == {"text_outside_field": 1}
    assert [r["story"] for r in result.records] == ["Fine.", "b"]
    assert result.records[1]["summary"] == "a"
    assert result.records[1]["extra_fields"] == ["Summary: c"]
    assert result.quirks["duplicate:Summary"] == 1


def test_invalid_utf8_under_skip_loses_one_story_not_the_file() -> None:
    data = b"One.\n<|endoftext|>\nBad \xff byte.\n<|endoftext|>\nThree.\n<|endoftext|>\n"
    result = clean_file("TinyStories-train.txt", data, **SKIP)
    assert [r["story"] for r in result.records] == ["One.", "Three."]
    assert result.skipped == {"invalid_utf8": 1}
    assert result.file_error is None
    with pytest.raises(BadRecordError, match=r"record at byte 19: invalid UTF-8 at byte offset 23"):
        clean_file("TinyStories-train.txt", data, **RAISE)


def test_crlf_is_normalised_and_counted_in_json_and_text() -> None:
    shard_result = clean_file("d.json", shard([record("A.\r\nB.\r\n"), record("C.")]), **RAISE)
    assert [r["story"] for r in shard_result.records] == ["A.\nB.", "C."]
    assert shard_result.quirks == {"crlf": 1}
    text_result = clean_file("t.txt", b"A.\r\nB.\r\n<|endoftext|>\r\n", **RAISE)
    assert text_result.records[0]["story"] == "A.\nB."
    assert text_result.quirks == {"crlf": 1}


def test_split_strategies() -> None:
    data = shard([record(s) for s in synthetic_stories(40)])
    by_shard = SplitRule("shard", val_files=("data00.json",))
    assert {r["split"] for r in clean_file("data00.json", data, split=by_shard,
                                           on_bad_record="raise").records} == {"val"}
    assert {r["split"] for r in clean_file("data01.json", data, split=by_shard,
                                           on_bad_record="raise").records} == {"train"}
    official = SplitRule("official")
    valid = clean_file("TinyStories-valid.txt", b"A.\n<|endoftext|>\n", split=official,
                       on_bad_record="raise", role="valid")
    assert valid.records[0]["split"] == "val"
    assert role_from_name("TinyStoriesV2-GPT4-valid.txt") == "valid"
    assert role_from_name("TinyStories-Instruct-train.txt") == "train"
    assert role_from_name("data00.json") == "train"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"strategy": "random", "val_fraction": 0.1, "val_files": []}, "split.strategy"),
        ({"strategy": "shard", "val_fraction": 0.1, "val_files": []}, "split.val_files"),
        ({"strategy": "shard", "val_fraction": 0.1, "val_files": "data00.json"}, "list"),
        ({"strategy": "hash", "val_fraction": 0.1}, "lacks val_files"),
        ({"strategy": "hash", "val_fraction": 0.1, "val_files": [], "seed": 1}, "unknown"),
    ],
)
def test_split_parameters_are_checked(params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SplitRule.from_params(params)


def test_split_rule_checks_the_files_it_needs() -> None:
    files = [("data00.json", "train"), ("data01.json", "train")]
    with pytest.raises(ValueError, match=r"names \['data07.json'\]"):
        SplitRule("shard", val_files=("data07.json",)).check_files(files)
    with pytest.raises(ValueError, match="no training stories"):
        SplitRule("shard", val_files=("data00.json", "data01.json")).check_files(files)
    with pytest.raises(ValueError, match="validation file"):
        SplitRule("official").check_files(files)
    SplitRule("official").check_files([("a-train.txt", "train"), ("a-valid.txt", "valid")])
    assert SplitRule("shard", val_files=("data00.json",)).describe() == {
        "strategy": "shard", "val_files": ["data00.json"]}


def test_unknown_policy_names_the_setting() -> None:
    with pytest.raises(ValueError, match=r"ingest\.on_bad_record"):
        clean_file("data00.json", shard([record("a")]), **{**RAISE, "on_bad_record": "ignore"})


@pytest.mark.parametrize("fraction", [1.0, -0.01, 1.5, True, "0.1", float("nan")])
def test_bad_val_fraction_names_the_setting(fraction: object) -> None:
    with pytest.raises(ValueError, match=r"split\.val_fraction"):
        split_of("a story", fraction)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"split\.val_fraction"):
        SplitRule("hash", fraction)  # type: ignore[arg-type]


def test_same_input_same_digest_and_salt_matters() -> None:
    data = shard([record(s) for s in synthetic_stories(50)])
    first = clean_file("data00.json", data, **RAISE)
    again = clean_file("data00.json", data, **RAISE)
    salted = clean_file("data00.json", data, on_bad_record="raise",
                        split=SplitRule("hash", 0.1, salt="other-salt"))
    assert first.digest == again.digest == records_digest(again.records)
    assert [r["split"] for r in first.records] != [r["split"] for r in salted.records]
    assert salted.digest != first.digest


def test_split_depends_on_text_only() -> None:
    stories = synthetic_stories(300)
    small = clean_file("a.json", shard([record(s) for s in stories]), **RAISE)
    grown = stories[::-1] + synthetic_stories(900, offset=300)
    large = clean_file("b.json", shard([record(s) for s in grown]), **RAISE)
    side_small = {r["story"]: r["split"] for r in small.records}
    side_large = {r["story"]: r["split"] for r in large.records}
    assert all(side_large[story] == side for story, side in side_small.items())


def test_identical_texts_share_a_side() -> None:
    for story in synthetic_stories(200):
        assert split_of(story, 0.5) == split_of(f"\n\n{story}  \n", 0.5)


def test_split_fraction_is_roughly_respected() -> None:
    stories = synthetic_stories(2000)
    n_val = sum(split_of(story, 0.1) == "val" for story in stories)
    # Binomial(2000, 0.1): mean 200, sd ~13.4; 4.5 sd either side.
    assert 140 <= n_val <= 260
    assert all(split_of(story, 0.0) == "train" for story in stories[:200])


def test_summary_and_merge_reports() -> None:
    good = clean_file("data00.json", shard([record(s) for s in synthetic_stories(40)]), **SKIP)
    mixed = clean_file("data01.json", shard(MIXED), **SKIP)
    broken = clean_file("data02.json", b"[1,", **SKIP)
    rows = [good.summary(), mixed.summary(), broken.summary()]
    report = merge_reports(rows)
    assert report["n_files"] == 3
    assert report["n_read"] == 47
    assert report["n_kept"] == 42
    assert report["n_train"] + report["n_val"] == 42
    assert report["n_val"] == sum(r["split"] == "val" for r in good.records + mixed.records)
    assert report["n_skipped_records"] == 5
    assert report["skipped_records"]["missing_story"] == 1
    assert report["skipped_files"] == {"invalid_json": 1}
    assert [row["name"] for row in report["files"]] == ["data00.json", "data01.json", "data02.json"]
    assert json.loads(json.dumps(report)) == report
    with_split = merge_reports(rows, split=SplitRule("hash", 0.1).describe(),
                               ignored=[{"name": "notes.md", "reason": "not read"}])
    assert with_split["split"]["strategy"] == "hash"
    assert with_split["files_ignored"] == [{"name": "notes.md", "reason": "not read"}]


def test_fingerprint_follows_content_and_order() -> None:
    a = clean_file("data00.json", shard([record("One.")]), **RAISE).summary()
    b = clean_file("data01.json", shard([record("Two.")]), **RAISE).summary()
    b_changed = clean_file("data01.json", shard([record("Two!")]), **RAISE).summary()
    fingerprint = merge_reports([a, b])["corpus_fingerprint"]
    assert fingerprint == merge_reports([dict(a), dict(b)])["corpus_fingerprint"]
    assert fingerprint != merge_reports([b, a])["corpus_fingerprint"]
    assert fingerprint != merge_reports([a, b_changed])["corpus_fingerprint"]


def test_merge_reports_rejects_incomplete_rows() -> None:
    with pytest.raises(ValueError, match=r"row 0 lacks keys \['digest'\]"):
        row = clean_file("d.json", shard([record("a")]), **RAISE).summary()
        del row["digest"]
        merge_reports([row])


def test_to_columns_matches_the_stories_table() -> None:
    result = clean_file("data00.json", shard([record(" A. "), record("B.")]), **RAISE)
    columns = to_columns(result.records)
    assert tuple(columns) == TABLE_COLUMNS
    assert columns["story"] == ["A.", "B."]
    assert columns["words"] == [["run", "dog", "big"]] * 2
    assert columns["record"] == [0, 1]
    assert columns["shard"] == ["data00.json"] * 2


def test_split_salt_must_be_text() -> None:
    with pytest.raises(ValueError, match="salt"):
        SplitRule("hash", 0.1, salt=3)  # type: ignore[arg-type]
