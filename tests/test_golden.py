"""Golden output: greedy decoding of a tiny fixed checkpoint gives a fixed text on CPU.

The checkpoint (tests/golden/, made by tests/golden/make_golden.py) is committed, so any
change to the model's arithmetic, the checkpoint format, the tokenizer or the decoding
loop changes this text. Greedy decoding is deterministic on CPU in fp32; the smallest
gap between the two likeliest tokens along this text is about 4e-3 nats, far above
float32 rounding between machines.
"""

from __future__ import annotations

from pathlib import Path

from backstory.data.tokenizer import Tokenizer
from backstory.evaluation.sampling import generate_story
from backstory.lm.checkpoint import load_model

GOLDEN = Path(__file__).parent / "golden"
EXPECTED = ("Once upon a time, there was a little girlly. He had a little girlue. He had a "
            "little girlly. He had a little girlue. He had a")


def test_greedy_decoding_of_the_golden_checkpoint_is_fixed():
    tokenizer = Tokenizer.from_file(GOLDEN / "tokenizer.model")
    model, meta = load_model(GOLDEN / "model")
    assert meta["lineage"]["tokenizer_sha256"] == tokenizer.sha256
    sample = generate_story(model, tokenizer, variant="forward", prompt="Once upon a time",
                            max_new_tokens=48, temperature=0, top_k=None, top_p=None, seed=0)
    assert sample["text"] == EXPECTED
    assert sample["n_new_tokens"] == 48 and not sample["stopped"]
