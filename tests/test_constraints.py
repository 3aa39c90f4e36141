"""Pilish-constrained generation with a word-level and a BPE tokenizer, on untrained models.

A constraint must hold whatever the model prefers, so the models here are random: the
test is that every generated word obeys its digit of pi, checked by `pilish_violations`
(written apart from the processor) on the decoded text.
"""

from __future__ import annotations

import pytest
import torch

from backstory.lm.beam import beam_search
from backstory.lm.constraints import (
    MAX_GAP,
    PilishConstraint,
    make_constraint,
    pi_digit,
    pilish_length,
    pilish_violations,
    pilish_words,
)
from backstory.lm.generate import generate
from backstory.lm.model import Transformer
from tests.project import model_config
from tests.tiny_models import tokenizer

# pi to 50 decimals, 3.14159265358979323846264338327950288419716939937510
PI_50 = "314159265358979323846264338327950288419716939937510"


def test_pi_digits_and_word_lengths():
    assert "".join(str(pi_digit(i)) for i in range(len(PI_50))) == PI_50
    assert [pilish_length(i) for i in range(6)] == [3, 1, 4, 1, 5, 9]
    assert PI_50[32] == "0" and pilish_length(32) == 10
    assert pi_digit(5000) in range(10)  # digits are computed on demand


def test_the_checker_on_known_texts():
    classic = ("How I need a drink, alcoholic of course, after the heavy lectures "
               "involving quantum mechanics!")
    assert pilish_violations(classic) == []
    assert len(pilish_words(classic)) == 15
    assert pilish_violations("How I need a drink") == []  # "drink" is complete at the end
    assert pilish_violations("How I need a dri") == []  # an unfinished word may be short
    assert pilish_violations("Now I'd go") == ["word 1 \"I'd\" has 2 letters, pi asks for 1"]
    assert pilish_violations("Now I 4") == ["character '4' is not allowed"]
    assert pilish_violations("Now ,,,,,,, I") == ["9 separators at 3"]
    assert pilish_violations("Now 'I") == ["apostrophe not after a letter at 3"]


def tiny_vocab() -> list[str | None]:
    # id: 0-2 specials, then a handful of texts
    return [None, None, None, " How", " I", " need", ",", " a", " dr", "ink", " x9", "don't",
            "'s", "!!!", " ", "Ho", "w"]


def ids_of(texts: list[str]) -> list[int]:
    vocab = tiny_vocab()
    return [vocab.index(t) for t in texts]


def allowed_texts(constraint: PilishConstraint, prompt: list[int], generated: list[int]
                  ) -> set[str]:
    mask = constraint.allowed(constraint.state_after(prompt, generated))
    return {str(tiny_vocab()[i]) for i in range(len(mask)) if mask[i]}


def test_processor_tracks_the_current_word_across_tokens():
    c = PilishConstraint(tiny_vocab(), stop_ids=[2])
    # Word 0 needs 3 letters: a token may start it short (" I" could grow), not long.
    assert allowed_texts(c, [1], []) == {" How", " I", ",", " a", " dr", "ink", "!!!", " ",
                                         "Ho", "w", "None"}  # "None": the stop id, id 2
    assert allowed_texts(c, [1], ids_of(["Ho"])) == {"w", "'s"}  # "Ho's" has 3 letters
    # "How" is complete: next a separator (or the stop); word 1 needs 1 letter.
    assert allowed_texts(c, [1], ids_of([" How"])) == {" I", ",", " a", "!!!", " ", "None"}
    after_dr = allowed_texts(c, [1], ids_of([" How", " I", " need", " a", " dr"]))
    assert after_dr == {"ink", "w", "'s", "Ho"}  # word 4 needs 5 letters; no stop inside it


def test_a_prompt_ending_inside_a_word_is_not_extended():
    c = PilishConstraint(tiny_vocab())
    assert allowed_texts(c, ids_of([" How"]), []) == {" How", " I", " a", " dr", ",", "!!!",
                                                      " "}
    assert allowed_texts(c, ids_of([","]), []) == allowed_texts(c, [1], [])


