"""Resumable, verified HTTP download and safe extraction of corpus archives.

``download`` streams a URL to ``<dest>.part``, resumes an interrupted transfer
with an HTTP Range request, checks the HTTP status and the byte count, and
moves the file into place only after its size and sha256 matched. ``fetch_verified``
adds the rule for files whose hash is not published: the size is checked, the sha256
is recorded next to the file on the first download (``<dest>.sha256``) and every later
use checks the file against it. A cached file that fails a check is deleted, so the
next run fetches it afresh instead of failing until someone deletes it by hand.
``safe_extract`` pulls the shard files out of a tar archive and refuses members that
could write outside the target folder; ``extract_verified`` reuses an earlier complete
extraction of the same archive and removes a cached archive found damaged.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import lzma
import os
import re
import tarfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from tqdm import tqdm

from backstory.core.errors import UserError
from backstory.core.files import (
    file_sha256,
    read_json,
    write_atomically,
    write_bytes_atomically,
    write_json_atomically,
)

logger = logging.getLogger(__name__)

USER_AGENT = "backstory-corpus-download/1"
SHARDS = r"data\d+\.json"  # the story shards of a TinyStories archive
_HASH_BLOCK = 1 << 20
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
Hasher = Any  # hashlib's hash objects have no public type before Python 3.12
# What a damaged compressed stream or tar raises while being read.
_ARCHIVE_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError)


class DownloadError(UserError, OSError):
    """The transfer failed (HTTP status, network, short body); a ``.part`` file may remain."""


class ChecksumError(UserError, ValueError):
    """A downloaded file's sha256 differs from the expected one."""

    def __init__(self, name: str, expected: str, actual: str) -> None:
        self.name = name
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"{name}: sha256 mismatch: expected {expected}, got {actual}; "
            "the download was deleted, run again to fetch it afresh"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.name, self.expected, self.actual))


class SizeError(UserError, ValueError):
    """A downloaded or cached file does not have the published size."""


class UnsafeArchiveError(UserError, ValueError):
    """An archive member would escape the target folder or is a link or device."""


class CorruptArchiveError(UserError, ValueError):
    """An archive is truncated or damaged."""


@dataclass(frozen=True)
class _Fetched:
    """How one HTTP attempt ended: the ``.part`` file is complete, or must start over."""

    complete: bool
    sha256: str = ""


def part_path(dest: Path) -> Path:
    """Where ``download`` keeps the unfinished file for ``dest``."""
    return dest.with_suffix(dest.suffix + ".part")


def recorded_hash_path(dest: Path) -> Path:
    """Where ``fetch_verified`` records the sha256 of a file whose hash is not published."""
    return dest.with_name(dest.name + ".sha256")


