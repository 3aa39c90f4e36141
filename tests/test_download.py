"""Tests for the resumable download (against a loopback HTTP server) and safe extraction."""

from __future__ import annotations

import hashlib
import io
import random
import socket
import tarfile
from pathlib import Path

import pytest

from backstory.data.corpus.download import (
    ChecksumError,
    CorruptArchiveError,
    DownloadError,
    UnsafeArchiveError,
    download,
    part_path,
    safe_extract,
)
from tests.loopback import ServerState

ARCHIVE_PATH = "/TinyStories_all_data.tar.gz"


def add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def add_special(tar: tarfile.TarFile, name: str, kind: bytes, linkname: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    tar.addfile(info)


def build_archive(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members:
            add_file(tar, name, data)
    return buffer.getvalue()


# Incompressible member bodies, so the archive is big enough to cut mid-transfer.
SHARDS = [
    ("data00.json", random.Random(0).randbytes(40_000)),
    ("TinyStories_all_data/data01.json", random.Random(1).randbytes(30_000)),
    ("README.md", b"not a shard"),
    ("data02.json.bak", b"not a shard either"),
]


@pytest.fixture
def archive_bytes() -> bytes:
    return build_archive(SHARDS)


def serve(server: tuple[str, ServerState], data: bytes) -> str:
    base, state = server
    state.files[ARCHIVE_PATH] = data
    return base + ARCHIVE_PATH


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- download ----------------------------------------------------------------


def test_full_download_verifies_and_extracts(server, archive_bytes, tmp_path) -> None:
    url = serve(server, archive_bytes)
    dest = tmp_path / "raw" / "all.tar.gz"
    assert download(url, dest, sha256=sha(archive_bytes), progress=False) == dest
    assert dest.read_bytes() == archive_bytes
    assert not part_path(dest).exists()
    assert server[1].ranges == [None]
    extracted = safe_extract(dest, tmp_path / "corpus")
    assert [p.name for p in extracted] == ["data00.json", "data01.json"]
    assert extracted[1].read_bytes() == SHARDS[1][1]
    assert sorted(p.name for p in (tmp_path / "corpus").iterdir()) == ["data00.json", "data01.json"]


def test_existing_verified_file_is_not_downloaded_again(server, archive_bytes, tmp_path) -> None:
    url = serve(server, archive_bytes)
    dest = tmp_path / "all.tar.gz"
    dest.write_bytes(archive_bytes)
    download(url, dest, sha256=sha(archive_bytes), progress=False)
    assert server[1].ranges == []


def test_existing_wrong_file_is_replaced(server, archive_bytes, tmp_path) -> None:
    url = serve(server, archive_bytes)
    dest = tmp_path / "all.tar.gz"
    dest.write_bytes(b"stale")
    download(url, dest, sha256=sha(archive_bytes), progress=False)
    assert dest.read_bytes() == archive_bytes


def test_resume_after_interruption(server, archive_bytes, tmp_path) -> None:
    url = serve(server, archive_bytes)
    dest = tmp_path / "all.tar.gz"
    server[1].cut_after = 5000
    with pytest.raises(DownloadError, match=r"after 5000 of \d+ bytes.*resume"):
        download(url, dest, sha256=sha(archive_bytes), chunk_size=1024, progress=False)
    assert part_path(dest).read_bytes() == archive_bytes[:5000]
    assert not dest.exists()
    download(url, dest, sha256=sha(archive_bytes), chunk_size=1024, progress=False)
    assert server[1].ranges == [None, "bytes=5000-"]
    assert dest.read_bytes() == archive_bytes
    assert not part_path(dest).exists()


def test_resume_without_checksum(server, archive_bytes, tmp_path) -> None:
    url = serve(server, archive_bytes)
    dest = tmp_path / "all.tar.gz"
    server[1].cut_after = 777
    with pytest.raises(DownloadError):
        download(url, dest, sha256=None, progress=False)
    download(url, dest, sha256=None, progress=False)
    assert dest.read_bytes() == archive_bytes


def test_server_ignoring_range_restarts_from_zero(server, archive_bytes, tmp_path) -> None:
    url = serve(server, archive_bytes)
    dest = tmp_path / "all.tar.gz"
    part_path(dest).write_bytes(b"garbage that must not stay in front")
    server[1].ignore_range = True
    download(url, dest, sha256=sha(archive_bytes), progress=False)
    assert server[1].ranges == ["bytes=35-"]
    assert dest.read_bytes() == archive_bytes


def test_complete_part_file_is_finished_on_416(server, archive_bytes, tmp_path) -> None:
    url = serve(server, archive_bytes)
    dest = tmp_path / "all.tar.gz"
    part_path(dest).write_bytes(archive_bytes)  # crashed after the last byte, before the rename
    download(url, dest, sha256=sha(archive_bytes), progress=False)
    assert server[1].ranges == [f"bytes={len(archive_bytes)}-"]
    assert dest.read_bytes() == archive_bytes


def test_oversized_part_file_on_416_starts_over(server, archive_bytes, tmp_path) -> None:
    url = serve(server, archive_bytes)
    dest = tmp_path / "all.tar.gz"
    part_path(dest).write_bytes(archive_bytes + b"junk")
    download(url, dest, sha256=None, progress=False)
    assert server[1].ranges == [f"bytes={len(archive_bytes) + 4}-", None]
    assert dest.read_bytes() == archive_bytes


def test_checksum_mismatch_deletes_the_download(server, archive_bytes, tmp_path) -> None:
    url = serve(server, archive_bytes)
    dest = tmp_path / "all.tar.gz"
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as info:
        download(url, dest, sha256=wrong, progress=False)
    assert info.value.expected == wrong
    assert info.value.actual == sha(archive_bytes)
    assert "all.tar.gz" in str(info.value)
    assert not dest.exists()
    assert not part_path(dest).exists()


@pytest.mark.parametrize(("path", "status"), [("/missing.tar.gz", "404"), ("/error", "500")])
def test_http_errors_name_url_and_status(server, tmp_path, path, status) -> None:
    url = server[0] + path
    with pytest.raises(DownloadError) as info:
        download(url, tmp_path / "x.tar.gz", sha256=None, progress=False)
    assert url in str(info.value)
    assert f"HTTP {status}" in str(info.value)
    assert not (tmp_path / "x.tar.gz").exists()


def test_unreachable_server(tmp_path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DownloadError, match="cannot connect"):
        download(f"http://127.0.0.1:{port}/a", tmp_path / "a", sha256=None, progress=False)


@pytest.mark.parametrize("bad", ["abc", "g" * 64, "0" * 63])
def test_malformed_checksum_argument(tmp_path, bad) -> None:
    with pytest.raises(ValueError, match="sha256"):
        download("http://127.0.0.1:1/a", tmp_path / "a", sha256=bad, progress=False)


# --- safe_extract ------------------------------------------------------------


def write_tar(path: Path, build) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        build(tar)
    return path


@pytest.mark.parametrize(
    ("build", "problem"),
    [
        (lambda tar: add_file(tar, "../evil.json", b"x"), "'..'"),
        (lambda tar: add_file(tar, "shards/../../data03.json", b"x"), "'..'"),
        (lambda tar: add_file(tar, "/abs/data01.json", b"x"), "absolute"),
        (lambda tar: add_special(tar, "data04.json", tarfile.SYMTYPE, "/etc/passwd"), "link"),
        (lambda tar: add_special(tar, "data05.json", tarfile.LNKTYPE, "data00.json"), "link"),
        (lambda tar: add_special(tar, "data06.json", tarfile.CHRTYPE), "device"),
    ],
)
def test_unsafe_members_are_refused(tmp_path, build, problem) -> None:
    def members(tar: tarfile.TarFile) -> None:
        add_file(tar, "data00.json", b"[]")
        build(tar)

    archive = write_tar(tmp_path / "evil.tar.gz", members)
    out = tmp_path / "deep" / "out"
    with pytest.raises(UnsafeArchiveError, match=problem) as info:
        safe_extract(archive, out)
    assert "evil.tar.gz" in str(info.value)
    assert list(out.iterdir()) == []  # the safe member extracted before is removed too
    assert not (tmp_path / "deep" / "evil.json").exists()
    assert not (tmp_path / "evil.json").exists()


def test_duplicate_base_names_are_refused(tmp_path) -> None:
    def members(tar: tarfile.TarFile) -> None:
        add_file(tar, "a/data00.json", b"[1]")
        add_file(tar, "b/data00.json", b"[2]")

    with pytest.raises(UnsafeArchiveError, match="both extract to data00.json"):
        safe_extract(write_tar(tmp_path / "dup.tar.gz", members), tmp_path / "out")


def test_custom_pattern(tmp_path, archive_bytes) -> None:
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(archive_bytes)
    extracted = safe_extract(archive, tmp_path / "out", pattern=r"README\.md")
    assert [p.name for p in extracted] == ["README.md"]


@pytest.mark.parametrize("cut", [20, 400, -9])
def test_truncated_archive_is_a_clear_error(tmp_path, archive_bytes, cut) -> None:
    archive = tmp_path / "cut.tar.gz"
    archive.write_bytes(archive_bytes[:cut])
    with pytest.raises(CorruptArchiveError, match="cut.tar.gz") as info:
        safe_extract(archive, tmp_path / "out")
    assert isinstance(info.value, ValueError)
    assert list((tmp_path / "out").iterdir()) == []


def test_corrupt_gzip_is_a_clear_error(tmp_path, archive_bytes) -> None:
    damaged = bytearray(archive_bytes)
    damaged[len(damaged) // 2] ^= 0xFF
    archive = tmp_path / "bad.tar.gz"
    archive.write_bytes(bytes(damaged))
    with pytest.raises(CorruptArchiveError, match="bad.tar.gz"):
        safe_extract(archive, tmp_path / "out")


def test_not_an_archive(tmp_path) -> None:
    archive = tmp_path / "plain.tar.gz"
    archive.write_bytes(b"this is no archive at all" * 40)
    with pytest.raises(CorruptArchiveError, match="plain.tar.gz"):
        safe_extract(archive, tmp_path / "out")
