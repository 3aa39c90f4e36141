"""Tests for the raw-file readers: JSON shards, plain text and TinyStoriesInstruct text."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backstory.data.corpus import readers
from backstory.data.corpus.readers import (
    EmptyChunk,
    detect_format,
    read_instruct_text,
    read_json_shard,
    read_records,
    read_text_stories,
)
from backstory.data.corpus.schema import PROMPT_KEY, BadRecordError

RECORDS = [
    {
        "story": "\n\nTom and Sue find a red boat.",
        "instruction": {PROMPT_KEY: "Write.", "words": ["float", "boat", "red"], "features": []},
        "summary": "They find a boat.",
        "source": "GPT-4",
    },
    {"story": "Lily has a cat. Café au lait.", "summary": "A cat.", "source": "GPT-3.5"},
]

INSTRUCT = """Features: Dialogue, BadEnding
Words: quit, oak, gloomy
Summary: Sara and Ben play by an oak tree.
Random sentence: The sky was gloomy.
Story:

Sara and Ben were playing near the old oak.
"Let's quit," said Ben.

They went home.
<|endoftext|>
Random sentence: It was a big day.
Story: Tim had a kite.
It flew high.
Summary: Tim flies a kite.
Words: kite,fly ,  high
Features: Twist MoralValue
<|endoftext|>
"""


def file_error(call, *args) -> BadRecordError:
    """Run a reader to the end and return the file-level error it raised."""
    with pytest.raises(BadRecordError) as info:
        list(call(*args))
    assert info.value.index is None
    return info.value


# --- JSON shards -------------------------------------------------------------


def test_json_shard_yields_each_element_in_order() -> None:
    data = json.dumps(RECORDS, ensure_ascii=False).encode("utf-8")
    items = list(read_json_shard(data, "data00.json"))
    assert items == [(0, RECORDS[0]), (1, RECORDS[1])]


def test_json_shard_accepts_a_byte_order_mark() -> None:
    data = b"\xef\xbb\xbf" + json.dumps(RECORDS).encode()
    assert len(list(read_json_shard(data, "data00.json"))) == 2


def test_json_shard_yields_non_objects_for_validation_to_reject() -> None:
    assert list(read_json_shard(b'[1, {"story": "x"}]', "d.json")) == [(0, 1), (1, {"story": "x"})]


def test_invalid_utf8_reports_byte_offset() -> None:
    data = b'[{"story": "ok \xff"}]'
    err = file_error(read_json_shard, data, "data07.json")
    assert err.reason == "invalid_utf8"
    assert "byte offset 15" in str(err)
    assert str(err).startswith("data07.json: ")


def test_invalid_json_reports_position() -> None:
    err = file_error(read_json_shard, b'[{"story": "a"},\n {"story": }]', "data02.json")
    assert err.reason == "invalid_json"
    assert "line 2" in str(err)


@pytest.mark.parametrize("data", [b'{"story": "a"}', b"42", b'"a story"', b"null"])
def test_shard_that_is_not_an_array_is_rejected(data: bytes) -> None:
    assert file_error(read_json_shard, data, "data04.json").reason == "not_json_array"


# --- plain text --------------------------------------------------------------


def test_text_stories_split_on_separator_lines() -> None:
    data = (
        "\n  Once there was a dog.\nIt ran.  \n<|endoftext|>\n"
        "Mia smiled. \u201cHi!\u201d\r\n  <|endoftext|>\t\r\n"
        "Last one.\n<|endoftext|>\n"
    ).encode()
    items = list(read_text_stories(data, "TinyStoriesV2-GPT4-valid.txt"))
    assert [index for index, _ in items] == [0, 1, 2, 3]
    stories = [item["story"].strip() for _, item in items[:3]]
    assert stories == ["Once there was a dog.\nIt ran.", "Mia smiled. \u201cHi!\u201d", "Last one."]
    assert isinstance(items[3][1], EmptyChunk)
    assert items[0][1]["instruction"] == {PROMPT_KEY: "", "words": [], "features": []}
    assert items[0][1]["summary"] == ""
    assert items[0][1]["source"] == "TinyStoriesV2-GPT4-valid.txt"


def test_empty_chunks_are_yielded_not_dropped() -> None:
    data = b"<|endoftext|>\nA.\n<|endoftext|>\n   \n<|endoftext|>\nB."
    items = list(read_text_stories(data, "s.txt"))
    kinds = [
        "empty" if isinstance(item, EmptyChunk) else item["story"].strip() for _, item in items
    ]
    assert kinds == ["empty", "A.", "empty", "B."]


def test_separator_inside_a_line_is_a_bad_chunk() -> None:
    items = list(read_text_stories(b"The end.<|endoftext|>\nNext.\n", "s.txt"))
    assert len(items) == 1
    assert isinstance(items[0][1], BadRecordError)
    assert items[0][1].reason == "separator_in_text"


def test_text_invalid_utf8_is_a_file_error() -> None:
    prefix = b"Good.\n<|endoftext|>\nBad "
    err = file_error(read_text_stories, prefix + b"\xc3(", "s.txt")
    assert err.reason == "invalid_utf8"
    assert f"byte offset {len(prefix)}" in str(err)


def test_utf8_check_in_small_blocks_keeps_offsets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readers, "_UTF8_BLOCK", 5)
    good = ("é" * 7 + "\u2603" * 5 + "\U0001f600" * 3).encode()
    assert len(list(read_text_stories(good, "s.txt"))) == 1
    err = file_error(read_text_stories, good + b"\x80", "s.txt")
    assert f"byte offset {len(good)}" in str(err)


def _story_text() -> st.SearchStrategy[str]:
    text = st.text(min_size=1, max_size=40).filter(lambda s: s.strip())
    return text.filter(lambda s: "<|endoftext|>" not in s and not s.startswith("\ufeff"))


@settings(max_examples=60, deadline=None)
@given(st.lists(_story_text(), min_size=1, max_size=6))
def test_text_round_trip(stories: list[str]) -> None:
    data = "".join(f"{story}\n<|endoftext|>\n" for story in stories).encode()
    items = list(read_text_stories(data, "s.txt"))
    assert [item["story"].strip() for _, item in items[:-1]] == [s.strip() for s in stories]
    assert isinstance(items[-1][1], EmptyChunk)


# --- instruct text -----------------------------------------------------------


def test_instruct_fields_in_any_order_with_summary_after_story() -> None:
    items = list(read_instruct_text(INSTRUCT.encode(), "TinyStories-Instruct-valid.txt"))
    first, second = items[0][1], items[1][1]
    assert first["story"] == (
        'Sara and Ben were playing near the old oak.\n"Let\'s quit," said Ben.\n\nThey went home.'
    )
    assert first["instruction"] == {
        PROMPT_KEY: "",
        "words": ["quit", "oak", "gloomy"],
        "features": ["Dialogue", "BadEnding"],
    }
    assert first["summary"] == "Sara and Ben play by an oak tree."
    assert second["story"] == "Tim had a kite.\nIt flew high."
    assert second["summary"] == "Tim flies a kite."
    assert second["instruction"]["words"] == ["kite", "fly", "high"]
    assert second["instruction"]["features"] == ["Twist", "MoralValue"]
    assert second["source"] == "TinyStories-Instruct-valid.txt"
    assert isinstance(items[2][1], EmptyChunk)


def test_instruct_without_story_field_has_no_story() -> None:
    items = list(read_instruct_text(b"Summary: nothing else.\n<|endoftext|>\n", "i.txt"))
    assert "story" not in items[0][1]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Summary: a\nStory: b\nSummary: c\n", "duplicate_field:Summary"),
        ("Hello there\nStory: b\n", "text_outside_field"),
    ],
)
def test_instruct_bad_chunks(text: str, reason: str) -> None:
    items = list(read_instruct_text(text.encode(), "i.txt"))
    assert isinstance(items[0][1], BadRecordError)
    assert items[0][1].reason == reason
    assert items[0][1].index == 0


# --- format detection --------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "head", "fmt"),
    [
        ("data00.json", b"[", "json"),
        ("DATA01.JSON", b"[", "json"),
        ("TinyStories-valid.txt", b"Once upon a time.\n<|endoftext|>\n", "text"),
        ("TinyStories-Instruct-valid.txt", INSTRUCT.encode(), "instruct"),
        ("mine.TXT", b"Features: Twist\nStory:\nA tale.\n", "instruct"),
    ],
)
def test_detect_format(name: str, head: bytes, fmt: str) -> None:
    assert detect_format(name, head) == fmt


def test_unsupported_file_type() -> None:
    with pytest.raises(BadRecordError) as info:
        detect_format("stories.csv", b"story\n")
    assert info.value.reason == "unsupported_format"
    assert "stories.csv" in str(info.value)


def test_read_records_dispatches_by_format() -> None:
    shard = list(read_records("data00.json", json.dumps(RECORDS).encode()))
    assert shard[1][1]["source"] == "GPT-3.5"
    instruct = list(read_records("i.txt", INSTRUCT.encode()))
    assert instruct[0][1]["summary"] == "Sara and Ben play by an oak tree."
    plain = list(read_records("p.txt", b"A dog ran.\n<|endoftext|>\n"))
    assert plain[0][1]["story"].strip() == "A dog ran."
