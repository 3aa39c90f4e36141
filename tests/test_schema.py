"""Tests for the record schema: normalization, defaults and every rejection reason."""

from __future__ import annotations

import pickle

import pytest

from backstory.data.corpus.schema import PROMPT_KEY, BadRecordError, validate_record


def full_record() -> dict:
    return {
        "story": "\n\nTom saw a red boat.\n\nIt floated away.  ",
        "instruction": {
            PROMPT_KEY: "Write a short story.\n\nPossible story:",
            "words": ["float", "boat", "red"],
            "features": ["Dialogue", "BadEnding"],
        },
        "summary": "Tom loses a boat.",
        "source": "GPT-4",
    }


def test_full_record_is_normalized() -> None:
    record = validate_record(full_record(), "data00.json", 0)
    assert record["story"] == "Tom saw a red boat.\n\nIt floated away."
    assert record["instruction"] == full_record()["instruction"]
    assert record["summary"] == "Tom loses a boat."
    assert record["source"] == "GPT-4"


def test_validation_returns_a_copy() -> None:
    original = full_record()
    record = validate_record(original, "data00.json", 0)
    record["instruction"]["words"].append("extra")
    assert original["instruction"]["words"] == ["float", "boat", "red"]


def test_optional_fields_get_defaults() -> None:
    record = validate_record({"story": " Once. "}, "stories.txt", 4)
    assert record == {
        "story": "Once.",
        "instruction": {PROMPT_KEY: "", "words": [], "features": []},
        "summary": "",
        "source": "stories.txt",
        "random_sentence": "",
        "extra_fields": [],
        "source_bits": None,
    }


def test_null_optional_fields_count_as_absent() -> None:
    obj = {"story": "A tale.", "instruction": {"words": None}, "summary": None, "source": None}
    record = validate_record(obj, "data01.json", 2)
    assert record["summary"] == ""
    assert record["source"] == "data01.json"
    assert record["instruction"]["words"] == []


def test_extra_keys_are_ignored() -> None:
    obj = full_record() | {"id": 7}
    assert "id" not in validate_record(obj, "data00.json", 0)


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ([1, 2], "not_object"),
        ("story", "not_object"),
        ({"summary": "x"}, "missing_story"),
        ({"story": None}, "missing_story"),
        ({"story": "  \n\t "}, "empty_story"),
        ({"story": 5}, "wrong_type:story"),
        ({"story": "a", "summary": 3}, "wrong_type:summary"),
        ({"story": "a", "source": ["GPT-4"]}, "wrong_type:source"),
        ({"story": "a", "instruction": "write"}, "wrong_type:instruction"),
        ({"story": "a", "instruction": {PROMPT_KEY: 1}}, "wrong_type:instruction.prompt"),
        ({"story": "a", "instruction": {"words": "a,b"}}, "wrong_type:instruction.words"),
        ({"story": "a", "instruction": {"words": ["a", 2]}}, "wrong_type:instruction.words"),
        ({"story": "a", "instruction": {"features": [None]}}, "wrong_type:instruction.features"),
        ({"story": "bad \ud800 text"}, "invalid_unicode:story"),
    ],
)
def test_bad_records_raise_with_reason(obj: object, reason: str) -> None:
    with pytest.raises(BadRecordError) as info:
        validate_record(obj, "data03.json", 17)
    assert info.value.reason == reason
    assert info.value.source == "data03.json"
    assert info.value.index == 17
    assert str(info.value).startswith("data03.json, record 17: ")


def test_message_names_field_and_type() -> None:
    with pytest.raises(BadRecordError, match=r"field 'summary' must be a string, got int"):
        validate_record({"story": "a", "summary": 3}, "data03.json", 17)


def test_message_names_list_position() -> None:
    with pytest.raises(BadRecordError, match=r"'instruction\.words\[1\]' must be a string"):
        validate_record({"story": "a", "instruction": {"words": ["a", 2]}}, "d.json", 0)


def test_error_is_a_value_error_and_pickles() -> None:
    err = BadRecordError("data03.json", None, "invalid_utf8", "invalid UTF-8 at byte offset 9")
    assert isinstance(err, ValueError)
    assert str(err) == "data03.json: invalid UTF-8 at byte offset 9"
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.source, copy.index, copy.reason, str(copy)) == (
        err.source,
        err.index,
        err.reason,
        str(err),
    )


def test_text_record_error_names_the_byte_offset_and_pickles() -> None:
    err = BadRecordError("s.txt", 120, "invalid_utf8", "bad byte", at_byte=True)
    assert str(err) == "s.txt, record at byte 120: bad byte"
    assert str(pickle.loads(pickle.dumps(err))) == str(err)


def test_instruct_fields_are_validated() -> None:
    record = validate_record({"story": "a", "random_sentence": "Hi.",
                              "extra_fields": ["Summary: x"]}, "i.txt", 0)
    assert (record["random_sentence"], record["extra_fields"]) == ("Hi.", ["Summary: x"])
    with pytest.raises(BadRecordError, match="extra_fields"):
        validate_record({"story": "a", "extra_fields": "Summary: x"}, "i.txt", 0)


def test_source_bits_is_an_optional_number() -> None:
    record = validate_record({"story": "a", "source_bits": 12}, "data00.json", 0)
    assert record["source_bits"] == 12.0
    assert validate_record({"story": "a"}, "data00.json", 0)["source_bits"] is None
    for bad, reason in (("12", "wrong_type:source_bits"), (True, "wrong_type:source_bits"),
                        (-1.0, "bad_value:source_bits"), (float("nan"), "bad_value:source_bits")):
        with pytest.raises(BadRecordError) as err:
            validate_record({"story": "a", "source_bits": bad}, "data00.json", 3)
        assert err.value.reason == reason and "data00.json, record 3" in str(err.value)
