"""Which stories are validation: the ``split`` parameters as a rule.

Three strategies (``split.strategy``):

- ``hash`` (default): a story is validation when a salted sha256 of its stripped text
  falls under ``val_fraction``. The side depends on the text alone, so identical
  stories share a side and a growing or reordered corpus keeps every story where it was.
- ``shard``: the stories of the raw files named in ``val_files`` are validation, all
  others training. llama2.c evaluates its published TinyStories models on
  ``data00.json``, so ``val_files: [data00.json]`` scores on the same stories.
- ``official``: the dataset's own validation files are validation (``*-valid.txt`` of
  the V1, V2 and Instruct text sets; a local file whose name ends in ``valid``,
  ``validation`` or ``val``), the rest training.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from backstory import params

STRATEGIES = ("hash", "shard", "official")
SPLITS = ("train", "val")
ROLES = ("train", "valid")
DEFAULT_SPLIT_SALT = "backstory-split-v1"
_VALID_STEM = re.compile(r"(?:^|[-_. ])(?:valid|validation|val)$", re.IGNORECASE)


def role_from_name(name: str) -> str:
    """``"valid"`` for a file named as a validation file (``TinyStories-valid.txt``)."""
    stem = name.rsplit(".", 1)[0]
    return "valid" if _VALID_STEM.search(stem) else "train"


def check_val_fraction(val_fraction: float) -> None:
    """SettingError unless ``val_fraction`` is a number in [0, 1)."""
    params.check_number("split", "val_fraction", val_fraction, 0.0, 1.0, high_open=True)


def split_of(story: str, val_fraction: float, salt: str = DEFAULT_SPLIT_SALT) -> str:
    """Return ``"val"`` or ``"train"`` from a hash of the stripped story text."""
    check_val_fraction(val_fraction)
    digest = hashlib.sha256(f"{salt}\x00{story.strip()}".encode()).digest()
    uniform = int.from_bytes(digest[:8], "big") / 2.0**64  # in [0, 1)
    return "val" if uniform < val_fraction else "train"


@dataclass(frozen=True)
class SplitRule:
    """The train/validation rule of one ingest (see the module docstring)."""

    strategy: str
    val_fraction: float | None = None  # hash only (the others may carry one, unused)
    val_files: tuple[str, ...] = ()
    salt: str = DEFAULT_SPLIT_SALT

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"split.strategy must be one of {', '.join(STRATEGIES)}; got {self.strategy!r}"
            )
        if self.strategy == "hash" or self.val_fraction is not None:
            check_val_fraction(self.val_fraction)
        if not isinstance(self.salt, str):
            raise ValueError(f"the split salt must be a string, got {self.salt!r}")
        bad = [name for name in self.val_files if not isinstance(name, str) or not name]
        if bad or isinstance(self.val_files, str):
            raise ValueError(
                f"split.val_files must be a list of file names, got {self.val_files!r}"
            )
        if self.strategy == "shard" and not self.val_files:
            raise ValueError("split.strategy 'shard' needs split.val_files (e.g. [data00.json])")

    @classmethod
    def from_params(cls, split: Mapping[str, Any]) -> SplitRule:
        """The rule from the ``split`` parameters; unknown or missing keys are refused."""
        known = ("strategy", "val_fraction", "val_files")
        params.check_keys("split", split, known, known)
        files = split["val_files"] or ()
        if isinstance(files, str):
            raise ValueError(f"split.val_files must be a list of file names, got {files!r}")
        return cls(str(split["strategy"]), split["val_fraction"], tuple(files))

    def check_files(self, files: Sequence[tuple[str, str]]) -> None:
        """Refuse a rule that the raw files (``(name, role)`` pairs) cannot satisfy."""
        names = [name for name, _ in files]
        if self.strategy == "shard":
            missing = [name for name in self.val_files if name not in names]
            if missing:
                raise ValueError(
                    f"split.val_files names {missing}, which the raw corpus lacks; it holds "
                    f"{_listing(names)}"
                )
            if all(name in self.val_files for name in names):
                raise ValueError("split.val_files names every raw file: no training stories left")
        elif self.strategy == "official":
            roles = {role for _, role in files}
            if "valid" not in roles:
                raise ValueError(
                    "split.strategy 'official' needs the dataset's validation file, but no raw "
                    f"file is one (files: {_listing(names)}); use a text dataset with a "
                    "'-valid.txt' file, or strategy hash or shard"
                )
            if "train" not in roles:
                raise ValueError(f"split.strategy 'official': every raw file is a validation "
                                 f"file ({_listing(names)}); no training stories left")

    def split_of(self, story: str, file_name: str, role: str) -> str:
        """``"train"`` or ``"val"`` for one kept story of ``file_name`` (of ``role``)."""
        if self.strategy == "shard":
            return "val" if file_name in self.val_files else "train"
        if self.strategy == "official":
            return "val" if role == "valid" else "train"
        return split_of(story, self.val_fraction, self.salt)

    def describe(self) -> dict[str, Any]:
        """What the ingest report records (only the settings the strategy uses)."""
        if self.strategy == "shard":
            return {"strategy": "shard", "val_files": list(self.val_files)}
        if self.strategy == "official":
            return {"strategy": "official"}
        return {"strategy": "hash", "val_fraction": self.val_fraction, "salt": self.salt}


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:8])
    return shown + (f" and {len(names) - 8} more" if len(names) > 8 else "") if names else "none"
