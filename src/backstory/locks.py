"""Advisory folder locks, so two runs in one project never write the same folder at once.

``FolderLock(folder, what)`` takes an exclusive, non-blocking ``flock`` on
``<folder>/.lock`` and writes who holds it (host, pid, command, start time) into that
file. A second holder fails at once with ``LockedError`` naming the first. The lock dies
with its process (the kernel drops it), so a killed run never leaves a stale lock: the
file may stay behind, but it no longer blocks anyone.

Shared artifacts (the tokenizers, the token stores) are read by every run that trains on
them, for as long as it runs. Inside a pipeline run (``keep_artifact_locks``), loading one
takes a shared lock on its folder (``use_artifact``) and replacing one takes the exclusive
lock for the write, then keeps a shared one (``replacing_artifact``); all are dropped when
the pipeline ends. So a second run that would replace a file a live run reads stops at
once, naming that run, and a run never starts reading a file being replaced.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
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
    return {"host": socket.gethostname(), "pid": os.getpid(), "run": os.environ.get(RUN_VAR),
            "command": " ".join(sys.argv)[:300],
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


# folder -> descriptor of its .lock, holding a shared or exclusive flock (this process)
_artifacts: dict[Path, int] = {}
_keeping = False
# The pipeline run this process works for. Kedro's ParallelRunner loads and saves datasets
# in worker processes, which inherit it (forked or spawned): the workers of one run are
# that run, not others to stop at.
RUN_VAR = "BACKSTORY_PIPELINE_RUN"


def keep_artifact_locks(keep: bool) -> None:
    """Start (True) or end (False: every artifact lock is dropped) a pipeline run."""
    global _keeping
    _keeping = keep
    if keep:
        os.environ.setdefault(RUN_VAR, f"{socket.gethostname()}:{os.getpid()}:{time.time()}")
    else:
        for fd in _artifacts.values():
            _release_artifact(fd)
        _artifacts.clear()
        os.environ.pop(RUN_VAR, None)


def _in_run() -> bool:
    return _keeping or RUN_VAR in os.environ


def use_artifact(folder: Path | str, what: str) -> None:
    """This run reads ``what`` in ``folder`` until the pipeline ends: no other may replace it.

    Outside a pipeline run (a notebook, a test) nothing is held.
    """
    if _in_run():
        _lock_artifact(Path(folder), what, exclusive=False)


@contextlib.contextmanager
def replacing_artifact(folder: Path | str, what: str) -> Iterator[None]:
    """Hold ``folder`` exclusively while ``what`` in it is replaced; afterwards this run
    reads it (a shared lock), or, outside a pipeline run, lets it go."""
    folder = Path(folder)
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    fd = _lock_artifact(folder, what, exclusive=True)
    try:
        yield
    finally:
        if _in_run():
            fcntl.flock(fd, fcntl.LOCK_SH)  # a downgrade (or a sibling's shared lock) never waits
        else:
            _release_artifact(_artifacts.pop(folder.resolve()))


def _lock_artifact(folder: Path, what: str, *, exclusive: bool) -> int:
    if fcntl is None:  # pragma: no cover - Windows
        return -1
    folder.mkdir(parents=True, exist_ok=True)
    key = folder.resolve()
    fd = _artifacts.get(key)
    new = fd is None
    if fd is None:
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        holders = _read_holders(fd)
        for _ in range(20):  # a new exclusive holder empties the file, then writes its line
            if holders:
                break
            time.sleep(0.05)
            holders = _read_holders(fd)
        run = os.environ.get(RUN_VAR)
        if run and holders and all(h.get("run") == run for h in holders):
            # Only this run's own workers hold it: Kedro orders their reads and writes.
            fcntl.flock(fd, fcntl.LOCK_SH)
            _artifacts[key] = fd
            if new:
                os.write(fd, (json.dumps(_holder()) + "\n").encode())
            return fd
        if new:
            os.close(fd)
        else:  # a failed upgrade may have dropped the shared lock this run had
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        doing = ("reads it while it runs, so this run may not replace it" if exclusive
                 else "is replacing it, so this run may not read it yet")
        raise LockedError(
            f"{folder} ({what}) is in use by another run ({_describe(holders)}), which "
            f"{doing}; wait for that run to finish or stop it, then run again"
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
