"""Learning-rate schedules: warmup + cosine (llama2.c) and warmup-stable-decay (Arrows of Time).

Steps count optimizer updates from 0. Warmup is linear and never yields 0:
step s < warmup_steps gets ``lr * (s + 1) / (warmup_steps + 1)``, so the first update
already moves the weights and step ``warmup_steps`` is the first one at the full ``lr``.
Both schedules reach ``min_lr`` at ``max_steps`` and stay there beyond it.
"""

from __future__ import annotations

import math

import numpy as np

SCHEDULES = ("cosine", "wsd")


def check_schedule(*, schedule: str, lr: float, min_lr: float, warmup_steps: int,
                   max_steps: int, cooldown_fraction: float) -> None:
    """Raise ValueError naming the ``train.<key>`` whose value cannot make a schedule."""
    if schedule not in SCHEDULES:
        raise ValueError(f"train.schedule={schedule!r} is unknown; use one of {SCHEDULES}")
    if not (_is_number(lr) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"train.lr={lr!r} must be a finite number > 0")
    if not (_is_number(min_lr) and math.isfinite(min_lr) and 0 <= min_lr <= lr):
        raise ValueError(f"train.min_lr={min_lr!r} must be a number in [0, train.lr={lr}]")
    if not _is_int(max_steps) or max_steps < 1:
        raise ValueError(f"train.max_steps={max_steps!r} must be an integer >= 1")
    if not _is_int(warmup_steps) or not 0 <= warmup_steps <= max_steps:
        raise ValueError(
            f"train.warmup_steps={warmup_steps!r} must be an integer in [0, max_steps={max_steps}]"
        )
    if not (_is_number(cooldown_fraction) and 0 <= cooldown_fraction <= 1):
        raise ValueError(f"train.cooldown_fraction={cooldown_fraction!r} must be in [0, 1]")
    n_cooldown = cooldown_steps(max_steps, cooldown_fraction)
    if schedule == "wsd" and warmup_steps + n_cooldown > max_steps:
        raise ValueError(
            f"train.cooldown_fraction={cooldown_fraction} gives "
            f"{n_cooldown} cooldown steps, which overlap the "
            f"{warmup_steps} warmup steps of max_steps={max_steps}; lower one of them"
        )


def _is_int(value: object) -> bool:
    """True for ints (numpy ints included) but not bools, which are ints to Python."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    """True for real numbers but not bools."""
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def cooldown_steps(max_steps: int, cooldown_fraction: float) -> int:
    """Number of final steps over which ``wsd`` decays linearly to ``min_lr``."""
    return int(round(cooldown_fraction * max_steps))


def stable_end(max_steps: int, cooldown_fraction: float) -> int:
    """``wsd``: the first cooldown step. Every step before it runs at the rate any longer
    ``max_steps`` gives it too, so a checkpoint there can be trained on to a longer run."""
    return max_steps - cooldown_steps(max_steps, cooldown_fraction)


def lr_at(step: int, *, schedule: str, lr: float, min_lr: float, warmup_steps: int,
          max_steps: int, cooldown_fraction: float, validate: bool = True) -> float:
    """Learning rate for optimizer step ``step`` (0-based) under ``schedule``.

    ``validate=False`` skips the checks, for a caller that ran ``check_schedule`` once
    (the training loop asks on every step and checks its schedule once, at its start).
    """
    if validate:
        check_schedule(schedule=schedule, lr=lr, min_lr=min_lr, warmup_steps=warmup_steps,
                       max_steps=max_steps, cooldown_fraction=cooldown_fraction)
        if not _is_int(step) or step < 0:
            raise ValueError(f"step={step!r} must be an integer >= 0")
    if step < warmup_steps:
        return lr * (step + 1) / (warmup_steps + 1)
    if step >= max_steps:
        return float(min_lr)
    if schedule == "cosine":
        return _cosine(step, lr, min_lr, warmup_steps, max_steps)
    return _wsd(step, lr, min_lr, max_steps, cooldown_steps(max_steps, cooldown_fraction))


def _cosine(step: int, lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> float:
    """Half-cosine from ``lr`` at the end of warmup to ``min_lr`` at ``max_steps``."""
    progress = (step - warmup_steps) / (max_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def _wsd(step: int, lr: float, min_lr: float, max_steps: int, n_cooldown: int) -> float:
    """Constant ``lr``, then a straight line to ``min_lr`` over the last ``n_cooldown`` steps."""
    start = max_steps - n_cooldown  # stable_end
    if step < start:
        return float(lr)
    return lr + (min_lr - lr) * (step - start) / n_cooldown
