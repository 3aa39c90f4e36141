"""reverse_words (against the published expression) and instruction synthesis."""

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from backstory.data.text import (
    DEFAULT_TEMPLATES,
    TemplateError,
    choose_template,
    join_phrases,
    make_instruction,
    record_instruction,
    reverse_words,
    usable_templates,
)

# The published expression (Mahurin 2023) written as a raw string: in the original
# non-raw literal "\'" is a plain quote, and "\'" inside a regex class is one too.
_REFERENCE = re.compile(r'([\w\d\']+|\.|"|\?|\!|,)')


def reference(text: str) -> str:
    return "".join(reversed(_REFERENCE.split(text)))


# Texts close to stories (the fast path), plus characters that force the general path.
story_chars = st.text(alphabet=st.sampled_from(list("ab Z9_'.\"?!,\n-")), max_size=60)
mixed_chars = st.text(
    alphabet=st.sampled_from(list("ab '.\"?!,\n\t\r-:;()\x00é’“”日_1")), max_size=60
)

LILY = (
    'Once upon a time, there was a girl named Lily. She said, "Can I play?"\n\n'
    "Her mom smiled. Lily's dog, Max, barked! They played all day."
)


def test_documented_example():
    assert reverse_words("This is a test.") == ".test a is This"


def test_story_with_dialogue_and_paragraphs():
    expected = (
        ".day all played They !barked ,Max ,dog Lily's .smiled mom Her\n\n"
        '"?play I Can" ,said She .Lily named girl a was there ,time a upon Once'
    )
    assert reverse_words(LILY) == expected == reference(LILY)
    assert reverse_words(expected) == LILY


@pytest.mark.parametrize(
    "text",
    ["", " ", "a", "...", "  two  spaces  ", "a\n \nb", "x( y", "well-known: yes", "\x00a. b",
     "a - b", "walkie-talkie.\n\n--Hi", "x-\ny",
     "über café", "“Hi,” she said."],
)
def test_edge_cases_match_reference(text):
    assert reverse_words(text) == reference(text)
    assert reverse_words(reverse_words(text)) == text


@settings(max_examples=400)
@given(st.text())
@example("a\u0301b. c")  # combining mark: not a word character
def test_matches_reference_on_any_unicode(text):
    assert reverse_words(text) == reference(text)


@settings(max_examples=400)
@given(st.one_of(story_chars, mixed_chars))
def test_matches_reference_on_story_like_text(text):
    assert reverse_words(text) == reference(text)


@settings(max_examples=400)
@given(st.one_of(st.text(), story_chars, mixed_chars))
def test_is_an_involution_on_any_text(text):
    # Holds for every str: the pieces are maximal runs of one character class (or a single
    # mark), and reversing their order keeps every run maximal, so splitting again gives
    # the same pieces.
    assert reference(reference(text)) == text
    assert reverse_words(reverse_words(text)) == text


@given(st.one_of(st.text(), story_chars, mixed_chars))
def test_keeps_the_utf8_byte_count(text):
    assert len(reverse_words(text).encode("utf-8", "surrogatepass")) == len(
        text.encode("utf-8", "surrogatepass")
    )


# --- instructions ----------------------------------------------------------------------

WORDS = ["float", "boat", "red"]
WHERE = "Write a story where {summary_clause}."
ABOUT = "Write a short story about {summary_topic}."


@pytest.mark.parametrize(
    ("summary", "template", "expected"),
    [
        (
            "Tom and Sue find a little red boat by the pond, but it floats away.",
            WHERE,
            "Write a story where Tom and Sue find a little red boat by the pond, "
            "but it floats away.",
        ),
        (
            "A little girl named Lily finds a needle in her room and wants to share it.",
            WHERE,
            "Write a story where a little girl named Lily finds a needle in her room "
            "and wants to share it.",
        ),
        (
            "The story is about a girl named Lily who loves flowers.",
            ABOUT,
            "Write a short story about a girl named Lily who loves flowers.",
        ),
        (
            "The story is about how Ben learns to share his toys with his sister.",
            WHERE,
            "Write a story where Ben learns to share his toys with his sister.",
        ),
        (
            "In this story, Sue and her dog go to the beach and build a castle.",
            ABOUT,
            "Write a short story about how Sue and her dog go to the beach and build a castle.",
        ),
        ("I want a puppy, says Mia.", WHERE, "Write a story where I want a puppy, says Mia."),
        ("She loses her hat.", WHERE, "Write a story where she loses her hat."),
    ],
)
def test_instruction_reads_naturally(summary, template, expected):
    assert make_instruction(summary, WORDS, [], template) == expected


def test_words_and_features_are_joined_as_english():
    out = make_instruction(
        "Tom finds a shell.", WORDS, ["Dialogue", "BadEnding", "MoralValue"],
        "Write a story with {features} where {summary_clause}. Use the words {words}.",
    )
    assert out == (
        "Write a story with dialogue, a bad ending and a moral lesson where Tom finds a shell. "
        'Use the words "float", "boat" and "red".'
    )
    assert join_phrases(["a"]) == "a"
    assert join_phrases(["a", "b"]) == "a and b"


def test_topic_summaries_never_get_clause_templates():
    summary = "This story is about a brave little knight."
    usable = usable_templates(DEFAULT_TEMPLATES, summary, WORDS, ["Twist"])
    assert usable and all("summary_clause" not in t for t in usable)
    with pytest.raises(TemplateError, match="summary_clause"):
        make_instruction(summary, WORDS, [], WHERE)


def test_empty_summary_falls_back_to_words():
    out = record_instruction("", WORDS, [], templates=[WHERE], seed=0, key="data01.json:5")
    assert out == 'Write a short story that uses the words "float", "boat" and "red".'
    assert record_instruction("  ", [], ["Twist"], templates=[WHERE], seed=0, key="k") == (
        "Write a short story with a twist."
    )


def test_record_with_nothing_names_the_record():
    with pytest.raises(ValueError, match="data07.json:42"):
        record_instruction("", [], [], templates=DEFAULT_TEMPLATES, seed=0, key="data07.json:42")


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="unknown story feature 'Romance'"):
        make_instruction("Tom runs.", [], ["Romance"], "Write a story with {features}.")
    with pytest.raises(TemplateError, match="unknown placeholder"):
        usable_templates(["Write {plot}."], "Tom runs.", [], [])
    with pytest.raises(ValueError, match="blank entry in words"):
        make_instruction("Tom runs.", ["run", " "], [], "Use {words}.")
    with pytest.raises(ValueError, match="at least one template"):
        choose_template([], 0, "k")


def test_choose_template_is_stable_and_spreads():
    keys = [f"data{i % 3:02d}.json:{i}" for i in range(300)]
    first = [choose_template(DEFAULT_TEMPLATES, 7, k) for k in keys]
    assert first == [choose_template(list(DEFAULT_TEMPLATES), 7, k) for k in keys]
    assert set(first) == set(DEFAULT_TEMPLATES)
    other_seed = [choose_template(DEFAULT_TEMPLATES, 8, k) for k in keys]
    assert first != other_seed
