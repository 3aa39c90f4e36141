"""Parse the raw bytes of one corpus file into raw records.

Three formats (see docs/architecture.md and the TinyStories format notes):

- ``json``: a JSON shard, ONE array of records (``data00.json``).
- ``text``: plain stories separated by a line holding ``<|endoftext|>``.
- ``instruct``: TinyStoriesInstruct text, the same separator, each chunk made of
  field lines (``Features:``, ``Words:``, ``Summary:``, ``Random sentence:``,
  ``Story:``).

Every reader yields ``(index, item)`` pairs, in file order, where ``item`` is
one of:

- a raw record object (for JSON, whatever the array holds; for text, a dict in
  the record schema), still to be checked by ``schema.validate_record``;
- a ``BadRecordError`` for a chunk that cannot be parsed into a record (the
  caller decides whether to raise it or count it);
- an ``EmptyChunk`` for a text chunk holding only whitespace (for instance
  after the final separator): not a record, yielded so it can be counted.

For text formats ``index`` is the chunk number in the file (empty chunks
included), so it locates the chunk. Problems with the whole file (invalid
UTF-8, invalid JSON, not an array, unknown file type) raise BadRecordError
with ``index=None`` before any item is yielded.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from backstory.data.corpus.schema import PROMPT_KEY, BadRecordError

SEPARATOR = "<|endoftext|>"
FORMATS = ("json", "text", "instruct")

# A separator line may carry spaces or tabs around the marker (and a CR before its LF).
_SEPARATOR_LINE = re.compile(rb"^[ \t]*<\|endoftext\|>[ \t]*\r?(?:\n|\Z)", re.MULTILINE)
_INSTRUCT_FIELDS = ("Features", "Words", "Summary", "Random sentence", "Story")
_FIELD_LINE = re.compile("(" + "|".join(_INSTRUCT_FIELDS) + "):(.*)")
_STORY_FIELD_IN_HEAD = re.compile(r"^Story:", re.MULTILINE)
_HEAD_BYTES = 1 << 16  # enough to see several instruct records
_UTF8_BLOCK = 1 << 24  # validate big text files in 16 MiB blocks, not one full copy


@dataclass(frozen=True)
class EmptyChunk:
    """A text chunk with nothing but whitespace: not a record, but counted by the caller."""


EMPTY_CHUNK = EmptyChunk()

Item = Any  # a raw record object, a BadRecordError or an EmptyChunk (see module docstring)


def detect_format(name: str, data_head: bytes) -> str:
    """Return ``"json"``, ``"text"`` or ``"instruct"`` for a file name and its first bytes.

    ``.json`` files are shards; ``.txt`` files are instruct text when a line
    starts with ``Story:`` in the head, plain stories otherwise.
    """
    lowered = name.lower()
    if lowered.endswith(".json"):
        return "json"
    if lowered.endswith(".txt"):
        head = bytes(data_head[:_HEAD_BYTES]).decode("utf-8", errors="replace")
        return "instruct" if _STORY_FIELD_IN_HEAD.search(head) else "text"
    raise BadRecordError(
        name, None, "unsupported_format", "unsupported file type: expected a .json or .txt file"
    )


def read_records(name: str, data: bytes) -> Iterator[tuple[int, Item]]:
    """Read one raw file, choosing the reader by ``detect_format``."""
    fmt = detect_format(name, data[:_HEAD_BYTES])
    if fmt == "json":
        return read_json_shard(data, name)
    if fmt == "instruct":
        return read_instruct_text(data, name)
    return read_text_stories(data, name)


def read_json_shard(data: bytes, source: str) -> Iterator[tuple[int, Item]]:
    """Yield ``(index, object)`` for each element of a shard's top-level JSON array.

    The file is decoded and parsed before the first item is yielded, so a bad
    file raises before any record is produced.
    """
    items = _parse_json_array(data, source)
    return _drain(items)


def read_text_stories(data: bytes, source: str) -> Iterator[tuple[int, Item]]:
    """Yield one raw record per ``<|endoftext|>``-separated chunk of a plain-text file."""
    _check_utf8(data, source)
    return _text_items(data, source, _story_record)


def read_instruct_text(data: bytes, source: str) -> Iterator[tuple[int, Item]]:
    """Yield one raw record per chunk of TinyStoriesInstruct text.

    Field values run from after the colon to the next field line (or the end
    of the chunk), so ``Story:`` takes the lines that follow it and a
    ``Summary:`` after the story ends the story. ``Words:`` is split on commas,
    ``Features:`` on commas and whitespace. The prompt is left empty: the
    instruct text holds no prompt, and prompts are synthesized downstream from
    the summary. ``Random sentence:`` is parsed but the schema has no field for
    it, so it is not kept.
    """
    _check_utf8(data, source)
    return _text_items(data, source, _instruct_record)


def _parse_json_array(data: bytes, source: str) -> list[Any]:
    text = _decode_utf8(data, source)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise BadRecordError(
            source,
            None,
            "invalid_json",
            f"invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}",
        ) from None
    if not isinstance(value, list):
        kind = "object" if isinstance(value, dict) else type(value).__name__
        raise BadRecordError(
            source, None, "not_json_array", f"a shard must be one JSON array, got a JSON {kind}"
        )
    return value


def _drain(items: list[Any]) -> Iterator[tuple[int, Item]]:
    for index in range(len(items)):
        item = items[index]
        # Let the parsed object go once handed out, so a shard is not held twice.
        items[index] = None
        yield index, item


def _decode_utf8(data: bytes, source: str) -> str:
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as err:
        raise _utf8_error(source, err.start, err.reason) from None
    # A UTF-8 byte order mark is legal at the start; json.loads refuses it.
    return text[1:] if text.startswith("\ufeff") else text


def _check_utf8(data: bytes, source: str) -> None:
    """Validate UTF-8 block by block, without holding a decoded copy of the file."""
    view = memoryview(data)
    start = 0
    while start < len(view):
        end = _char_boundary(view, min(start + _UTF8_BLOCK, len(view)))
        try:
            codecs.utf_8_decode(view[start:end], "strict", True)
        except UnicodeDecodeError as err:
            raise _utf8_error(source, start + err.start, err.reason) from None
        start = end


def _char_boundary(view: memoryview, end: int) -> int:
    """Move ``end`` back (at most 3 bytes) so it does not split a UTF-8 sequence."""
    for back in range(4):
        position = end - back
        if position >= len(view) or position <= 0 or view[position] & 0xC0 != 0x80:
            return position
    return end  # four continuation bytes in a row: invalid anyway, the decoder reports it


def _utf8_error(source: str, offset: int, reason: str) -> BadRecordError:
    return BadRecordError(
        source, None, "invalid_utf8", f"invalid UTF-8 at byte offset {offset} ({reason})"
    )


MakeRecord = Callable[[str, str, int], Item]


def _text_items(data: bytes, source: str, make_record: MakeRecord) -> Iterator[tuple[int, Item]]:
    for index, chunk in _chunks(data):
        # Chunks end at ASCII separator lines, so each decodes on its own; the
        # first may open with a byte order mark, which is not story text.
        text = chunk.decode("utf-8-sig" if index == 0 else "utf-8")
        if not text.strip():
            yield index, EMPTY_CHUNK
        elif SEPARATOR in text:
            yield (
                index,
                BadRecordError(
                    source,
                    index,
                    "separator_in_text",
                    f"'{SEPARATOR}' appears inside a line instead of on a line of its own",
                ),
            )
        else:
            yield index, make_record(text, source, index)


def _chunks(data: bytes) -> Iterator[tuple[int, bytes]]:
    """Split on separator lines lazily, so only one chunk is copied at a time."""
    start = 0
    index = 0
    for match in _SEPARATOR_LINE.finditer(data):
        yield index, bytes(data[start : match.start()])
        start = match.end()
        index += 1
    yield index, bytes(data[start:])


def _story_record(text: str, source: str, index: int) -> dict[str, Any]:
    return {
        "story": text,
        "instruction": {PROMPT_KEY: "", "words": [], "features": []},
        "summary": "",
        "source": source,
    }


def _instruct_record(text: str, source: str, index: int) -> dict[str, Any] | BadRecordError:
    fields = _instruct_fields(text, source, index)
    if isinstance(fields, BadRecordError):
        return fields
    record: dict[str, Any] = {
        "instruction": {
            PROMPT_KEY: "",
            "words": _split_words(fields.get("Words", "")),
            "features": _split_features(fields.get("Features", "")),
        },
        "summary": fields.get("Summary", ""),
        "source": source,
    }
    if "Story" in fields:
        # A chunk without a Story field stays without one: validation reports it as missing.
        record["story"] = fields["Story"]
    return record


def _instruct_fields(text: str, source: str, index: int) -> dict[str, str] | BadRecordError:
    """Collect each field's lines: a field runs until the next field line."""
    lines_of: dict[str, list[str]] = {}
    current: str | None = None
    for line in text.split("\n"):  # not splitlines(): stories may hold form feeds etc.
        match = _FIELD_LINE.match(line)
        if match:
            current = match.group(1)
            if current in lines_of:
                return BadRecordError(
                    source, index, f"duplicate_field:{current}", f"field '{current}:' appears twice"
                )
            lines_of[current] = [match.group(2)]
        elif current is not None:
            lines_of[current].append(line)
        elif line.strip():
            return BadRecordError(
                source,
                index,
                "text_outside_field",
                f"text before the first field line: {line.strip()[:60]!r}",
            )
    return {name: "\n".join(lines).strip() for name, lines in lines_of.items()}


def _split_words(value: str) -> list[str]:
    return [word.strip() for word in value.split(",") if word.strip()]


def _split_features(value: str) -> list[str]:
    return [feature for feature in re.split(r"[,\s]+", value) if feature]
