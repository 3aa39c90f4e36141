"""The TinyStories record schema and its validation.

A record is a dict in the ``TinyStories_all_data`` schema (docs/architecture.md,
"Records"), plus ``random_sentence`` and ``extra_fields``, which only
TinyStoriesInstruct text carries, and ``source_bits``, which only storyworld writes.

Required vs optional, chosen so that the three kinds of input (JSON shards,
plain ``<|endoftext|>`` text, TinyStoriesInstruct text) all validate:

- ``story`` is required: a string that is not empty after stripping. It is the
  only field every input has, and the only one a model trains on.
- ``instruction`` is optional (default: empty prompt, words and features);
  inside it ``"prompt:"`` (spelled with the colon, as in the real data),
  ``words`` and ``features`` are each optional with an empty default.
- ``summary`` and ``random_sentence`` are optional (default ``""``).
- ``extra_fields`` is optional (default ``[]``).
- ``source_bits`` is optional (default ``None``): a finite number >= 0 that only
  storyworld writes (records it generated before it wrote them, and real data, have
  none). It is the bits of the draws that made the story; the floor is built from it.
- ``source`` is optional (default: the name of the file the record came from,
  which is what plain-text records carry).

A JSON ``null`` in an optional field counts as absent; a ``null`` story counts
as missing. Any other value of the wrong type is an error. Keys outside the
schema are ignored: the stories table has a fixed set of columns.
"""

from __future__ import annotations

import math
from typing import Any

from backstory.core.errors import UserError

PROMPT_KEY = "prompt:"  # the real data spells the key with a trailing colon


class BadRecordError(UserError, ValueError):
    """A record (or a whole file, when ``index`` is None) that does not fit the schema.

    ``reason`` is a short stable code (e.g. ``"missing_story"``,
    ``"wrong_type:summary"``, ``"invalid_utf8"``) that reports count by.
    """

    def __init__(
        self, source: str, index: int | None, reason: str, detail: str, *, at_byte: bool = False
    ) -> None:
        self.source = source
        self.index = index
        self.reason = reason
        self.detail = detail
        # Text records are located by the byte offset where they start (see readers).
        self.at_byte = at_byte
        if index is None:
            where = source
        elif at_byte:
            where = f"{source}, record at byte {index}"
        else:
            where = f"{source}, record {index}"
        super().__init__(f"{where}: {detail}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuild from the fields, so the error survives pickling across processes.
        return (_rebuild_error, (type(self), self.source, self.index, self.reason, self.detail,
                                 self.at_byte))


def _rebuild_error(
    cls: type[BadRecordError], source: str, index: int | None, reason: str, detail: str,
    at_byte: bool,
) -> BadRecordError:
    return cls(source, index, reason, detail, at_byte=at_byte)


def empty_instruction() -> dict[str, Any]:
    """The instruction of a record that has none (plain-text stories)."""
    return {PROMPT_KEY: "", "words": [], "features": []}


def validate_record(obj: object, source: str, index: int) -> dict[str, Any]:
    """Check ``obj`` against the schema and return a normalized copy.

    The copy has every field present (defaults filled in) and the story
    stripped of leading and trailing whitespace, inner newlines kept.
    Raises BadRecordError naming ``source``, ``index`` and the reason.
    """
    if not isinstance(obj, dict):
        raise BadRecordError(
            source, index, "not_object", f"record must be a JSON object, got {_type_name(obj)}"
        )
    return {
        "story": _story(obj, source, index),
        "instruction": _instruction(obj.get("instruction"), source, index),
        "summary": _optional_text(obj.get("summary"), "summary", "", source, index),
        "source": _optional_text(obj.get("source"), "source", source, source, index),
        "random_sentence": _optional_text(
            obj.get("random_sentence"), "random_sentence", "", source, index
        ),
        "extra_fields": _text_list(obj.get("extra_fields"), "extra_fields", source, index),
        "source_bits": _source_bits(obj.get("source_bits"), source, index),
    }


def normalize_line_endings(text: str) -> str:
    """``text`` with CRLF and lone CR line endings turned into LF."""
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def _story(obj: dict[str, Any], source: str, index: int) -> str:
    story = obj.get("story")
    if story is None:
        raise BadRecordError(source, index, "missing_story", "field 'story' is missing")
    _require_text(story, "story", source, index)
    stripped = story.strip()
    if not stripped:
        raise BadRecordError(
            source, index, "empty_story", "field 'story' is empty after stripping whitespace"
        )
    return stripped


def _instruction(value: object, source: str, index: int) -> dict[str, Any]:
    if value is None:
        return empty_instruction()
    if not isinstance(value, dict):
        raise _wrong_type(value, "instruction", "an object", source, index)
    return {
        PROMPT_KEY: _optional_text(value.get(PROMPT_KEY), "instruction.prompt", "", source, index),
        "words": _text_list(value.get("words"), "instruction.words", source, index),
        "features": _text_list(value.get("features"), "instruction.features", source, index),
    }


def _source_bits(value: object, source: str, index: int) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _wrong_type(value, "source_bits", "a number", source, index)
    if not math.isfinite(value) or value < 0:
        raise BadRecordError(source, index, "bad_value:source_bits",
                             f"field 'source_bits' must be finite and >= 0, got {value!r}")
    return float(value)


def _optional_text(value: object, field: str, default: str, source: str, index: int) -> str:
    if value is None:
        return default
    _require_text(value, field, source, index)
    return value  # type: ignore[return-value]  # checked by _require_text


def _text_list(value: object, field: str, source: str, index: int) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _wrong_type(value, field, "a list of strings", source, index)
    for position, item in enumerate(value):
        _require_text(item, field, source, index, position)
    return list(value)


def _require_text(
    value: object, field: str, source: str, index: int, position: int | None = None
) -> None:
    """Raise unless ``value`` is a string that can be written as UTF-8."""
    label = field if position is None else f"{field}[{position}]"
    if not isinstance(value, str):
        raise _wrong_type(value, field, "a string", source, index, label)
    try:
        # JSON escapes can smuggle in lone surrogates, which no UTF-8 writer accepts.
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise BadRecordError(
            source,
            index,
            f"invalid_unicode:{field}",
            f"field '{label}' holds a lone surrogate at character {err.start}",
        ) from None


def _wrong_type(value: object, field: str, wanted: str, source: str, index: int,
                label: str | None = None) -> BadRecordError:
    """The error for ``field`` (shown as ``label``, default ``field``) not being ``wanted``."""
    return BadRecordError(source, index, f"wrong_type:{field}",
                          f"field '{label or field}' must be {wanted}, got {_type_name(value)}")


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__
