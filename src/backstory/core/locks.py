"""Advisory folder locks, so two runs in one project never write the same folder at once.

``FolderLock(folder, what)`` takes an exclusive, non-blocking ``flock`` on
``<folder>/.lock`` and writes who holds it (host, pid, command, start time) into that
file. A second holder fails at once with ``LockedError`` naming the first. The lock dies
with its process (the kernel drops it), so a killed run never leaves a stale lock: the
file may stay behind, but it no longer blocks anyone.

Shared artifacts (the tokenizers, the token stores) are read by every run that trains on
them, for as long as it runs. Inside a pipeline run (``keep_artifact_locks``), loading one
takes a shared lock on its own lock file ``.<name>.lock`` beside it (``use_artifact``) and
replacing one takes the exclusive lock for the write, then keeps a shared one
(``replacing_artifact``); all are dropped when the pipeline ends. So a second run that would
replace a file a live run reads stops at once, naming that run, and a run never starts
reading a file being replaced. One lock per file, not per folder: within a run each file
is written once, before it is read, so nodes that Kedro's ParallelRunner runs side by side
(train.h5 and val.h5 exported at once) never meet on one lock; its worker processes learn
that a pipeline run is on from ``KEEP_ENV`` and drop their locks when they exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from backstory.core.errors import UserError

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
            holders = _read_holders(fd)
            os.close(fd)
            raise LockedError(
                f"{self.folder} is in use by another run ({_describe(holders)}); wait for it "
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


KEEP_ENV = "BACKSTORY_KEEP_ARTIFACT_LOCKS"  # set while a pipeline runs (inherited by workers)
# lock file -> its descriptor, holding a shared or exclusive flock (this process)
_artifacts: dict[Path, int] = {}
_registry = threading.Lock()  # ThreadRunner loads datasets from several threads


def keep_artifact_locks(keep: bool) -> None:
    """Start (True) or end (False: every artifact lock is dropped) a pipeline run."""
    if keep:
        os.environ[KEEP_ENV] = "1"
        return
    os.environ.pop(KEEP_ENV, None)
    with _registry:
        for fd in _artifacts.values():
            _release_artifact(fd)
        _artifacts.clear()


def _keeping() -> bool:
    return os.environ.get(KEEP_ENV) == "1"


def artifact_lock_path(path: Path | str) -> Path:
    """The lock file of an artifact: ``.<name>.lock`` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}{LOCK_FILE}")


def use_artifact(path: Path | str, what: str) -> None:
    """This run reads the file ``path`` (``what``) until the pipeline ends: no other run
    may replace it. Outside a pipeline run (a notebook, a test) nothing is held."""
    if _keeping():
        _lock_artifact(artifact_lock_path(path), what, exclusive=False)


@contextlib.contextmanager
def replacing_artifact(path: Path | str, what: str) -> Iterator[None]:
    """Hold ``path``'s lock exclusively while the file is replaced; afterwards this run
    reads it (a shared lock), or, outside a pipeline run, lets it go."""
    lock = artifact_lock_path(path)
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    fd = _lock_artifact(lock, what, exclusive=True)
    try:
        yield
    finally:
        if _keeping():
            fcntl.flock(fd, fcntl.LOCK_SH)  # a downgrade never waits
        else:
            with _registry:
                _release_artifact(_artifacts.pop(lock.resolve()))


def _lock_artifact(lock: Path, what: str, *, exclusive: bool) -> int:
    if fcntl is None:  # pragma: no cover - Windows
        return -1
    lock.parent.mkdir(parents=True, exist_ok=True)
    key = lock.resolve()
    with _registry:
        fd = _artifacts.get(key)
        new = fd is None
        if fd is None:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            holders = _read_holders(fd)
            if new:
                os.close(fd)
            else:  # a failed upgrade may have dropped the shared lock this run had
                with contextlib.suppress(OSError):
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            doing = ("reads it while it runs, so this run may not replace it" if exclusive
                     else "is replacing it, so this run may not read it yet")
            raise LockedError(
                f"{lock.parent / lock.name[1:-len(LOCK_FILE)]} ({what}) is in use by another "
                f"run ({_describe(holders)}), which {doing}; wait for that run to finish or "
                "stop it, then run again"
            ) from None
        _artifacts[key] = fd
        if exclusive:
            os.ftruncate(fd, 0)
        if new or exclusive:
            # One line per holder: shared holders add theirs; dead ones are skipped on reading.
            os.write(fd, (json.dumps(_holder()) + "\n").encode())
    return fd


def _release_artifact(fd: int) -> None:
    """Strike this process from the holders, then drop its lock."""
    with contextlib.suppress(OSError):
        others = [json.dumps(h) + "\n" for h in _read_holders(fd)
                  if (h.get("host"), h.get("pid")) != (socket.gethostname(), os.getpid())]
        os.ftruncate(fd, 0)
        os.write(fd, "".join(others).encode())
    os.close(fd)


def _read_holders(fd: int) -> list[dict[str, Any]]:
    """The live holders the lock file names (all when liveness cannot be told)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        lines = os.read(fd, 1 << 16).decode().splitlines()
    except OSError:
        return []
    holders = []
    for line in lines:
        try:
            holder = json.loads(line)
        except ValueError:
            continue
        if isinstance(holder, dict) and _may_live(holder):
            holders.append(holder)
    return holders


def _may_live(holder: dict[str, Any]) -> bool:
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return True
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def _describe(holders: list[dict[str, Any]]) -> str:
    if not holders:
        return "holder unknown"
    return "; ".join(f"pid {h.get('pid')} on {h.get('host')} since {h.get('since')}: "
                     f"{h.get('command')}" for h in holders[-3:])
