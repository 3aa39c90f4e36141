"""Durable file writes: a file appears under its final name complete or not at all.

Every writer here writes ``<name>.<random>.tmp`` in the target folder, flushes it to
disk, renames it over the target and syncs the folder, so a kill, a full disk or a
power cut leaves either the old file or the new one, never a truncated mix.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

_HASH_BLOCK = 1 << 20
TMP_SUFFIX = ".tmp"


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex of a file, read in blocks."""
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            hasher.update(block)
    return hasher.hexdigest()


def fsync_folder(folder: str | os.PathLike) -> None:
    """Make renames inside ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(handle)`` on a temporary file and move it to ``path`` once complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; data files are not secret
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def write_bytes_atomically(path: str | os.PathLike, data: bytes) -> None:
    write_atomically(path, lambda handle: handle.write(data))


def write_json_atomically(path: str | os.PathLike, value: Any) -> None:
    """JSON with sorted keys and an indent, so the same value gives the same bytes."""
    text = json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    write_bytes_atomically(path, text.encode("utf-8"))


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def is_temporary(path: Path) -> bool:
    """Whether ``path`` is a leftover of an interrupted ``write_atomically``."""
    return path.name.startswith(".") and path.name.endswith(TMP_SUFFIX)