def download(
    url: str,
    dest: Path,
    *,
    sha256: str | None,
    size: int | None = None,
    chunk_size: int = 1 << 20,
    progress: bool = True,
    timeout: float = 60,
) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    Skips the transfer when ``dest`` exists and matches ``sha256`` (or exists
    and ``sha256`` is None) and ``size`` when given. Resumes from ``<dest>.part``
    with a Range request; a server that answers 200 instead of 206 is followed from
    byte zero. On a size or checksum mismatch the file is deleted and SizeError or
    ChecksumError raised; on a network failure the ``.part`` file is kept for the
    next call and DownloadError raised.
    """
    dest = Path(dest)
    expected = _normalize_sha256(sha256)
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive number of bytes, got {chunk_size}")
    if size is not None and dest.exists() and dest.stat().st_size != size:
        logger.warning("%s has %d bytes, not the published %d: downloading again",
                       dest, dest.stat().st_size, size)
        dest.unlink()
    if _already_there(dest, expected):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    fetched = _fetch(url, part, expected, chunk_size, progress, timeout)
    if not fetched.complete:
        part.unlink(missing_ok=True)
        fetched = _fetch(url, part, expected, chunk_size, progress, timeout)
        if not fetched.complete:
            raise DownloadError(f"{url}: the server refused the download twice (HTTP 416)")
    if size is not None and part.stat().st_size != size:
        actual_size = part.stat().st_size
        part.unlink(missing_ok=True)
        raise SizeError(
            f"{dest.name}: {url} sent {actual_size} bytes, but the file has {size}; the "
            "download was deleted, run again to fetch it afresh"
        )
    if expected is not None and fetched.sha256 != expected:
        part.unlink(missing_ok=True)
        raise ChecksumError(dest.name, expected, fetched.sha256)
    # Not write_atomically: the .part file outlives a failed run, so the next resumes it.
    os.replace(part, dest)
    logger.info("downloaded %s to %s (sha256 %s)", url, dest, fetched.sha256)
    return dest


def fetch_verified(
    url: str,
    dest: Path,
    *,
    size: int | None,
    sha256: str | None,
    progress: bool = True,
    timeout: float = 60,
) -> str:
    """Download ``url`` to ``dest`` unless a verified copy is there; return its sha256.

    With a published ``sha256`` the file must match it. Without one, the size (when
    published) is checked and the file's sha256 is recorded in ``<dest>.sha256`` on
    the first download; a cached file that no longer matches its record (or has the
    wrong size) is deleted and downloaded again.
    """
    dest = Path(dest)
    record = recorded_hash_path(dest)
    if sha256 is None and dest.exists():
        recorded = record.read_text().strip() if record.exists() else None
        actual_size = dest.stat().st_size
        if recorded is not None and (size is None or actual_size == size):
            actual = file_sha256(dest)
            if actual == recorded:
                logger.info("%s matches its recorded sha256: not downloading again", dest)
                return actual
            logger.warning("%s has sha256 %s, not the recorded %s: deleting the damaged copy "
                           "and downloading again", dest, actual, recorded)
        else:
            logger.warning("%s has no recorded sha256 (or the wrong size): downloading again",
                           dest)
        dest.unlink()
        record.unlink(missing_ok=True)
    download(url, dest, sha256=sha256, size=size, progress=progress, timeout=timeout)
    actual = sha256 or file_sha256(dest)
    if sha256 is None:
        write_bytes_atomically(record, f"{actual}\n".encode())
        logger.info("recorded sha256 %s of %s in %s", actual, dest.name, record)
    return actual


def _normalize_sha256(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    normalized = sha256.strip().lower()
    if not _SHA256_HEX.fullmatch(normalized):
        raise ValueError(f"sha256 must be 64 hexadecimal digits, got {sha256!r}")
    return normalized


def _already_there(dest: Path, expected: str | None) -> bool:
    if not dest.exists():
        return False
    if expected is None:
        logger.info("%s exists and no sha256 was given: not downloading again", dest)
        return True
    actual = file_sha256(dest)
    if actual == expected:
        logger.info("%s exists with the expected sha256: not downloading again", dest)
        return True
    # Kept until the new download is verified; os.replace then overwrites it.
    logger.warning("%s exists with sha256 %s, not %s: downloading again", dest, actual, expected)
    return False


def _fetch(
    url: str, part: Path, expected: str | None, chunk_size: int, progress: bool, timeout: float
) -> _Fetched:
    """One HTTP attempt, appending to ``part`` when the server honours the Range."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        with err:
            if err.code == 416 and offset:
                return _range_not_satisfiable(url, part, offset, expected, err.headers)
            raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", err)
        raise DownloadError(f"{url}: cannot connect: {reason}") from None
    with response:
        offset, total = _start_offset(url, response, offset)
        return _stream(url, response, part, offset, total, chunk_size, progress)


def _range_not_satisfiable(
    url: str, part: Path, offset: int, expected: str | None, headers: Message
) -> _Fetched:
    """HTTP 416 on resume: the ``.part`` file is either complete already or unusable."""
    match = _CONTENT_RANGE.fullmatch(headers.get("Content-Range", "") or "")
    total = int(match.group(3)) if match and match.group(3) != "*" else None
    actual = file_sha256(part)
    if actual == expected or (expected is None and total == offset):
        logger.info("%s: the partial file already holds all %d bytes", url, offset)
        return _Fetched(complete=True, sha256=actual)
    logger.warning("%s: server refused to resume at byte %d; starting over", url, offset)
    return _Fetched(complete=False)


def _start_offset(
    url: str, response: http.client.HTTPResponse, offset: int
) -> tuple[int, int | None]:
    """Return (offset to write at, total size if known) from the response status."""
    length = response.headers.get("Content-Length")
    body = int(length) if length and length.isdigit() else None
    if response.status == 200:
        if offset:
            logger.warning("%s: server ignored the Range request; restarting from byte 0", url)
        return 0, body
    if response.status == 206:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
        start = int(match.group(1)) if match and match.group(1) else None
        if start != offset:
            raise DownloadError(
                f"{url}: asked for bytes from {offset}, server sent "
                f"Content-Range {response.headers.get('Content-Range')!r}"
            )
        total = int(match.group(3)) if match.group(3) != "*" else None
        return offset, total
    raise DownloadError(f"{url}: unexpected HTTP status {response.status} {response.reason}")


