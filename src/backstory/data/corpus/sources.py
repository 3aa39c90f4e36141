"""Where a corpus comes from: the built-in storyworld, the published TinyStories files, or
a local folder, turned into a ``RawCorpusPlan`` (the files the raw corpus must hold).

The published files are pinned: each URL names a commit of the Hugging Face dataset
repository (not ``resolve/main``, whose files can change under the same name) and
carries the file's size and, where one is published, its sha256. Files without a
published hash are verified by size and their hash is recorded on the first download
and checked on every later run (``download.fetch_verified``).

``corpus.dataset`` picks a published set (``PUBLISHED``; docs/data.md).

A local folder (``source: local``) is read at its top level: every ``.json`` and ``.txt``
file (any case); everything else, subfolders and hidden files included, is listed in
the ingest report as ignored, with the reason.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

from backstory.core.errors import SettingError
from backstory.data.corpus import download, storyworld
from backstory.data.corpus.raw_store import RawCorpusPlan, RawFileSpec
from backstory.data.corpus.splits import role_from_name
from backstory.data.fingerprints import code_digest

logger = logging.getLogger(__name__)

SOURCES = ("storyworld", "tinystories", "local")
LOCAL_SUFFIXES = (".json", ".txt")
DEFAULT_HUB = "https://huggingface.co"

TINYSTORIES = "roneneldan/TinyStories"
TINYSTORIES_REVISION = "f54c09fd23315a6f9c86f9dc80f725de7d8f9c64"
INSTRUCT = "roneneldan/TinyStoriesInstruct"
INSTRUCT_REVISION = "1282fc1059eaf0aad1f30459a25530f44343f2a2"


@dataclass(frozen=True)
class PublishedFile:
    """One published file: repository, pinned revision, size and sha256 where published."""

    repo: str
    revision: str
    name: str
    size: int | None
    sha256: str | None
    role: str  # "train", or "valid" for the dataset's own validation file
    archive: bool = False  # a tarball of JSON shards

    def url(self, hub: str = DEFAULT_HUB) -> str:
        return f"{hub.rstrip('/')}/datasets/{self.repo}/resolve/{self.revision}/{self.name}"


def _tinystories(name: str, size: int | None, role: str, sha256: str | None = None,
                 archive: bool = False) -> PublishedFile:
    return PublishedFile(TINYSTORIES, TINYSTORIES_REVISION, name, size, sha256, role, archive)


def _instruct(name: str, role: str) -> PublishedFile:
    # The reference notes give these sizes only as 2.66 GB and 26.9 MB: not exact enough
    # to check, so the Content-Length is checked and the recorded sha256 guards reuse.
    return PublishedFile(INSTRUCT, INSTRUCT_REVISION, name, None, None, role)


PUBLISHED: dict[str, tuple[PublishedFile, ...]] = {
    "all_data": (
        _tinystories(
            "TinyStories_all_data.tar.gz", 1_608_001_638, "train",
            "26cf7605aca15bc4ea6fa637256400d9d01317b28ed296172b2d1dd160cd7699", archive=True,
        ),
    ),
    "v1": (
        _tinystories("TinyStories-train.txt", 1_924_281_556, "train"),
        _tinystories("TinyStories-valid.txt", 19_447_282, "valid"),
    ),
    "v2": (
        _tinystories("TinyStoriesV2-GPT4-train.txt", 2_227_753_162, "train"),
        _tinystories("TinyStoriesV2-GPT4-valid.txt", 22_502_601, "valid"),
    ),
    "instruct": (
        _instruct("TinyStories-Instruct-train.txt", "train"),
        _instruct("TinyStories-Instruct-valid.txt", "valid"),
    ),
}


@dataclass(frozen=True)
class CorpusConfig:
    """The ``corpus`` parameters (conf/base/parameters_ingest.yml documents each key)."""

    source: str
    n_stories: int
    seed: int
    shard_size: int
    dataset: str
    hub_url: str
    download_dir: str
    max_shards: int | None
    path: str | None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(
                f"corpus.source must be one of {', '.join(SOURCES)}; got {self.source!r}"
            )
        if self.source == "tinystories" and self.dataset not in PUBLISHED:
            raise ValueError(
                f"corpus.dataset must be one of {', '.join(PUBLISHED)}; got {self.dataset!r}"
            )
        if self.source == "local" and not self.path:
            raise ValueError("corpus.source is local but corpus.path is not set; set it to "
                             "the folder of TinyStories .json or .txt files to ingest")
        if self.max_shards is not None and (not isinstance(self.max_shards, int)
                                            or self.max_shards < 1):
            raise ValueError(f"corpus.max_shards must be null or >= 1, got {self.max_shards!r}")


def plan_corpus(config: CorpusConfig, *, workers: int, progress: bool = True
                ) -> RawCorpusPlan:
    """The raw files of the configured corpus (downloading published files first), read
    by ``workers`` processes (ingest.workers; 0: every core)."""
    if config.source == "storyworld":
        return _storyworld_plan(config, workers)
    if config.source == "tinystories":
        return _published_plan(config, PUBLISHED[config.dataset], workers, progress)
    return _local_plan(config, workers)


def _storyworld_plan(config: CorpusConfig, workers: int) -> RawCorpusPlan:
    seed, n_stories = int(config.seed), int(config.n_stories)
    shards = storyworld.shard_plan(n_stories, int(config.shard_size))
    # The generator's own source is part of each shard's identity: an edited generator
    # must not reuse shards the old one wrote.
    generator = code_digest(*storyworld.MODULES)[:16]
    files = tuple(
        RawFileSpec(
            name, "train", f"storyworld:{generator}:seed={seed}:records={start}-{stop}",
            produce=functools.partial(storyworld.shard_bytes, seed, start, stop),
        )
        for name, start, stop in shards
    )
    logger.info("storyworld: %d stories (seed %d) in %d shards", n_stories, seed, len(files))
    return RawCorpusPlan("storyworld", files, workers=workers,
                         details={"n_stories": n_stories, "seed": seed})


def _published_plan(
    config: CorpusConfig, published: tuple[PublishedFile, ...], workers: int, progress: bool
) -> RawCorpusPlan:
    cache = Path(config.download_dir)
    files: list[RawFileSpec] = []
    urls = []
    for item in published:
        url = item.url(config.hub_url)
        urls.append(url)
        dest = cache / item.name
        digest = download.fetch_verified(url, dest, size=item.size, sha256=item.sha256,
                                         progress=progress)
        if item.archive:
            shards = download.extract_verified(dest, cache / "extracted", archive_sha256=digest)
            if config.max_shards is not None:
                shards = shards[: config.max_shards]
            files += [RawFileSpec(f.path.name, item.role, f"sha256:{f.sha256}",
                                  copy_from=str(f.path), link=True, sha256=f.sha256)
                      for f in shards]
        else:
            files.append(RawFileSpec(item.name, item.role, f"sha256:{digest}",
                                     copy_from=str(dest), link=True, sha256=digest))
    logger.info("tinystories %s: %d files", config.dataset, len(files))
    return RawCorpusPlan("tinystories", tuple(files), workers=workers,
                         details={"dataset": config.dataset, "urls": urls})


def list_local(folder: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """The files of ``folder`` to read, and (name, reason) for every entry left out."""
    read: list[Path] = []
    ignored: list[tuple[str, str]] = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            ignored.append((path.name, "hidden"))
        elif path.is_dir():
            ignored.append((path.name, "a subfolder: only the top level is read; point "
                                       "corpus.path at it to ingest it"))
        elif not path.is_file():
            ignored.append((path.name, "not a regular file"))
        elif path.suffix.lower() not in LOCAL_SUFFIXES:
            ignored.append((path.name, "not a .json or .txt file"))
        else:
            read.append(path)
    return read, ignored


def _local_plan(config: CorpusConfig, workers: int) -> RawCorpusPlan:
    folder = config.path
    if not folder or not Path(folder).is_dir():
        missing = "does not exist" if not Path(folder or "").exists() else "is not a folder"
        raise SettingError(f"corpus.path={folder!r} {missing}; it must name a folder of "
                           "TinyStories .json or .txt files (corpus.source: local)")
    paths, ignored = list_local(Path(folder))
    if not paths:
        raise ValueError(
            f"corpus.path {folder!r} holds no {' or '.join(LOCAL_SUFFIXES)} files "
            f"(ignored: {', '.join(name for name, _ in ignored) or 'nothing'})"
        )
    for name, reason in ignored:
        logger.warning("local: not reading %s (%s)", name, reason)
    files = []
    for path in paths:
        stat = path.stat()
        identity = f"file:{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        files.append(RawFileSpec(path.name, role_from_name(path.name), identity,
                                 copy_from=str(path)))
    logger.info("local: %d files from %s", len(files), folder)
    return RawCorpusPlan("local", tuple(files), tuple(ignored), workers=workers,
                         details={"path": str(Path(folder).resolve())})