def test_processor_masks_logits_and_rejects_broken_history():
    c = PilishConstraint(tiny_vocab())
    logits = torch.zeros(2, len(tiny_vocab()))
    out = c([[1], [1]], [[], ids_of([" How"])], logits)
    assert out.shape == logits.shape and torch.equal(logits, torch.zeros_like(logits))
    ink = ids_of(["ink"])[0]
    assert out[0, ink] == 0 and torch.isneginf(out[1, ink])
    with pytest.raises(ValueError, match="breaks the Pilish rule"):
        c.state_after([1], ids_of([" need"]))
    with pytest.raises(ValueError, match="vocabulary"):
        c([[1]], [[]], torch.zeros(1, 5))
    with pytest.raises(ValueError, match="unknown constraint"):
        make_constraint("haiku", tiny_vocab())


def untrained(vocab_size: int, seed: int) -> Transformer:
    torch.manual_seed(seed)
    config = model_config(vocab_size=vocab_size, dim=32, n_layers=2, n_heads=2, max_seq_len=256)
    return Transformer(config).eval()


@pytest.mark.parametrize("model_type", ["word", "bpe"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_generated_text_is_pilish_for_30_words_and_more(model_type, temperature):
    tok = tokenizer(model_type)
    assert tok.model_type == model_type
    constraint = make_constraint("pilish", tok.token_texts())
    model = untrained(tok.vocab_size, seed=1)
    prompt = [tok.bos_id] + tok.encode_one("Once upon a time")
    new = generate(model, [prompt], max_new_tokens=200, temperature=temperature, seed=2,
                   logits_processors=[constraint])[0]
    text = tok.decode(new)
    assert pilish_violations(text) == []
    assert len(pilish_words(text)) >= 30
    # Prompt and output stay apart: the prompt's words are unchanged.
    assert pilish_words(tok.decode(prompt + new))[:4] == ["Once", "upon", "a", "time"]


@pytest.mark.parametrize("model_type", ["word", "bpe"])
def test_beam_search_keeps_the_constraint(model_type):
    tok = tokenizer(model_type)
    stops = (tok.bos_id, tok.eos_id)
    constraint = make_constraint("pilish", tok.token_texts(), stop_ids=stops)
    model = untrained(tok.vocab_size, seed=4)
    found = beam_search(model, [tok.bos_id], beam_width=3, max_new_tokens=60, n_best=3,
                        stop_ids=stops, logits_processors=[constraint])
    for hypothesis in found:
        tokens = hypothesis.tokens[:-1] if hypothesis.stopped else hypothesis.tokens
        assert pilish_violations(tok.decode(tokens)) == []


def test_batched_rows_are_constrained_each_on_its_own():
    tok = tokenizer("bpe")
    constraint = make_constraint("pilish", tok.token_texts())
    model = untrained(tok.vocab_size, seed=5)
    prompts = [[tok.bos_id], [tok.bos_id] + tok.encode_one("The cat sat.")]
    for new in generate(model, prompts, max_new_tokens=80, temperature=1.0, seed=3,
                        logits_processors=[constraint]):
        text = tok.decode(new)
        assert pilish_violations(text) == [] and len(pilish_words(text)) >= 10


def test_separators_between_words_are_bounded():
    tok = tokenizer("bpe")
    constraint = make_constraint("pilish", tok.token_texts())
    model = untrained(tok.vocab_size, seed=6)
    punctuation = [i for i, t in enumerate(tok.token_texts()) if t in (".", ",", "!")]
    boost = torch.zeros(tok.vocab_size)
    boost[punctuation] = 50.0  # a model that would rather print only punctuation

    def prefers_punctuation(prompts, generated, logits):
        return logits + boost

    new = generate(model, [[tok.bos_id]], max_new_tokens=60, temperature=0,
                   logits_processors=[prefers_punctuation, constraint])[0]
    text = tok.decode(new)
    assert pilish_violations(text) == []  # at most MAX_GAP separators in a row
    assert len(pilish_words(text)) >= 5
    assert len(new) > 6 * MAX_GAP
