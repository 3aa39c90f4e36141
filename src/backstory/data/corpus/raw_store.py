"""The raw corpus folder: every raw file as it arrived, listed in a manifest.

``write_raw_corpus(folder, plan)`` fills ``folder`` (``data/01_raw/corpus``) with the
files a ``RawCorpusPlan`` names: generated (a storyworld shard), linked from a cache
we never modify in place (a verified download or extraction), or copied (a user's
local folder). Each file is written under a temporary name and renamed when complete;
``.manifest.json`` lists every file with its size, sha256, role (train or the dataset's
own validation file) and identity (what its content is). It is rewritten after each
file, so a killed run resumes: a file already there with the same identity and size is
not made again. Files of earlier runs that the plan no longer names are removed.

The folder is locked (``backstory.core.locks.FolderLock``) while it is written, so a second
ingest in the same project fails at once, naming the first.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backstory.core.errors import UserError
from backstory.core.files import (
    is_temporary,
    read_json,
    write_atomically,
    write_json_atomically,
)
from backstory.core.locks import LOCK_FILE, FolderLock
from backstory.data.corpus.splits import ROLES
from backstory.data.parallel import run_tasks

logger = logging.getLogger(__name__)

MANIFEST = ".manifest.json"
FORMAT = "backstory-raw-corpus"
FORMAT_VERSION = 1
_COPY_BLOCK = 1 << 20


class RawCorpusError(UserError, ValueError):
    """The raw corpus folder is missing, incomplete or does not match its manifest."""


@dataclass(frozen=True)
class RawFileSpec:
    """One file the raw corpus must hold, and how to get it.

    ``identity`` says what the content is (for example ``sha256:<hex>`` of a verified
    download, or the generator, seed and record range of a storyworld shard): a file
    already in the folder with the same identity and size is kept. The content comes
    from ``produce()`` (bytes; picklable, run in a worker process) or from the file
    ``copy_from``, hard-linked when ``link`` (a cache never modified in place) and
    copied otherwise. ``sha256`` is the content's hash when already known.
    """

    name: str
    role: str
    identity: str
    produce: Callable[[], bytes] | None = None
    copy_from: str | None = None
    link: bool = False
    sha256: str | None = None

    def __post_init__(self) -> None:
        if (self.produce is None) == (self.copy_from is None):
            raise ValueError(f"{self.name}: give exactly one of produce and copy_from")
        if self.role not in ROLES:
            raise ValueError(f"{self.name}: role must be one of {ROLES}, got {self.role!r}")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"raw file names must be plain visible file names, got {self.name!r}")


@dataclass(frozen=True)
class RawCorpusPlan:
    """What the acquire step returns: the files to hold, and what the source left out."""

    source: str
    files: tuple[RawFileSpec, ...]
    ignored: tuple[tuple[str, str], ...] = ()  # (name, why it was not read)
    workers: int = 0
    details: dict[str, Any] = field(default_factory=dict)  # recorded in the manifest


@dataclass(frozen=True)
class RawFile:
    """One file of the raw corpus as written."""

    name: str
    size: int
    sha256: str
    role: str
    identity: str


@dataclass(frozen=True)
class RawCorpus:
    """The raw corpus folder as its manifest describes it (what the clean step reads)."""

    folder: Path
    source: str
    files: tuple[RawFile, ...]
    ignored: tuple[dict, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)

    def path(self, name: str) -> Path:
        return self.folder / name


def check_names(names: Sequence[str]) -> None:
    """Refuse two files whose names differ only in case (they collide on some disks)."""
    seen: dict[str, str] = {}
    for name in names:
        other = seen.setdefault(name.casefold(), name)
        if other != name or names.count(name) > 1:
            raise RawCorpusError(
                f"raw files {other!r} and {name!r} would be the same file on a "
                "case-insensitive disk; rename one"
            )


def write_raw_corpus(folder: Path | str, plan: RawCorpusPlan) -> RawCorpus:
    """Make ``folder`` hold exactly the files of ``plan`` (see the module docstring)."""
    folder = Path(folder)
    specs = sorted(plan.files, key=lambda spec: spec.name)
    check_names([spec.name for spec in specs])
    if not specs:
        raise RawCorpusError(f"{plan.source}: the corpus has no files to ingest")
    with FolderLock(folder, "the raw corpus"):
        known = _manifest_entries(folder)
        entries: dict[str, dict] = {}
        to_make: list[RawFileSpec] = []
        for spec in specs:
            old = known.get(spec.name)
            if old is not None and _still_there(folder, spec, old):
                entries[spec.name] = old
            else:
                to_make.append(spec)
        logger.info("raw corpus: %d files kept from an earlier run, %d to write",
                    len(entries), len(to_make))
        _remove_strays(folder, {spec.name for spec in specs})
        _write_manifest(folder, plan, specs, entries)  # drops entries of removed files
        copies = [spec for spec in to_make if spec.produce is None]
        made = [spec for spec in to_make if spec.produce is not None]
        for spec in copies:
            entries[spec.name] = _copy_in(folder, spec)
            _write_manifest(folder, plan, specs, entries)
        tasks = [(str(folder), spec) for spec in made]
        for spec, entry in zip(made, run_tasks(_produce_file, tasks, workers=plan.workers,
                                               what="raw files"), strict=True):
            entries[spec.name] = entry
            _write_manifest(folder, plan, specs, entries)
        return load_raw_corpus(folder)


def load_raw_corpus(folder: Path | str) -> RawCorpus:
    """The raw corpus of ``folder``, checked against its manifest (sizes, completeness)."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise RawCorpusError(
            f"{folder} holds no raw corpus manifest ({MANIFEST}); run the ingest pipeline"
        )
    manifest = read_json(path)
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise RawCorpusError(f"{path}: not a version-{FORMAT_VERSION} raw corpus manifest")
    if not manifest.get("complete"):
        raise RawCorpusError(f"{folder}: the last acquire did not finish; run ingest again")
    files = []
    for entry in manifest["files"]:
        file = RawFile(entry["name"], entry["size"], entry["sha256"], entry["role"],
                       entry["identity"])
        actual = folder / file.name
        if not actual.is_file() or actual.stat().st_size != file.size:
            raise RawCorpusError(
                f"{actual}: missing or not {file.size} bytes as the manifest says; run ingest "
                "again to restore it"
            )
        files.append(file)
    return RawCorpus(folder, manifest["source"], tuple(files), tuple(manifest["ignored"]),
                     manifest.get("details", {}))


