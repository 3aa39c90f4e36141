"""The floor: storyworld's entropy over the evaluation stories, and each run's excess."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from backstory.data.corpus.storyworld import generate_records
from backstory.data.text import reverse_words
from backstory.evaluation.floor import excess_over_floor, floor_lines, floor_of
from backstory.evaluation.report import Statistics

STATS = Statistics(n_boot=200, confidence=0.95, seed=0, convergence_tolerance=0.01)


def val_records(n: int, *, bits: bool = True) -> list[dict]:
    """Storyworld records as the story table gives them back (stripped, with ids)."""
    records = []
    for i, record in enumerate(generate_records(3, 0, n)):
        records.append({"story": record["story"].strip(), "shard": "data00.json", "record": i,
                        "split": "val", "source_bits": record["source_bits"] if bits else None})
    return records


def documents(records: list[dict], variant: str = "forward", seed: int = 1,
              bits: list[float] | None = None, *, text=lambda s: s) -> pd.DataFrame:
    """A compare document table of one run over ``records``; n_bytes of ``text(story)``."""
    n = len(records)
    return pd.DataFrame({
        "run": f"{variant}.small.s{seed}", "variant": variant, "size": "small", "seed": seed,
        "doc": np.arange(n), "story": [f"data00.json:{r['record']}" for r in records],
        "n_bytes": [len(text(r["story"]).encode("utf-8")) for r in records],
        "story_tokens": 10, "bits": bits if bits is not None else [1000.0] * n,
    })


def test_the_floor_is_the_source_bits_over_the_story_bytes() -> None:
    records = val_records(12)
    floor = floor_of(records, documents(records[:8]), curve_docs=[0, 1])
    assert floor["available"] and floor["n_stories"] == 8
    source = sum(r["source_bits"] for r in records[:8])
    n_bytes = sum(len(r["story"].encode()) for r in records[:8])
    assert floor["bpb"] == pytest.approx(source / n_bytes)
    assert floor["curve"]["n_stories"] == 2
    assert floor["curve"]["bits"] == pytest.approx(records[0]["source_bits"]
                                                   + records[1]["source_bits"])


def test_forward_and_reversed_documents_of_the_same_stories_share_one_floor() -> None:
    records = val_records(20)
    # Word reversal is a bijection that keeps every byte: the reversed run's bits per byte
    # divide by the same bytes, and the floor of its documents is the forward floor.
    assert all(reverse_words(reverse_words(r["story"])) == r["story"] for r in records)
    forward = floor_of(records, documents(records))
    reversed_ = floor_of(records, documents(records, "reversed", text=reverse_words))
    assert forward == reversed_


def test_a_corpus_without_source_bits_has_no_floor_and_the_report_says_so() -> None:
    records = val_records(5, bits=False)
    floor = floor_of(records, documents(records))
    assert floor == {"available": False, "reason": floor["reason"]}
    assert "5 of 5 evaluation stories carry no source_bits" in floor["reason"]
    excess = excess_over_floor(documents(records), floor, STATS)
    assert not excess["available"]
    markdown = "\n".join(floor_lines(excess))
    assert "No floor for this corpus" in markdown and "bits per byte**" not in markdown


def test_stories_the_table_does_not_hold_or_holds_otherwise_are_errors() -> None:
    records = val_records(4)
    with pytest.raises(ValueError, match="not validation stories"):
        floor_of(records[:3], documents(records))
    other = documents(records)
    other.loc[2, "n_bytes"] += 1
    with pytest.raises(ValueError, match="data00.json:2 holds"):
        floor_of(records, other)


def test_excess_and_excess_ratio_on_hand_made_bits() -> None:
    records = val_records(6)
    source = np.array([r["source_bits"] for r in records])
    forward = [documents(records, "forward", s, list(source + 100 + 10 * s)) for s in (1, 2)]
    reverse = [documents(records, "reversed", s, list(source + 150 + 10 * s)) for s in (1, 2)]
    table = pd.concat([*forward, *reverse], ignore_index=True)
    floor = floor_of(records, forward[0])
    excess = excess_over_floor(table, floor, STATS)
    (size,) = excess["sizes"]
    n_bytes = forward[0]["n_bytes"].sum()
    # Per seed, each story is 100 + 10 s bits above its source bits (forward).
    level = size["levels"]["forward"]
    assert level["excess"] == pytest.approx(6 * (110 + 120) / (2 * n_bytes))
    assert level["bpb"] - level["floor_bpb"] == pytest.approx(level["excess"])
    assert level["relative"] == pytest.approx(level["excess"] / floor["bpb"])
    (pair,) = size["ratios"]
    assert (pair["variant"], pair["partner"]) == ("reversed", "forward")
    assert pair["ratio"] == pytest.approx((160 + 170) / (110 + 120))
    assert pair["low"] <= pair["ratio"] <= pair["high"]
    markdown = "\n".join(floor_lines(excess))
    assert f"**{floor['bpb']:.4f} bits per byte**" in markdown
    assert "| reversed vs forward | 1.435 |" in markdown


@pytest.mark.slow
def test_no_trained_model_goes_below_the_floor_of_the_evaluation_stories(tiny_run) -> None:
    # The runs score held-out validation stories. A model can beat the floor on stories it
    # memorised, not on fresh draws of the generator: one that did would show a floor that
    # is too high. Instruct is left out: its prompt tells it part of each story.
    folder = tiny_run / "data/08_reporting/compare"
    floor = json.loads((folder / "floor.json").read_text())
    excess = json.loads((folder / "floor_excess.json").read_text())
    assert floor["available"] and 0 < floor["bpb"] < 8
    (size,) = excess["sizes"]
    for variant, level in size["levels"].items():
        assert level["floor_bpb"] == pytest.approx(floor["bpb"])
        if variant != "instruct":
            assert level["high"] > 0, f"{variant} went below the floor beyond sampling error"
    assert "## The floor" in (folder / "report.md").read_text()
