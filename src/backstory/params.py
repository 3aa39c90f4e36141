"""Typed settings from parameter mappings: every key known, none missing, values checked.

Each settings dataclass (``TrainConfig``, ``EvaluateConfig``, ``CompareConfig``, ...)
declares its fields without defaults: the defaults live once, in the project's
``conf/base`` parameter files. ``build`` refuses an unknown key (a typo must not pass
silently) and a missing one, naming the section, the key and the keys it knows
(``check_keys``, the one such check). ``check_int`` and ``check_number`` are the value
checks the settings classes share. Every refusal is a ``SettingError``: the command line
prints it without a traceback.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import MISSING, fields, is_dataclass
from typing import Any, TypeVar

from backstory.core.errors import SettingError

T = TypeVar("T")


def build(cls: type[T], params: Any, section: str) -> T:
    """``cls(**params)`` for a settings dataclass, with unknown and missing keys refused."""
    if not is_dataclass(cls):
        raise TypeError(f"{cls.__name__} is not a dataclass")
    known = [f.name for f in fields(cls) if f.init]
    required = [f.name for f in fields(cls)
                if f.init and f.default is MISSING and f.default_factory is MISSING]
    check_keys(section, params, known, required)
    try:
        return cls(**params)
    except SettingError:
        raise
    except ValueError as err:  # the dataclass's value checks name the key
        raise SettingError(str(err)) from err


def check_keys(section: str, params: Any, known: Collection[str],
               required: Collection[str] = ()) -> None:
    """SettingError unless ``params`` is a mapping with only ``known`` keys and every
    ``required`` one."""
    if not isinstance(params, Mapping):
        raise SettingError(f"{section} must be a mapping of settings, got {type(params).__name__}")
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise SettingError(
            f"unknown {section} key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
            f"known keys: {', '.join(sorted(known))}"
        )
    missing = [name for name in required if name not in params]
    if missing:
        raise SettingError(f"{section} lacks {', '.join(missing)} (conf/base holds every default)")


def sha256(settings: Any) -> str:
    """sha256 of settings as canonical JSON (sorted keys), recorded as lineage."""
    import hashlib
    import json

    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_int(section: str, name: str, value: Any, minimum: int, *,
              optional: bool = False) -> None:
    """SettingError naming ``section.name`` (``name`` alone when ``section`` is empty: an
    argument rather than a setting) unless ``value`` is an int >= ``minimum`` (or None,
    when ``optional``)."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        null = "null or " if optional else ""
        label = f"{section}.{name}" if section else name
        raise SettingError(f"{label}={value!r} must be {null}an integer >= {minimum}")


def check_number(section: str, name: str, value: Any, low: float, high: float = math.inf, *,
                 low_open: bool = False, high_open: bool = False) -> None:
    """SettingError naming ``section.name`` unless ``value`` is a finite number in the
    interval from ``low`` to ``high`` (each end closed unless said open)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (low < value if low_open else low <= value)
    ok = ok and (value < high if high_open else value <= high)
    if not ok:
        brackets = ("(" if low_open else "[") + "{}, {}" + (")" if high_open else "]")
        hint = "; in YAML write e.g. 1.0e-5" if isinstance(value, str) else ""  # PyYAML: "1e-5"
        raise SettingError(f"{section}.{name}={value!r} must be a number in "
                           + brackets.format(low, high) + hint)
