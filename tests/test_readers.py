"""Tests for the raw-file readers: JSON shards, plain text and TinyStoriesInstruct text.

Real excerpts (../shared/data/tinystories-real) are used as they are; Instruct files
are built from the 25 real headers and real V1 stories, V2-like files from real stories
with the V2 quirks (curly quotes, a cut first and last chunk).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backstory.data.corpus.readers import (
    EMPTY_CHUNK,
    LEADING_FRAGMENT,
    EmptyChunk,
    detect_format,
    read_json_shard,
    read_records,
    text_ranges,
)
from backstory.data.corpus.schema import PROMPT_KEY, BadRecordError
from tests.project import REAL_DATA, real_excerpt

REAL = REAL_DATA


def read_text_stories(data, name, **kwargs):
    return read_records(name, data, fmt="text", **kwargs)


def read_instruct_text(data, name, **kwargs):
    return read_records(name, data, fmt="instruct", **kwargs)


REAL_STORIES = real_excerpt("stories_100.json")
MORE_STORIES = real_excerpt("stories_50_more.json")
REAL_HEADERS = real_excerpt("instruct_headers_25.json")

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


def values(items) -> list:
    return [item.value for item in items]


def comparable(items) -> list:
    """Items as plain data (errors by their message), to compare two reads."""
    return [(i.index, str(i.value) if isinstance(i.value, Exception) else i.value, i.quirks)
            for i in items]


def file_error(call, *args) -> BadRecordError:
    """Run a reader to the end and return the file-level error it raised."""
    with pytest.raises(BadRecordError) as info:
        list(call(*args))
    assert info.value.index is None
    return info.value


def read_in_ranges(data: bytes, name: str, range_bytes: int, buffer_bytes: int) -> list:
    items = []
    for start, stop in text_ranges(len(data), range_bytes):
        items += read_records(name, data, start=start, stop=stop, buffer_bytes=buffer_bytes)
    return items


# --- JSON shards -------------------------------------------------------------


def test_json_shard_yields_each_element_in_order() -> None:
    data = json.dumps(RECORDS, ensure_ascii=False).encode("utf-8")
    items = list(read_json_shard(data, "data00.json"))
    assert [(i.index, i.value) for i in items] == [(0, RECORDS[0]), (1, RECORDS[1])]


@pytest.mark.parametrize("buffer_bytes", [1, 2, 3, 7, 64, 1 << 20])
def test_json_shard_streams_in_any_buffer_size(buffer_bytes: int) -> None:
    records = [{"story": story, "n": i, "x": 1.5e3, "ok": True, "none": None}
               for i, story in enumerate(REAL_STORIES[:20])]
    data = json.dumps(records, ensure_ascii=False, indent=1).encode()
    assert values(read_json_shard(data, "d.json", buffer_bytes=buffer_bytes)) == records
    numbers = values(read_json_shard(b"[1, 22, 333, -4.5e1]", "d.json", buffer_bytes=1))
    assert numbers == [1, 22, 333, -45.0]


def test_json_shard_read_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "data00.json"
    path.write_text(json.dumps(RECORDS))
    assert values(read_json_shard(path, "data00.json", buffer_bytes=10)) == RECORDS


def test_json_shard_accepts_a_byte_order_mark() -> None:
    data = b"\xef\xbb\xbf" + json.dumps(RECORDS).encode()
    assert len(list(read_json_shard(data, "data00.json", buffer_bytes=2))) == 2


def test_json_shard_yields_non_objects_for_validation_to_reject() -> None:
    assert values(read_json_shard(b'[1, {"story": "x"}]', "d.json")) == [1, {"story": "x"}]


def test_invalid_utf8_reports_byte_offset() -> None:
    data = b'[{"story": "ok \xff"}]'
    err = file_error(read_json_shard, data, "data07.json")
    assert err.reason == "invalid_utf8"
    assert "byte offset 15" in str(err)
    assert str(err).startswith("data07.json: ")


@pytest.mark.parametrize("buffer_bytes", [1, 5, 1 << 20])
def test_invalid_json_reports_position(buffer_bytes: int) -> None:
    data = b'[{"story": "a"},\n {"story": }]'
    err = file_error(lambda: read_json_shard(data, "data02.json", buffer_bytes=buffer_bytes))
    assert err.reason == "invalid_json"
    assert "line 2, column 12" in str(err)


@pytest.mark.parametrize("data", [b"", b"[1,]", b"[1 2]", b"[1] x", b'[{"a": 1}'])
def test_malformed_arrays_are_invalid_json(data: bytes) -> None:
    assert file_error(read_json_shard, data, "d.json").reason == "invalid_json"


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
    second = data.index(b"Mia")
    assert [item.index for item in items] == [0, second, data.index(b"Last"), len(data)]
    stories = [item.value["story"].strip() for item in items[:3]]
    assert stories == ["Once there was a dog.\nIt ran.", "Mia smiled. \u201cHi!\u201d", "Last one."]
    assert items[1].quirks == ("crlf",)  # the CRLF before the separator line
    assert items[3].value == EMPTY_CHUNK
    assert items[0].value["instruction"] == {PROMPT_KEY: "", "words": [], "features": []}
    assert items[0].value["summary"] == ""
    assert items[0].value["source"] == "TinyStoriesV2-GPT4-valid.txt"


def test_empty_chunks_are_yielded_not_dropped() -> None:
    data = b"<|endoftext|>\nA.\n<|endoftext|>\n   \n<|endoftext|>\nB."
    items = list(read_text_stories(data, "s.txt"))
    kinds = ["empty" if isinstance(i.value, EmptyChunk) else i.value["story"].strip()
             for i in items]
    assert kinds == ["empty", "A.", "empty", "B."]
    assert items[-1].quirks == ("unterminated_last_chunk",)


def test_separator_inside_a_line_is_a_bad_chunk() -> None:
    items = list(read_text_stories(b"The end.<|endoftext|>\nNext.\n", "s.txt"))
    assert len(items) == 1
    assert isinstance(items[0].value, BadRecordError)
    assert items[0].value.reason == "separator_in_text"


def test_invalid_utf8_is_a_bad_story_not_a_bad_file() -> None:
    prefix = b"Good.\n<|endoftext|>\n"
    data = prefix + b"Bad \xc3(\n<|endoftext|>\nAlso good.\n<|endoftext|>\n"
    items = list(read_text_stories(data, "s.txt"))
    assert items[0].value["story"] == "Good.\n"
    bad = items[1].value
    assert isinstance(bad, BadRecordError) and bad.reason == "invalid_utf8"
    assert f"byte offset {len(prefix) + 4}" in str(bad)
    assert str(bad).startswith(f"s.txt, record at byte {len(prefix)}: ")
    assert items[2].value["story"] == "Also good.\n"


def test_crlf_line_endings_are_normalised_and_flagged() -> None:
    data = b"Line one.\r\nLine two.\r\n<|endoftext|>\r\nUnix.\n<|endoftext|>\n"
    items = list(read_text_stories(data, "s.txt"))
    assert items[0].value["story"] == "Line one.\nLine two.\n"
    assert items[0].quirks == ("crlf",)
    assert items[1].quirks == ()


def test_byte_order_mark_is_removed_and_flagged() -> None:
    items = list(read_text_stories("\ufeffA tale.\n<|endoftext|>\n".encode(), "s.txt"))
    assert items[0].value["story"] == "A tale.\n"
    assert items[0].quirks == ("byte_order_mark",)


def _story_text() -> st.SearchStrategy[str]:
    text = st.text(min_size=1, max_size=40).filter(lambda s: s.strip())
    return text.filter(lambda s: "<|endoftext|>" not in s and not s.startswith("\ufeff"))


@settings(max_examples=60, deadline=None)
@given(st.lists(_story_text(), min_size=1, max_size=6), st.integers(1, 64))
def test_text_round_trip(stories: list[str], buffer_bytes: int) -> None:
    data = "".join(f"{story}\n<|endoftext|>\n" for story in stories).encode()
    items = list(read_text_stories(data, "s.txt", buffer_bytes=buffer_bytes))
    normalised = [s.replace("\r\n", "\n").replace("\r", "\n").strip() for s in stories]
    assert [item.value["story"].strip() for item in items[:-1]] == normalised
    assert isinstance(items[-1].value, EmptyChunk)


def curly(story: str) -> str:
    return story.replace('"', "\u201c", 1).replace('"', "\u201d", 1)


def v2_like_file(stories: list[str]) -> bytes:
    """Real stories in the V2 text layout: curly quotes, the first and last chunk cut."""
    body = "\n<|endoftext|>\n".join(curly(s) for s in stories)
    # The file opens inside a story and ends inside one (no separator after it).
    return (body[len(stories[0]) // 2 :] + "\n<|endoftext|>\n" + curly(stories[0])[:80]).encode()


def test_v2_quirks_curly_quotes_and_cut_first_and_last_chunks() -> None:
    stories = REAL_STORIES[:30]
    data = v2_like_file(stories)
    items = list(read_text_stories(data, "TinyStoriesV2-GPT4-train.txt"))
    texts = [item.value["story"] for item in items]
    assert texts[0] == curly(stories[0])[len(stories[0]) // 2 :] + "\n"
    assert texts[1:30] == [curly(s) + "\n" for s in stories[1:]]
    assert any("\u201c" in t for t in texts)
    assert texts[30] == curly(stories[0])[:80]
    assert items[30].quirks == ("unterminated_last_chunk",)
    assert all(item.quirks == () for item in items[:30])
    assert len(items) == 31


@pytest.mark.parametrize("buffer_bytes", [1, 13, 100, 4096])
@pytest.mark.parametrize("range_bytes", [61, 997, 10**9])
def test_ranges_and_small_buffers_read_the_same_records(buffer_bytes, range_bytes) -> None:
    rng = random.Random(buffer_bytes * 7 + range_bytes)
    pieces = []
    for story in REAL_STORIES[:40] + MORE_STORIES[:10]:
        pieces.append(story.replace("\n", rng.choice(["\n", "\r\n"])))
        pieces.append(rng.choice(["\n<|endoftext|>\n", "\n  <|endoftext|>\t\r\n",
                                  "<|endoftext|>", "\n<|endoftext|>", "\n\n<|endoftext|>\n\n"]))
    data = "".join(pieces).encode()
    whole = comparable(read_records("s.txt", data, buffer_bytes=1 << 24))
    assert len(whole) >= 20
    assert comparable(read_in_ranges(data, "s.txt", range_bytes, buffer_bytes)) == whole


def test_a_text_file_bigger_than_the_buffer_streams_from_disk(tmp_path: Path) -> None:
    path = tmp_path / "TinyStories-valid.txt"
    stories = (REAL_STORIES + MORE_STORIES) * 4
    path.write_text("".join(f"{s}\n<|endoftext|>\n" for s in stories))
    streamed = list(read_records(path.name, path, buffer_bytes=4096))
    whole = list(read_records(path.name, path.read_bytes(), buffer_bytes=path.stat().st_size))
    assert comparable(streamed) == comparable(whole)
    assert [i.value["story"] for i in streamed[:-1]] == [s + "\n" for s in stories]


# --- instruct text -----------------------------------------------------------


def test_instruct_fields_in_any_order_with_summary_after_story() -> None:
    items = list(read_instruct_text(INSTRUCT.encode(), "TinyStories-Instruct-valid.txt"))
    first, second = items[0].value, items[1].value
    assert first["story"] == (
        'Sara and Ben were playing near the old oak.\n"Let\'s quit," said Ben.\n\nThey went home.'
    )
    assert first["instruction"] == {
        PROMPT_KEY: "",
        "words": ["quit", "oak", "gloomy"],
        "features": ["Dialogue", "BadEnding"],
    }
    assert first["summary"] == "Sara and Ben play by an oak tree."
    assert first["random_sentence"] == "The sky was gloomy."
    assert second["story"] == "Tim had a kite.\nIt flew high."
    assert second["summary"] == "Tim flies a kite."
    assert second["random_sentence"] == "It was a big day."
    assert second["instruction"]["words"] == ["kite", "fly", "high"]
    assert second["instruction"]["features"] == ["Twist", "MoralValue"]
    assert second["source"] == "TinyStories-Instruct-valid.txt"
    assert "summary_after_story" in items[1].quirks
    assert isinstance(items[2].value, EmptyChunk)


def test_instruct_without_story_field_has_no_story() -> None:
    items = list(read_instruct_text(b"Summary: nothing else.\n<|endoftext|>\n", "i.txt"))
    assert "story" not in items[0].value


def test_duplicated_fields_nearest_the_story_wins_others_kept() -> None:
    text = ("Summary: first\nWords: a, b\nSummary: second\nStory: The tale.\n"
            "Summary: third\n<|endoftext|>\n")
    item = next(iter(read_instruct_text(text.encode(), "i.txt")))
    # "second" (just before the story) and "third" (just after) tie: the header one wins.
    assert item.value["summary"] == "second"
    assert item.value["extra_fields"] == ["Summary: first", "Summary: third"]
    assert item.value["story"] == "The tale."
    assert "duplicate:Summary" in item.quirks and "summary_after_story" not in item.quirks


def test_text_outside_fields_is_a_bad_record_except_at_the_file_start() -> None:
    data = b"the end of a cut story.\n<|endoftext|>\nHello there\nStory: b\n<|endoftext|>\n"
    items = list(read_instruct_text(data, "i.txt"))
    assert items[0].value == LEADING_FRAGMENT
    bad = items[1].value
    assert isinstance(bad, BadRecordError) and bad.reason == "text_outside_field"
    assert bad.index == data.index(b"Hello")
    mixed = list(read_instruct_text(b"tail of a story.\nSummary: s\nStory: t\n", "i.txt"))
    assert mixed[0].value["story"] == "t" and "leading_fragment" in mixed[0].quirks


def real_instruct_file(headers: list[str], stories: list[str]) -> str:
    return "".join(f"{h}{s}\n<|endoftext|>\n" for h, s in zip(headers, stories, strict=True))


def test_real_instruct_headers_are_all_read() -> None:
    stories = REAL_STORIES[: len(REAL_HEADERS)]
    data = real_instruct_file(REAL_HEADERS, stories).encode()
    items = list(read_instruct_text(data, "TinyStories-Instruct-valid.txt"))[:-1]
    assert len(items) == 25
    assert not any(isinstance(item.value, BadRecordError) for item in items)
    for header, story, item in zip(REAL_HEADERS, stories, items, strict=True):
        record = item.value
        assert record["story"] == story.strip()
        summaries = [line[len("Summary: "):] for line in header.split("\n")
                     if line.startswith("Summary:")]
        if len(summaries) == 2:
            # Both come before the story: the later one is nearest to it.
            assert record["summary"] == summaries[1]
            assert record["extra_fields"] == [f"Summary: {summaries[0]}"]
            assert "duplicate:Summary" in item.quirks
        else:
            assert record["summary"] == (summaries[0] if summaries else "")
            assert record["extra_fields"] == []
        random_lines = [line for line in header.split("\n") if line.startswith("Random sentence:")]
        assert record["random_sentence"] == (random_lines[0][17:].strip() if random_lines else "")
    counts = {quirk: sum(quirk in item.quirks for item in items)
              for quirk in ("duplicate:Summary", "random_sentence", "no_summary", "no_words")}
    assert counts == {"duplicate:Summary": 5, "random_sentence": 8, "no_summary": 4,
                      "no_words": 3}


def test_real_instruct_summary_after_the_story() -> None:
    headers = [h for h in REAL_HEADERS if h.count("Summary:") == 1][:6]
    records = []
    for header, story in zip(headers, REAL_STORIES, strict=False):
        lines = header.rstrip().split("\n")
        summary = next(line for line in lines if line.startswith("Summary:"))
        moved = "\n".join(line for line in lines if line != summary)
        records.append(f"{moved}\n{story}\n{summary}\n<|endoftext|>\n")
    items = list(read_instruct_text("".join(records).encode(), "i.txt"))[:-1]
    assert all("summary_after_story" in item.quirks for item in items)
    for header, story, item in zip(headers, REAL_STORIES, items, strict=False):
        assert item.value["story"] == story.strip()
        assert f"Summary: {item.value['summary']}" in header


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
    assert shard[1].value["source"] == "GPT-3.5"
    instruct = list(read_records("i.txt", INSTRUCT.encode()))
    assert instruct[0].value["summary"] == "Sara and Ben play by an oak tree."
    plain = list(read_records("p.txt", b"A dog ran.\n<|endoftext|>\n"))
    assert plain[0].value["story"].strip() == "A dog ran."
    with pytest.raises(ValueError, match="read whole"):
        read_records("data00.json", b"[]", start=5)


def test_generated_shard_of_the_real_shape(tmp_path: Path) -> None:
    """A 2,000-record shard with the real keys and leading blank lines, read in 64 kB steps."""
    rng = random.Random(3)
    records = [{"story": "\n\n" + rng.choice(REAL_STORIES),
                "instruction": {PROMPT_KEY: "Write a short story.", "words": ["a", "b", "c"],
                                "features": rng.sample(["Dialogue", "Twist", "BadEnding"], 1)},
                "summary": "A summary.", "source": rng.choice(["GPT-4", "GPT-3.5"])}
               for _ in range(2000)]
    path = tmp_path / "data00.json"
    path.write_text(json.dumps(records))
    assert path.stat().st_size > 1 << 20
    assert values(read_records(path.name, path, buffer_bytes=1 << 16)) == records
