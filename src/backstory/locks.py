"""Advisory folder locks, so two runs in one project never write the same folder at once.

``FolderLock(folder, what)`` takes an exclusive, non-blocking ``flock`` on
``<folder>/.lock`` and writes who holds it (host, pid, command, start time) into that
file. A second holder fails at once with ``LockedError`` naming the first. The lock dies
with its process (the kernel drops it), so a killed run never leaves a stale lock: the
file may stay behind, but it no longer blocks anyone.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from backstory.errors import UserError

try:  # POSIX; on other platforms locks are not taken (and say so once)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"


class LockedError(UserError, RuntimeError):
    """The folder is locked by another live process."""


class FolderLock:
    """An exclusive lock on one folder, held from ``__enter__`` to ``__exit__``."""

    def __init__(self, folder: Path | str, what: str) -> None:
        self.folder = Path(folder)
        self.what = what
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def acquire(self) -> None:
        if fcntl is None:  # pragma: no cover - Windows
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise LockedError(
                f"{self.folder} is in use by another run ({_describe(holder)}); wait for it "
                f"to finish or stop it. Two runs writing {self.what} at once would mix "
                "their files."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(_holder()).encode())
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing drops the flock


def _holder() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "command": " ".join(sys.argv)[:300],
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 4096).decode() or "{}")
    except (OSError, ValueError):
        return {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "holder unknown"
    return (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}: "
            f"{holder.get('command')}")
