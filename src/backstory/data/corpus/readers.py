"""Stream the records of one raw corpus file, in bounded memory.

Three formats (see ../shared/reference/tinystories-format.md and docs/architecture.md):

- ``json``: a JSON shard, ONE array of records (``data00.json``).
- ``text``: plain stories separated by a line holding ``<|endoftext|>``.
- ``instruct``: TinyStoriesInstruct text, the same separator, each chunk made of
  field lines (``Features:``, ``Words:``, ``Summary:``, ``Random sentence:``,
  ``Story:``).

Every reader yields ``RawItem`` objects in file order. ``item.value`` is one of:

- a raw record object (for JSON, whatever the array holds; for text, a dict in
  the record schema), still to be checked by ``schema.validate_record``;
- a ``BadRecordError`` for a chunk that cannot be parsed into a record (the
  caller decides whether to raise it or count it);
- ``EMPTY_CHUNK`` for a text chunk holding only whitespace (for instance after
  the final separator), or ``LEADING_FRAGMENT`` for an Instruct file's first chunk
  when it is only the tail of a record cut off before the file starts: not
  records, yielded so they can be counted.

``item.quirks`` names what was unusual but handled (see QUIRKS).

Where a record is: for JSON, ``item.index`` is the position in the array; for text, it
is the byte offset where the record's chunk starts in the file. Offsets let a text file
be read as independent byte ranges (``text_ranges``) by several processes with the same
result as one pass: a record belongs to the range holding the start of the separator
line before it (the first record to range 0), and a range reader reads on past its end
to finish its last record.

Memory: the JSON reader decodes one element at a time from a fixed-size buffer; the
text readers hold one buffer plus the record being read. Neither holds the file.
Errors that concern the whole file (a JSON syntax error, a top-level value that is not
an array, invalid UTF-8 in a JSON shard) raise ``BadRecordError`` with ``index=None``
when they are met, possibly after earlier records were yielded. In text files invalid
UTF-8 is a bad record (the chunk that holds it), not a file error.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from backstory.data.corpus.schema import PROMPT_KEY, BadRecordError, normalize_line_endings

SEPARATOR = "<|endoftext|>"
FORMATS = ("json", "text", "instruct")
DEFAULT_BUFFER_BYTES = 1 << 22  # 4 MiB read at a time

# Quirks a reader reports per item (clean counts them in the ingest report):
QUIRKS = {
    "byte_order_mark": "the file starts with a UTF-8 byte order mark (removed)",
    "crlf": "CR or CRLF line endings inside the record (turned into LF)",
    "unterminated_last_chunk": "the file's last story has no separator after it (kept)",
    "leading_fragment": "text before the first field line of an Instruct file (dropped)",
    "random_sentence": "an Instruct record with a Random sentence: field (kept)",
    "no_summary": "an Instruct record without a Summary: field",
    "no_words": "an Instruct record without a Words: field",
    "no_features": "an Instruct record without a Features: field",
    "summary_after_story": "an Instruct record whose Summary: comes after the story",
    "duplicate:<field>": "an Instruct field given twice (nearest the story wins)",
}

_MARKER = SEPARATOR.encode()
_SPACE, _TAB, _LF, _CR = 0x20, 0x09, 0x0A, 0x0D
_INSTRUCT_FIELDS = ("Features", "Words", "Summary", "Random sentence", "Story")
_FIELD_LINE = re.compile("(" + "|".join(_INSTRUCT_FIELDS) + "):(.*)")
_STORY_FIELD_IN_HEAD = re.compile(r"^Story:", re.MULTILINE)
_HEAD_BYTES = 1 << 16  # enough to see several instruct records
_JSON_WHITESPACE = re.compile(r"[ \t\n\r]*")
# A decode error this close to the end of the buffered text may only mean "more text
# needed" (a cut literal, escape or number), so the reader reads on before judging.
_KIND_PROBE = 1 << 16  # characters read to tell a bad value from a good non-array
_JSON_TAIL = 16


@dataclass(frozen=True)
class EmptyChunk:
    """A text chunk that is not a record (see the module docstring); counted by kind."""

    kind: str = "empty_chunk"


EMPTY_CHUNK = EmptyChunk("empty_chunk")
LEADING_FRAGMENT = EmptyChunk("leading_fragment")


@dataclass(frozen=True)
class RawItem:
    """One item a reader yields: where it is, what it is, and what was unusual about it."""

    index: int
    value: Any
    quirks: tuple[str, ...] = ()


Source = bytes | bytearray | memoryview | str | os.PathLike | BinaryIO


@contextlib.contextmanager
def open_source(source: Source) -> Iterator[BinaryIO]:
    """A binary handle on ``source``: bytes in memory, a path, or an open binary file."""
    if isinstance(source, bytes | bytearray | memoryview):
        yield io.BytesIO(bytes(source))
    elif isinstance(source, str | os.PathLike):
        with open(source, "rb") as handle:
            yield handle
    else:
        yield source


def read_head(source: Source) -> bytes:
    """The first bytes of ``source`` (what ``detect_format`` looks at)."""
    with open_source(source) as handle:
        handle.seek(0)
        return handle.read(_HEAD_BYTES)


def detect_format(name: str, data_head: bytes) -> str:
    """Return ``"json"``, ``"text"`` or ``"instruct"`` for a file name and its first bytes.

    ``.json`` files are shards; ``.txt`` files are instruct text when a line
    starts with ``Story:`` in the head, plain stories otherwise. Suffixes match in
    any case (``DATA00.JSON``).
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


