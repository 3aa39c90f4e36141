"""Typed settings from parameter mappings: every key known, none missing.

Each settings dataclass (``TrainConfig``, ``EvaluateConfig``, ``CompareConfig``, ...)
declares its fields without defaults: the defaults live once, in the project's
``conf/base`` parameter files. ``build`` refuses an unknown key (a typo must not pass
silently) and a missing one, naming the section, the key and the keys it knows. Every
refusal, the dataclass's own value checks included, is a ``SettingError``: the command
line prints it without a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import Any, TypeVar

from backstory.errors import SettingError

T = TypeVar("T")


def build(cls: type[T], params: Any, section: str) -> T:
    """``cls(**params)`` for a settings dataclass, with unknown and missing keys refused."""
    if not is_dataclass(cls):
        raise TypeError(f"{cls.__name__} is not a dataclass")
    if not isinstance(params, Mapping):
        raise SettingError(f"{section} must be a mapping of settings, got {type(params).__name__}")
    known = [f.name for f in fields(cls) if f.init]
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise SettingError(
            f"unknown {section} key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
            f"known keys: {', '.join(sorted(known))}"
        )
    required = [f.name for f in fields(cls) if f.init and _required(f)]
    missing = [name for name in required if name not in params]
    if missing:
        raise SettingError(f"{section} lacks {', '.join(missing)} (conf/base holds every default)")
    try:
        return cls(**params)
    except SettingError:
        raise
    except ValueError as err:  # the dataclass's value checks name the key
        raise SettingError(str(err)) from err


def _required(field: Any) -> bool:
    from dataclasses import MISSING

    return field.default is MISSING and field.default_factory is MISSING


def sha256(settings: Any) -> str:
    """sha256 of settings as canonical JSON (sorted keys), recorded as lineage."""
    import hashlib
    import json

    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_int(section: str, name: str, value: Any, minimum: int, *,
              optional: bool = False) -> None:
    """Raise ValueError naming ``section.name`` unless ``value`` is an int >= ``minimum``
    (or None, when ``optional``)."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        null = "null or " if optional else ""
        raise ValueError(f"{section}.{name}={value!r} must be {null}an integer >= {minimum}")
