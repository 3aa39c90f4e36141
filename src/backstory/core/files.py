"""Durable file writes: a file appears under its final name complete or not at all.

Every writer here writes ``<name>.<random>.tmp`` in the target folder, flushes it to
disk, renames it over the target and syncs the folder, so a kill, a full disk or a
power cut leaves either the old file or the new one, never a truncated mix.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from backstory.core.errors import UserError

_HASH_BLOCK = 1 << 20
TMP_SUFFIX = ".tmp"


class WriteError(UserError, OSError):
    """A file or folder could not be written (full disk, permissions); names the path."""


def _write_error(message: str, cause: OSError) -> WriteError:
    """A ``WriteError`` with ``message`` that keeps the errno of ``cause`` (ENOSPC, ...)."""
    error = WriteError(message)
    error.errno = cause.errno
    return error


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def file_mode() -> int:
    """The mode a plain ``open(path, "w")`` gives a new file: 0666 less the umask.

    ``mkstemp`` and safetensors create files 0600; data files are not secret, so every
    writer here gives its files this mode instead.
    """
    return 0o666 & ~_umask()


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
    def write_file(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            write(handle)

    write_file_atomically(path, write_file)


def write_file_atomically(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` with the path of a temporary file beside ``path`` (for writers
    that open the file themselves: h5py, safetensors, torch.save), then move it there."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, UserError):
            raise
        raise _write_error(f"cannot write {path}: {err}. The previous {path.name}, if any, "
                           "is untouched: free disk space (or fix the folder's permissions) "
                           "and run again", err) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def write_bytes_atomically(path: str | os.PathLike, data: bytes) -> None:
    write_atomically(path, lambda handle: handle.write(data))


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomically(path, text.encode("utf-8"))


def write_json_atomically(path: str | os.PathLike, value: Any) -> None:
    """JSON with sorted keys and an indent, so the same value gives the same bytes."""
    write_text_atomically(path, json.dumps(value, indent=1, sort_keys=True,
                                           ensure_ascii=False) + "\n")


def write_csv_atomically(path: str | os.PathLike, rows: Iterable[Sequence[Any]],
                         **dialect: Any) -> None:
    """``rows`` as CSV (``dialect``: csv.writer's options, e.g. delimiter), in UTF-8."""
    buffer = io.StringIO(newline="")
    csv.writer(buffer, **dialect).writerows(rows)
    write_text_atomically(path, buffer.getvalue())


def write_folder_atomically(folder: str | os.PathLike, write: Callable[[Path], None]
                            ) -> list[Path]:
    """Call ``write(staging)`` on a new sibling folder, then move what it wrote into ``folder``.

    A new ``folder`` appears by one rename, complete or not at all; into an existing one
    the finished files are renamed one by one (over files of the same name; others stay).
    Renames need no space, so a full disk or a crash while writing leaves ``folder`` as
    it was and no staging folder behind. Returns the files moved in, sorted. An I/O
    failure becomes a ``WriteError`` naming ``folder``.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.",
                                    suffix=TMP_SUFFIX))
    try:
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it private
        try:
            write(staging)
        except OSError as err:
            raise _write_error(f"cannot write {folder}: {err}. Nothing was written there "
                               "(free disk space or fix the folder's permissions, then try "
                               "again)", err) from err
        names = sorted(entry.name for entry in staging.iterdir())
        if folder.exists():
            for name in names:
                os.replace(staging / name, folder / name)
            staging.rmdir()
        else:
            os.rename(staging, folder)
        fsync_folder(folder.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [folder / name for name in names]


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def is_temporary(path: Path) -> bool:
    """Whether ``path`` is a leftover of an interrupted ``write_atomically``."""
    return path.name.startswith(".") and path.name.endswith(TMP_SUFFIX)