def _stream(
    url: str,
    response: http.client.HTTPResponse,
    part: Path,
    offset: int,
    total: int | None,
    chunk_size: int,
    progress: bool,
) -> _Fetched:
    """Copy the body to ``part`` from ``offset`` on, hashing the whole file as it grows."""
    hasher = hashlib.sha256()
    mode = "r+b" if offset else "wb"
    with part.open(mode) as handle:
        if offset:
            _hash_prefix(handle, offset, hasher)
        handle.seek(offset)
        handle.truncate()
        bar = tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=part.name,
            disable=not progress,
        )
        with bar:
            received = _copy_body(url, response, handle, hasher, bar, chunk_size, part)
        handle.flush()
        os.fsync(handle.fileno())
    _check_length(url, response, received, part)
    return _Fetched(complete=True, sha256=hasher.hexdigest())


def _hash_prefix(handle: BinaryIO, size: int, hasher: Hasher) -> None:
    handle.seek(0)
    remaining = size
    while remaining:
        block = handle.read(min(_HASH_BLOCK, remaining))
        if not block:
            break
        hasher.update(block)
        remaining -= len(block)


def _copy_body(
    url: str,
    response: http.client.HTTPResponse,
    handle: BinaryIO,
    hasher: Hasher,
    bar: tqdm,
    chunk_size: int,
    part: Path,
) -> int:
    received = 0
    while True:
        try:
            chunk = response.read(chunk_size)
        except (OSError, http.client.HTTPException) as err:
            handle.flush()
            raise DownloadError(
                f"{url}: transfer broke off after {received} bytes ({err!r}); "
                f"{part} is kept, run again to resume"
            ) from None
        if not chunk:
            return received
        handle.write(chunk)
        hasher.update(chunk)
        received += len(chunk)
        bar.update(len(chunk))


def _check_length(url: str, response: http.client.HTTPResponse, received: int, part: Path) -> None:
    # http.client returns b"" when the peer closes early, so count bytes ourselves.
    length = response.headers.get("Content-Length")
    if length and length.isdigit() and received != int(length):
        raise DownloadError(
            f"{url}: connection closed after {received} of {length} bytes; "
            f"{part} is kept, run again to resume"
        )


def safe_extract(archive: Path, dest_dir: Path, *, pattern: str = SHARDS) -> list[Path]:
    """Extract the regular files whose base name fully matches ``pattern``; return them sorted.

    Members are written flat into ``dest_dir`` by base name. Any member with an
    absolute path, a ``..`` component, or that is a link, device or other
    special file raises UnsafeArchiveError, whether or not it matches. A
    damaged archive raises CorruptArchiveError. On any error the files this
    call extracted are removed, so a failed extraction leaves nothing half done.
    """
    return [path for path, _ in _extract(Path(archive), Path(dest_dir), pattern)]


@dataclass(frozen=True)
class ExtractedFile:
    """One member taken out of an archive, with its size and sha256."""

    path: Path
    size: int
    sha256: str


EXTRACTION_RECORD = ".extracted.json"


