"""Folder locks: a second holder fails at once naming the first; a killed holder frees it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from backstory.core.locks import FolderLock, LockedError

HOLD = """
import sys, time
from backstory.core.locks import FolderLock
with FolderLock(sys.argv[1], "test files"):
    print("locked", flush=True)
    time.sleep(60)
"""


def _holder(folder):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_holder_fails_naming_the_first_and_a_killed_holder_frees_the_lock(tmp_path):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(LockedError, match=rf"pid {proc.pid} .*in use|in use.*pid {proc.pid}"):
            FolderLock(tmp_path, "test files").acquire()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    with FolderLock(tmp_path, "test files"):  # the kernel dropped the dead process's lock
        pass


def test_release_lets_the_next_holder_in(tmp_path):
    lock = FolderLock(tmp_path / "new", "test files")
    lock.acquire()
    lock.release()
    lock.release()  # idempotent
    with FolderLock(tmp_path / "new", "test files"):
        assert (tmp_path / "new" / ".lock").is_file()
    started = time.monotonic()
    with FolderLock(tmp_path / "new", "test files"):
        pass
    assert time.monotonic() - started < 5