def _manifest_entries(folder: Path) -> dict[str, dict]:
    path = folder / MANIFEST
    try:
        manifest = read_json(path)
        return {entry["name"]: entry for entry in manifest["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _still_there(folder: Path, spec: RawFileSpec, entry: dict) -> bool:
    path = folder / spec.name
    return (entry.get("identity") == spec.identity and entry.get("role") == spec.role
            and path.is_file() and path.stat().st_size == entry.get("size"))


def _remove_strays(folder: Path, names: set[str]) -> None:
    """Delete files no longer in the corpus, and leftovers of interrupted writes."""
    for path in sorted(folder.iterdir()):
        if path.name in names or path.name in (MANIFEST, LOCK_FILE):
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
        if not is_temporary(path):
            logger.info("raw corpus: removed %s (not part of this corpus)", path)


def _write_manifest(
    folder: Path, plan: RawCorpusPlan, specs: list[RawFileSpec], entries: dict[str, dict]
) -> None:
    write_json_atomically(folder / MANIFEST, {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "source": plan.source,
        "complete": all(spec.name in entries for spec in specs),
        "files": [entries[spec.name] for spec in specs if spec.name in entries],
        "ignored": [{"name": name, "reason": reason} for name, reason in plan.ignored],
        "details": plan.details,
    })


def _entry(spec: RawFileSpec, size: int, sha256: str) -> dict:
    return {"name": spec.name, "size": size, "sha256": sha256, "role": spec.role,
            "identity": spec.identity}


def _produce_file(task: tuple[str, RawFileSpec]) -> dict:
    """Write one produced file (in a worker process); its manifest entry."""
    folder, spec = task
    assert spec.produce is not None
    data = spec.produce()
    write_atomically(Path(folder) / spec.name, lambda handle: handle.write(data))
    return _entry(spec, len(data), hashlib.sha256(data).hexdigest())


def _copy_in(folder: Path, spec: RawFileSpec) -> dict:
    """Link or copy one file into the corpus, hashing it on the way when not known."""
    source = Path(spec.copy_from or "")
    target = folder / spec.name
    if not source.is_file():
        raise RawCorpusError(f"{source}: the file to ingest as {spec.name} is gone")
    if spec.link and spec.sha256 is not None:
        tmp = folder / f".{spec.name}.link.tmp"
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
            os.replace(tmp, target)  # a hard link: no bytes to write, so no write_atomically
            return _entry(spec, target.stat().st_size, spec.sha256)
        except OSError:  # another filesystem, or links not allowed: copy instead
            tmp.unlink(missing_ok=True)
    hasher = hashlib.sha256()

    def copy(handle) -> None:
        with open(source, "rb") as src:
            while block := src.read(_COPY_BLOCK):
                hasher.update(block)
                handle.write(block)

    write_atomically(target, copy)
    digest = hasher.hexdigest()
    if spec.sha256 is not None and digest != spec.sha256:
        target.unlink()
        raise RawCorpusError(f"{source}: sha256 {digest}, expected {spec.sha256}; not ingested")
    return _entry(spec, target.stat().st_size, digest)