def text_ranges(size: int, range_bytes: int) -> list[tuple[int, int | None]]:
    """Byte ranges ``[(0, R), (R, 2R), ..., (kR, None)]`` that cover a file of ``size``."""
    if range_bytes < 1:
        raise ValueError(f"range_bytes must be >= 1, got {range_bytes}")
    count = max(1, -(-size // range_bytes))
    return [(k * range_bytes, None if k == count - 1 else (k + 1) * range_bytes)
            for k in range(count)]


def read_records(
    name: str,
    source: Source,
    *,
    fmt: str | None = None,
    start: int = 0,
    stop: int | None = None,
    buffer_bytes: int = DEFAULT_BUFFER_BYTES,
) -> Iterator[RawItem]:
    """Read one raw file (or, for text, the byte range [start, stop) of it)."""
    fmt = fmt or detect_format(name, read_head(source))
    if fmt == "json":
        if start or stop is not None:
            raise ValueError(f"{name}: a JSON shard is read whole; it has no byte ranges")
        return read_json_shard(source, name, buffer_bytes=buffer_bytes)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    return _read_text(source, name, fmt == "instruct", start, stop, buffer_bytes)


# ------------------------------------------------------------------------- JSON


def read_json_shard(
    source: Source, name: str, *, buffer_bytes: int = DEFAULT_BUFFER_BYTES
) -> Iterator[RawItem]:
    """Yield each element of a shard's top-level JSON array, decoded one at a time."""
    if buffer_bytes < 1:
        raise ValueError(f"buffer_bytes must be >= 1, got {buffer_bytes}")
    with open_source(source) as handle:
        yield from _JsonArray(handle, name, buffer_bytes).items()


class _JsonArray:
    """Incremental decoder of one JSON array: a text buffer refilled block by block."""

    def __init__(self, handle: BinaryIO, source: str, block: int) -> None:
        self.handle = handle
        self.source = source
        self.block = block
        self.decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self.scan = json.JSONDecoder().raw_decode
        self.text = ""
        self.pos = 0
        self.eof = False
        self.started = False
        self.bytes_read = 0
        self.line = 1  # line number of text[0]
        self.column = 0  # characters before text[0] on its line

    def items(self) -> Iterator[RawItem]:
        self._skip_whitespace()
        if self._peek() != "[":
            raise self._not_an_array()
        self.pos += 1
        self._skip_whitespace()
        if self._peek() == "]":
            self.pos += 1
            self._expect_end()
            return
        index = 0
        while True:
            value = self._value()
            yield RawItem(index, value)
            index += 1
            self._skip_whitespace()
            mark = self._peek()
            if mark == ",":
                self.pos += 1
                self._skip_whitespace()
            elif mark == "]":
                self.pos += 1
                self._expect_end()
                return
            else:
                raise self._syntax_error("Expecting ',' delimiter", self.pos)

    def _value(self) -> Any:
        while True:
            try:
                value, end = self.scan(self.text, self.pos)
            except json.JSONDecodeError as err:
                cut_short = err.msg.startswith("Unterminated string") or (
                    err.pos >= len(self.text) - _JSON_TAIL
                )
                if cut_short and self._fill():
                    continue
                raise self._syntax_error(err.msg, err.pos) from None
            # A number near the end of the buffer ("1." of "1.5e3") may go on in the next
            # block: decode again with more text.
            if end > len(self.text) - _JSON_TAIL and self._fill():
                continue
            self.pos = end
            return value

    def _fill(self) -> bool:
        """Append the next block of decoded text; False once the file is exhausted."""
        if self.eof:
            return False
        data = self.handle.read(self.block)
        pending = len(self.decoder.getstate()[0])
        try:
            chunk = self.decoder.decode(data, final=not data)
        except UnicodeDecodeError as err:
            offset = self.bytes_read - pending + err.start
            raise BadRecordError(
                self.source, None, "invalid_utf8",
                f"invalid UTF-8 at byte offset {offset} ({err.reason})",
            ) from None
        self.bytes_read += len(data)
        self.eof = not data
        if not self.started and (chunk or self.eof):
            self.started = True
            if chunk.startswith("\ufeff"):  # a byte order mark is legal here; JSON refuses it
                chunk = chunk[1:]
        self._drop_consumed()
        self.text += chunk
        return True

    def _drop_consumed(self) -> None:
        if not self.pos:
            return
        consumed = self.text[: self.pos]
        newlines = consumed.count("\n")
        if newlines:
            self.line += newlines
            self.column = len(consumed) - consumed.rfind("\n") - 1
        else:
            self.column += len(consumed)
        self.text = self.text[self.pos :]
        self.pos = 0

    def _peek(self) -> str:
        while self.pos >= len(self.text):
            if not self._fill():
                return ""
        return self.text[self.pos]

    def _skip_whitespace(self) -> None:
        while True:
            self.pos = _JSON_WHITESPACE.match(self.text, self.pos).end()
            if self.pos < len(self.text) or not self._fill():
                return

    def _expect_end(self) -> None:
        self._skip_whitespace()
        if self._peek():
            raise self._syntax_error("Extra data", self.pos)

    def _not_an_array(self) -> BadRecordError:
        first = self._peek()
        kinds = {"{": "object", '"': "string", "t": "true", "f": "false", "n": "null"}
        kind = kinds.get(first, "number" if first[:1] in "-0123456789" and first else None)
        if kind is None:
            return self._syntax_error("Expecting value", self.pos)
        # Name the value only if it is one: "{ this is not json" is a syntax error.
        while len(self.text) - self.pos < _KIND_PROBE and self._fill():
            pass
        try:
            self.scan(self.text, self.pos)
        except json.JSONDecodeError as err:
            if self.eof or err.pos < len(self.text) - _JSON_TAIL:
                return self._syntax_error(err.msg, err.pos)
        return BadRecordError(self.source, None, "not_json_array",
                              f"a shard must be one JSON array, got a JSON {kind}")

    def _syntax_error(self, message: str, position: int) -> BadRecordError:
        newlines = self.text.count("\n", 0, position)
        if newlines:
            line = self.line + newlines
            column = position - self.text.rfind("\n", 0, position)
        else:
            line, column = self.line, self.column + position + 1
        return BadRecordError(
            self.source, None, "invalid_json",
            f"invalid JSON at line {line}, column {column}: {message}",
        )


# ------------------------------------------------------------------------- text


def _read_text(
    source: Source, name: str, instruct: bool, start: int, stop: int | None, block: int
) -> Iterator[RawItem]:
    if block < 1:
        raise ValueError(f"buffer_bytes must be >= 1, got {block}")
    if start < 0 or (stop is not None and stop <= start):
        raise ValueError(f"{name}: bad byte range [{start}, {stop})")
    with open_source(source) as handle:
        for offset, raw, terminated in _text_chunks(handle, start, stop, block):
            yield _text_item(name, offset, raw, terminated, instruct)


def _text_chunks(
    handle: BinaryIO, start: int, stop: int | None, block: int
) -> Iterator[tuple[int, bytes, bool]]:
    """(offset, bytes, ended by a separator) of each chunk that belongs to [start, stop).

    ``buf`` holds the file from ``base`` on, and ``base`` is always the start of a line,
    so a separator line found in ``buf`` can be checked without earlier bytes.
    """
    if start == 0:
        handle.seek(0)
        base, buf = 0, b""
        chunk_start: int | None = 0  # the first record belongs to range 0
    else:
        handle.seek(start - 1)
        base, buf = _first_line_start(handle, start - 1, block)
        if base is None:
            return
        chunk_start = None  # what precedes our first separator belongs to the range before
    eof = False
    search = 0
    while True:
        found = buf.find(_MARKER, search)
        separator = None if found < 0 else _separator_line(buf, found, eof)
        if found < 0 or separator == "more":
            if eof:
                break
            keep = chunk_start - base if chunk_start is not None else _last_line_start(buf)
            search = max(0, len(buf) - len(_MARKER) + 1) if found < 0 else found
            data = handle.read(block)
            eof = not data
            buf = buf[keep:] + data
            base += keep
            search = max(0, search - keep)
            continue
        if separator is None:  # the marker is inside a line: part of a (bad) chunk
            search = found + 1
            continue
        line_start, line_end = separator
        if chunk_start is not None:
            yield chunk_start, buf[chunk_start - base : line_start], True
        if stop is not None and base + line_start >= stop:
            return  # this separator opens the next range's first record
        chunk_start = base + line_end
        search = line_end
    if chunk_start is not None:
        yield chunk_start, buf[chunk_start - base :], False


def _first_line_start(handle: BinaryIO, position: int, block: int) -> tuple[int | None, bytes]:
    """The first line start after ``position`` (where the handle is) and the bytes from it."""
    while True:
        data = handle.read(block)
        if not data:
            return None, b""
        newline = data.find(b"\n")
        if newline >= 0:
            return position + newline + 1, data[newline + 1 :]
        position += len(data)


def _last_line_start(buf: bytes) -> int:
    """Index just after the last newline in ``buf`` (0 if none): a safe place to cut."""
    return buf.rfind(b"\n") + 1


def _separator_line(buf: bytes, found: int, eof: bool) -> tuple[int, int] | str | None:
    """(line start, line end) if the marker at ``found`` is on a line of its own.

    Spaces and tabs may surround the marker and a CR may precede the LF. Returns
    ``"more"`` when the buffer ends before the line does, None when the line holds
    other text.
    """
    end = found + len(_MARKER)
    size = len(buf)
    while end < size and buf[end] in (_SPACE, _TAB):
        end += 1
    if end == size:
        if not eof:
            return "more"
    elif buf[end] == _LF:
        end += 1
    elif buf[end] == _CR:
        if end + 1 == size and not eof:
            return "more"
        if end + 1 < size and buf[end + 1] != _LF:
            return None
        end = min(end + 2, size)
    else:
        return None
    start = found - 1
    while start >= 0 and buf[start] in (_SPACE, _TAB):
        start -= 1
    if start >= 0 and buf[start] != _LF:
        return None
    return start + 1, end


def _text_item(name: str, offset: int, raw: bytes, terminated: bool, instruct: bool) -> RawItem:
    """Decode one chunk and turn it into a record, a bad record or a non-record."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        bad = BadRecordError(
            name, offset, "invalid_utf8",
            f"invalid UTF-8 at byte offset {offset + err.start} ({err.reason})", at_byte=True,
        )
        return RawItem(offset, bad)
    quirks: list[str] = []
    if offset == 0 and text.startswith("\ufeff"):
        text = text[1:]
        quirks.append("byte_order_mark")
    if "\r" in text:
        text = normalize_line_endings(text)
        quirks.append("crlf")
    if not text.strip():
        return RawItem(offset, EMPTY_CHUNK, tuple(quirks))
    if SEPARATOR in text:
        bad = BadRecordError(
            name, offset, "separator_in_text",
            f"'{SEPARATOR}' appears inside a line instead of on a line of its own", at_byte=True,
        )
        return RawItem(offset, bad, tuple(quirks))
    if not terminated:
        quirks.append("unterminated_last_chunk")
    if not instruct:
        return RawItem(offset, _story_record(text, name), tuple(quirks))
    value = _instruct_record(text, name, offset, quirks)
    return RawItem(offset, value, tuple(quirks))


def _story_record(text: str, source: str) -> dict[str, Any]:
    return {
        "story": text,
        "instruction": {PROMPT_KEY: "", "words": [], "features": []},
        "summary": "",
        "source": source,
    }


def _instruct_record(
    text: str, source: str, offset: int, quirks: list[str]
) -> dict[str, Any] | BadRecordError | EmptyChunk:
    """One chunk of TinyStoriesInstruct text as a raw record.

    Field lines start with ``Features:``, ``Words:``, ``Summary:``, ``Random sentence:``
    or ``Story:``; a field's value runs from after the colon to the next field line (or
    the end of the chunk), so ``Story:`` takes the lines that follow it and a
    ``Summary:`` after the story ends the story. ``Words:`` is split on commas,
    ``Features:`` on commas and whitespace. The prompt is left empty: the instruct
    text holds none, prompts are synthesized downstream.

    The real files' quirks, none of them a rejected record (each is counted):
    fields come in any order; ``Random sentence:`` is kept (``random_sentence``);
    Summary, Words or Features may be missing (empty values). A field given more than
    once: the occurrence nearest the ``Story:`` field wins (counted in fields, a tie
    goes to the one before the story) and the others are kept, in file order, as
    ``"Name: value"`` strings in ``extra_fields``; for ``Story:`` itself the first
    wins. Text before the first field line is the cut-off tail of an earlier record
    when it opens the file (dropped and counted, ``leading_fragment``) and a bad
    record (``text_outside_field``) anywhere else.
    """
    fields: list[tuple[str, list[str]]] = []
    leading = False
    for line in text.split("\n"):  # not splitlines(): stories may hold form feeds etc.
        match = _FIELD_LINE.match(line)
        if match:
            fields.append((match.group(1), [match.group(2)]))
        elif fields:
            fields[-1][1].append(line)
        elif line.strip():
            if offset != 0:
                return BadRecordError(
                    source, offset, "text_outside_field",
                    f"text before the first field line: {line.strip()[:60]!r}", at_byte=True,
                )
            leading = True
    if leading:
        if not fields:
            return LEADING_FRAGMENT
        quirks.append("leading_fragment")
    values = [(name, "\n".join(lines).strip()) for name, lines in fields]
    chosen, extra = _resolve_fields(values, quirks)
    record: dict[str, Any] = {
        "instruction": {
            PROMPT_KEY: "",
            "words": _split_words(chosen.get("Words", "")),
            "features": _split_features(chosen.get("Features", "")),
        },
        "summary": chosen.get("Summary", ""),
        "source": source,
        "random_sentence": chosen.get("Random sentence", ""),
        "extra_fields": extra,
    }
    if "Story" in chosen:
        # A chunk without a Story field stays without one: validation reports it as missing.
        record["story"] = chosen["Story"]
    return record


def _resolve_fields(
    values: list[tuple[str, str]], quirks: list[str]
) -> tuple[dict[str, str], list[str]]:
    """Pick one value per field name (nearest the story wins); the rest, as extra fields."""
    positions: dict[str, list[int]] = {}
    for position, (name, _) in enumerate(values):
        positions.setdefault(name, []).append(position)
    story = positions.get("Story", [None])[0]
    chosen: dict[str, str] = {}
    losers: list[int] = []
    for name, where in positions.items():
        if len(where) > 1:
            quirks.append(f"duplicate:{name}")
        if name == "Story" or story is None:
            winner = where[0]
        else:
            # Nearest the story in field order; on a tie the header field (before it) wins.
            winner = min(where, key=lambda p: (abs(p - story), p > story))
        chosen[name] = values[winner][1]
        losers.extend(p for p in where if p != winner)
        if name == "Summary" and story is not None and winner > story:
            quirks.append("summary_after_story")
    for name, quirk in (("Summary", "no_summary"), ("Words", "no_words"),
                        ("Features", "no_features")):
        if not chosen.get(name):
            quirks.append(quirk)
    if chosen.get("Random sentence"):
        quirks.append("random_sentence")
    extra = [f"{values[p][0]}: {values[p][1]}" for p in sorted(losers)]
    return chosen, extra


def _split_words(value: str) -> list[str]:
    return [word.strip() for word in value.split(",") if word.strip()]


def _split_features(value: str) -> list[str]:
    return [feature for feature in re.split(r"[,\s]+", value) if feature]
