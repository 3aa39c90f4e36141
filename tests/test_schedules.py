"""Learning-rate schedules at their corner points, and their error paths."""

from __future__ import annotations

import math

import pytest

from backstory.lm.schedules import cooldown_steps, lr_at

BASE = dict(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=110, cooldown_fraction=0.2)


def cosine(step: int, **overrides: float) -> float:
    return lr_at(step, schedule="cosine", **{**BASE, **overrides})


def wsd(step: int, **overrides: float) -> float:
    return lr_at(step, schedule="wsd", **{**BASE, **overrides})


@pytest.mark.parametrize("at", [cosine, wsd])
def test_warmup_is_linear_from_lr_over_warmup_plus_one(at) -> None:
    assert at(0) == pytest.approx(1e-3 / 11)
    assert at(4) == pytest.approx(1e-3 * 5 / 11)
    assert at(9) == pytest.approx(1e-3 * 10 / 11)
    # The first step after warmup runs at the full rate.
    assert at(10) == pytest.approx(1e-3)


def test_cosine_middle_end_and_beyond() -> None:
    middle = 10 + 50  # halfway between the end of warmup and max_steps
    assert cosine(middle) == pytest.approx((1e-3 + 1e-4) / 2)
    quarter = 10 + 25
    expected = 1e-4 + 0.5 * (1 + math.cos(math.pi / 4)) * (1e-3 - 1e-4)
    assert cosine(quarter) == pytest.approx(expected)
    assert 1e-4 < cosine(109) < 1e-4 * 1.01
    assert cosine(110) == 1e-4
    assert cosine(10_000) == 1e-4


def test_cosine_decreases_monotonically_after_warmup() -> None:
    rates = [cosine(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(rates, rates[1:], strict=False))


def test_wsd_constant_then_linear_cooldown() -> None:
    assert cooldown_steps(110, 0.2) == 22
    start = 110 - 22
    assert wsd(50) == 1e-3
    assert wsd(start - 1) == 1e-3
    assert wsd(start) == pytest.approx(1e-3)
    assert wsd(start + 11) == pytest.approx((1e-3 + 1e-4) / 2)
    assert wsd(109) == pytest.approx(1e-3 + (1e-4 - 1e-3) * 21 / 22)
    assert wsd(110) == 1e-4
    assert wsd(5000) == 1e-4


def test_no_warmup_and_zero_cooldown() -> None:
    assert cosine(0, warmup_steps=0) == pytest.approx(1e-3)
    assert wsd(109, cooldown_fraction=0.0) == 1e-3
    assert wsd(110, cooldown_fraction=0.0) == 1e-4


def test_warmup_equal_to_max_steps() -> None:
    assert cosine(9, warmup_steps=10, max_steps=10) == pytest.approx(1e-3 * 10 / 11)
    assert cosine(10, warmup_steps=10, max_steps=10) == 1e-4


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (dict(schedule="linear"), "train.schedule"),
        (dict(lr=0.0), "train.lr"),
        (dict(lr=float("nan")), "train.lr"),
        (dict(min_lr=2e-3), "train.min_lr"),
        (dict(min_lr=-1.0), "train.min_lr"),
        (dict(max_steps=0), "train.max_steps"),
        (dict(warmup_steps=-1), "train.warmup_steps"),
        (dict(warmup_steps=111), "train.warmup_steps"),
        (dict(cooldown_fraction=1.5), "train.cooldown_fraction"),
        (dict(schedule="wsd", warmup_steps=100, cooldown_fraction=0.5), "train.cooldown_fraction"),
    ],
)
def test_bad_settings_name_their_key(overrides: dict, key: str) -> None:
    settings = {"schedule": "cosine", **BASE, **overrides}
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        lr_at(0, **settings)


def test_negative_step_is_rejected() -> None:
    with pytest.raises(ValueError, match="step"):
        cosine(-1)


@pytest.mark.parametrize("schedule", ["cosine", "wsd"])
def test_unvalidated_lr_is_the_validated_one(schedule: str) -> None:
    settings = {"schedule": schedule, **BASE}
    for step in range(0, BASE["max_steps"] + 3):
        assert lr_at(step, **settings, validate=False) == lr_at(step, **settings)