def extract_verified(archive: Path, dest_dir: Path, *, archive_sha256: str
                     ) -> list[ExtractedFile]:
    """``safe_extract`` that reuses a complete earlier extraction of the same archive.

    ``dest_dir/.extracted.json`` records the archive's sha256 and each member's size and
    sha256; when it matches and every file has its size, nothing is extracted again. A
    cached archive found damaged is deleted (with its recorded hash), so the next run
    downloads it afresh.
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    record_path = dest_dir / EXTRACTION_RECORD
    reused = _reuse_extraction(record_path, dest_dir, archive_sha256, SHARDS)
    if reused is not None:
        logger.info("%s: reusing the %d files extracted before", archive, len(reused))
        return reused
    record_path.unlink(missing_ok=True)
    try:
        extracted = _extract(archive, dest_dir, SHARDS)
    except CorruptArchiveError as err:
        archive.unlink(missing_ok=True)
        recorded_hash_path(archive).unlink(missing_ok=True)
        raise CorruptArchiveError(
            f"{err}; the damaged archive was deleted, run again to download it afresh"
        ) from None
    files = [ExtractedFile(path, path.stat().st_size, digest) for path, digest in extracted]
    write_json_atomically(record_path, {
        "archive_sha256": archive_sha256,
        "pattern": SHARDS,
        "members": [{"name": f.path.name, "size": f.size, "sha256": f.sha256} for f in files],
    })
    return files


def _reuse_extraction(
    record_path: Path, dest_dir: Path, archive_sha256: str, pattern: str
) -> list[ExtractedFile] | None:
    if not record_path.is_file():
        return None
    try:
        record = read_json(record_path)
        if record["archive_sha256"] != archive_sha256 or record["pattern"] != pattern:
            return None
        files = [ExtractedFile(dest_dir / m["name"], int(m["size"]), str(m["sha256"]))
                 for m in record["members"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if all(f.path.is_file() and f.path.stat().st_size == f.size for f in files):
        return sorted(files, key=lambda f: f.path.name)
    return None


def _extract(archive: Path, dest_dir: Path, pattern: str) -> list[tuple[Path, str]]:
    """The extraction itself: (path, sha256) of each file written, sorted by path."""
    try:
        wanted = re.compile(pattern)
    except re.error as err:
        raise ValueError(f"invalid member pattern {pattern!r}: {err}") from None
    dest_dir.mkdir(parents=True, exist_ok=True)
    written: list[tuple[Path, str]] = []
    ignored: list[str] = []
    try:
        with _open_archive(archive) as tar:
            for member in _members(tar, archive):
                _check_member(member, archive)
                base = PurePosixPath(member.name).name
                if member.isdir():
                    continue
                if not wanted.fullmatch(base):
                    ignored.append(member.name)
                    continue
                written.append(_extract_member(tar, member, dest_dir / base, archive, written))
            _read_to_end(tar, archive)
    except BaseException:
        for path, _ in written:
            path.unlink(missing_ok=True)
        raise
    _log_extraction(archive, [path for path, _ in written], ignored)
    return sorted(written)


def _open_archive(archive: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive, "r:*")
    except (tarfile.ReadError, tarfile.CompressionError, EOFError, zlib.error) as err:
        raise CorruptArchiveError(f"{archive}: not a readable tar archive ({err})") from None


def _members(tar: tarfile.TarFile, archive: Path) -> Iterator[tarfile.TarInfo]:
    """Iterate members, turning decompression and header errors into CorruptArchiveError."""
    iterator = iter(tar)
    while True:
        try:
            member = next(iterator)
        except StopIteration:
            return
        except _ARCHIVE_READ_ERRORS as err:
            raise CorruptArchiveError(f"{archive}: damaged or truncated archive ({err})") from None
        yield member


def _read_to_end(tar: tarfile.TarFile, archive: Path) -> None:
    """Read past the tar end marker so the compressor checks its CRC and length trailer."""
    try:
        while tar.fileobj.read(_HASH_BLOCK):
            pass
    except _ARCHIVE_READ_ERRORS as err:
        raise CorruptArchiveError(f"{archive}: damaged or truncated archive ({err})") from None


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    name = member.name
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        problem = "has an absolute path"
    elif ".." in parts:
        problem = "has a '..' path component"
    elif member.issym() or member.islnk():
        problem = f"is a link to {member.linkname!r}"
    elif not (member.isreg() or member.isdir()):
        problem = "is a device or other special file"
    else:
        return
    raise UnsafeArchiveError(f"{archive}: refusing member {name!r}: it {problem}")


def _extract_member(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    target: Path,
    archive: Path,
    written: list[tuple[Path, str]],
) -> tuple[Path, str]:
    """Copy one member to ``target`` atomically, checking its size; its sha256."""
    if any(target == path for path, _ in written):
        raise UnsafeArchiveError(f"{archive}: two members would both extract to {target.name}")
    digests = []

    def copy(handle: BinaryIO) -> None:
        copied, digest = _copy_member(tar.extractfile(member), handle, archive, member.name)
        if copied != member.size:
            raise CorruptArchiveError(f"{archive}: member {member.name!r} is truncated "
                                      f"({copied} of {member.size} bytes)")
        digests.append(digest)

    write_atomically(target, copy)
    return target, digests[0]


def _copy_member(
    source: BinaryIO | None, handle: BinaryIO, archive: Path, name: str
) -> tuple[int, str]:
    if source is None:
        raise CorruptArchiveError(f"{archive}: member {name!r} has no data")
    copied = 0
    hasher = hashlib.sha256()
    while True:
        try:
            block = source.read(_HASH_BLOCK)
        except _ARCHIVE_READ_ERRORS as err:
            raise CorruptArchiveError(
                f"{archive}: damaged or truncated archive in member {name!r} ({err})"
            ) from None
        if not block:
            return copied, hasher.hexdigest()
        handle.write(block)
        hasher.update(block)
        copied += len(block)


def _log_extraction(archive: Path, written: list[Path], ignored: list[str]) -> None:
    if ignored:
        logger.info("%s: left %d members that do not match: %s", archive, len(ignored), ignored)
    if not written:
        logger.warning("%s: no member matched; nothing extracted", archive)
    else:
        logger.info("%s: extracted %d files", archive, len(written))
