"""The story table: the cleaned corpus as parquet partitions plus a manifest, one unit.

Layout of the folder (``data/02_intermediate/stories``)::

    manifest.json                       written last: partitions, hashes, report
    parts/<raw file>/<range>-<part>-<sha256 prefix>.parquet
    .work/<raw file>#<range>.json       progress of an unfinished build (then removed)

Building (``build_story_table``) cleans the raw corpus task by task: one task per JSON
shard, and one per 64 MiB byte range of a text file (``readers.text_ranges``), run in
worker processes (``ingest.workers``, 0: every core). Each task writes its partitions
of at most ``PART_RECORDS`` rows and then a marker in ``.work``; a killed build resumes
from the markers without redoing finished tasks. Every partition is named by its raw
file (so two raw files never share one, e.g. ``data00.json`` and ``data00.txt``) and by
its content hash, so new partitions never overwrite the ones the current manifest
names. ``manifest.json`` (the partitions with their sha256, the per-task results and
the ingest report with the corpus fingerprint) is replaced in one atomic rename at the
end; only then are partitions no longer named removed. Whatever stops a build (a kill,
a full disk, a bad record), the folder holds either the previous table, complete and
matching its report, or the new one.

Reading (``StoryTable``) checks each partition's sha256 against the manifest as it
loads it, and the export checks the table's fingerprint against the ingest report.
The results are the same bytes whatever the number of workers.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from backstory.core.errors import UserError
from backstory.core.files import (
    file_sha256,
    read_json,
    write_bytes_atomically,
    write_json_atomically,
)
from backstory.core.locks import FolderLock
from backstory.data.corpus import clean, readers, schema, splits
from backstory.data.corpus.clean import TABLE_COLUMNS, RecordCleaner, merge_reports, merge_rows
from backstory.data.corpus.raw_store import RawCorpus, RawFile
from backstory.data.corpus.schema import BadRecordError
from backstory.data.corpus.splits import SplitRule
from backstory.data.fingerprints import code_digest, sha256_of
from backstory.data.parallel import run_tasks, workers_for
from backstory.data.text import in_word_order
from backstory.variants import WORD_ORDERS

if TYPE_CHECKING:  # pandas is imported where frames are made: worker processes skip it
    import pandas as pd

logger = logging.getLogger(__name__)

FORMAT = "backstory-stories"
FORMAT_VERSION = 2  # 2: the source_bits column
MANIFEST = "manifest.json"
PARTS = "parts"
WORK = ".work"
PART_RECORDS = 20_000  # rows per partition: a few tens of MB in memory while written or read
RANGE_BYTES = 64 << 20  # a text file is cleaned in byte ranges of this size, in parallel
PARALLEL_BYTES = 32 << 20  # below this much raw data, automatic workers clean in-process
_SUFFIX = ".parquet"
SCHEMA = pa.schema([
    ("story", pa.string()),
    ("summary", pa.string()),
    ("words", pa.list_(pa.string())),
    ("features", pa.list_(pa.string())),
    ("random_sentence", pa.string()),
    ("extra_fields", pa.list_(pa.string())),
    ("source", pa.string()),
    ("source_bits", pa.float64()),  # null where the record has none (real data)
    ("shard", pa.string()),
    ("record", pa.int64()),
    ("split", pa.string()),
])
assert tuple(SCHEMA.names) == TABLE_COLUMNS


class StoryTableError(UserError, ValueError):
    """The story table is missing, unfinished, damaged or from another ingest."""


def _check_clean_settings(on_bad_record: str, max_stories_per_file: int | None) -> None:
    clean.check_on_bad_record(on_bad_record)
    limit = max_stories_per_file
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                              or limit < 1):
        raise ValueError(f"ingest.max_stories_per_file must be null or >= 1, got {limit!r}")


@dataclass(frozen=True)
class CleanSettings:
    """How raw records become table rows (the ``ingest`` and ``split`` parameters)."""

    on_bad_record: str
    split: SplitRule
    max_stories_per_file: int | None  # None: every story

    def __post_init__(self) -> None:
        _check_clean_settings(self.on_bad_record, self.max_stories_per_file)

    def describe(self) -> dict[str, Any]:
        return {"on_bad_record": self.on_bad_record, "split": self.split.describe(),
                "max_stories_per_file": self.max_stories_per_file}


@dataclass(frozen=True)
class IngestConfig:
    """The ``ingest`` parameters (conf/base/parameters_ingest.yml documents each key)."""

    on_bad_record: str
    max_stories_per_file: int | None
    workers: int

    def __post_init__(self) -> None:
        _check_clean_settings(self.on_bad_record, self.max_stories_per_file)

    def settings(self, split: SplitRule) -> CleanSettings:
        return CleanSettings(self.on_bad_record, split, self.max_stories_per_file)


@dataclass(frozen=True)
class CleanPlan:
    """What the clean node returns; the stories dataset builds the table from it."""

    raw: RawCorpus
    settings: CleanSettings
    workers: int = 0


@dataclass(frozen=True)
class _Task:
    """Clean one JSON shard, or one byte range of a text file."""

    key: str
    file: RawFile
    path: str
    fmt: str
    range_index: int
    start: int
    stop: int | None
    settings: CleanSettings
    identity: str


@functools.cache
def _code() -> str:
    """Digest of the code that turns raw bytes into table rows."""
    return code_digest(readers, schema, splits, clean, sys.modules[__name__])


def plan_tasks(raw: RawCorpus, settings: CleanSettings, *, range_bytes: int = RANGE_BYTES,
               part_records: int = PART_RECORDS) -> list[_Task]:
    """The cleaning tasks of ``raw``, in table order."""
    tasks = []
    for file in raw.files:
        path = raw.path(file.name)
        fmt = readers.detect_format(file.name, readers.read_head(path))
        if fmt == "json" or settings.max_stories_per_file is not None:
            ranges: list[tuple[int, int | None]] = [(0, None)]  # read in one pass
        else:
            ranges = readers.text_ranges(file.size, range_bytes)
        for index, (start, stop) in enumerate(ranges):
            identity = sha256_of({
                "code": _code(), "part_records": part_records,
                "file": {"name": file.name, "size": file.size, "sha256": file.sha256,
                         "role": file.role},
                "format": fmt, "range": [start, stop], "settings": settings.describe(),
            })
            tasks.append(_Task(f"{file.name}#{index:05d}", file, str(path), fmt, index, start,
                               stop, settings, identity))
    return tasks


def clean_task(task: _Task, folder: str, part_records: int = PART_RECORDS) -> dict:
    """Clean one task into partitions and record it done; its result (runs in a worker)."""
    settings = task.settings
    cleaner = RecordCleaner(task.file.name, on_bad_record=settings.on_bad_record,
                            split=settings.split, role=task.file.role,
                            limit=settings.max_stories_per_file)
    writer = PartitionWriter(Path(folder), task.file.name, task.range_index, part_records)
    try:
        items = readers.read_records(task.file.name, task.path, fmt=task.fmt,
                                     start=task.start, stop=task.stop)
        for item in items:
            record = cleaner.take(item)
            if record is not None:
                writer.add(record)
            if cleaner.done:
                break
        partitions = writer.close()
        row = cleaner.summary()
    except BadRecordError as err:
        writer.discard()
        # Record errors only escape under "raise"; file errors carry no index.
        if err.index is not None or settings.on_bad_record == "raise":
            raise
        logger.warning("skipping the whole file: %s", err)
        partitions, row = [], cleaner.summary(file_error=err.reason)
    except BaseException:
        writer.discard()
        raise
    result = {"key": task.key, "identity": task.identity, "row": row, "partitions": partitions}
    write_json_atomically(Path(folder) / WORK / f"{task.key}.json", result)
    return result


class PartitionWriter:
    """Collects kept records and writes them as parquet partitions of bounded size."""

    def __init__(self, folder: Path, file_name: str, range_index: int, part_records: int):
        self.folder = folder
        self.file_name = file_name
        self.range_index = range_index
        self.part_records = part_records
        self.rows: list[dict] = []
        self.written: list[dict] = []
        self.created: list[Path] = []  # files this writer made (others may belong to a table)

    def add(self, record: dict) -> None:
        self.rows.append(record)
        if len(self.rows) >= self.part_records:
            self._flush()

    def close(self) -> list[dict]:
        if self.rows:
            self._flush()
        return self.written

    def discard(self) -> None:
        """Remove what this writer made (its task failed or was rejected as a whole).

        A partition that was already there (the same content in the committed table) is
        left alone: the table that names it must stay whole.
        """
        for path in self.created:
            path.unlink(missing_ok=True)
        self.created, self.written, self.rows = [], [], []

    def _flush(self) -> None:
        table = pa.Table.from_pydict(clean.to_columns(self.rows), schema=SCHEMA)
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        data = buffer.getvalue()
        digest = _sha256(data)
        stem = f"{self.range_index:05d}-{len(self.written):03d}"
        relative = f"{PARTS}/{self.file_name}/{stem}-{digest[:16]}{_SUFFIX}"
        target = self.folder / relative
        if not (target.is_file() and file_sha256(target) == digest):
            write_bytes_atomically(target, data)
            self.created.append(target)
        n_val = sum(row["split"] == "val" for row in self.rows)
        self.written.append({
            "name": f"{self.file_name}/{stem}", "file": relative, "sha256": digest,
            "bytes": len(data), "rows": len(self.rows), "n_train": len(self.rows) - n_val,
            "n_val": n_val,
        })
        self.rows = []


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_story_table(folder: Path | str, plan: CleanPlan, *, range_bytes: int = RANGE_BYTES,
                      part_records: int = PART_RECORDS) -> StoryTable:
    """Clean ``plan.raw`` into the story table at ``folder`` (see the module docstring).

    ``range_bytes`` and ``part_records`` set the task and partition sizes (tests make
    them small); the table's records do not depend on them, its partition layout does.
    """
    folder = Path(folder)
    raw, settings = plan.raw, plan.settings
    settings.split.check_files([(file.name, file.role) for file in raw.files])
    with FolderLock(raw.folder, "the raw corpus"), FolderLock(folder, "the story table"):
        tasks = plan_tasks(raw, settings, range_bytes=range_bytes, part_records=part_records)
        earlier = _earlier_results(folder)
        results: dict[str, dict] = {}
        for task in tasks:
            result = earlier.get(task.key)
            if result is not None and result["identity"] == task.identity and _intact(
                    folder, result):
                results[task.key] = result
        pending = [task for task in tasks if task.key not in results]
        logger.info("stories: %d cleaning tasks, %d done before, %d to run",
                    len(tasks), len(results), len(pending))
        (folder / WORK).mkdir(parents=True, exist_ok=True)
        work = functools.partial(clean_task, folder=str(folder), part_records=part_records)
        workers = workers_for(plan.workers, sum(f.size for f in raw.files), PARALLEL_BYTES)
        for task, result in zip(pending, run_tasks(work, pending, workers=workers,
                                                   what="cleaning tasks"), strict=True):
            results[task.key] = result
        ordered = [results[task.key] for task in tasks]
        manifest = _manifest(raw, settings, tasks, ordered)
        write_json_atomically(folder / MANIFEST, manifest)
        _remove_unlisted(folder, manifest)
    report = manifest["report"]
    logger.info("ingest: %d records read, %d kept (%d train, %d val), %d skipped",
                report["n_read"], report["n_kept"], report["n_train"], report["n_val"],
                report["n_skipped_records"])
    return StoryTable(folder, manifest)


def _earlier_results(folder: Path) -> dict[str, dict]:
    """Task results a new build may reuse: the committed table's, then unfinished work."""
    found: dict[str, dict] = {}
    try:
        for result in read_json(folder / MANIFEST)["tasks"]:
            found[result["key"]] = result
    except (OSError, ValueError, KeyError, TypeError):
        pass
    work = folder / WORK
    if work.is_dir():
        for marker in sorted(work.glob("*.json")):
            try:
                result = read_json(marker)
                found[result["key"]] = result
            except (OSError, ValueError, KeyError, TypeError):
                marker.unlink(missing_ok=True)
    return found


def _intact(folder: Path, result: dict) -> bool:
    """Whether every partition of an earlier task is there with its recorded hash."""
    for partition in result["partitions"]:
        path = folder / partition["file"]
        if not path.is_file() or path.stat().st_size != partition["bytes"]:
            return False
        if file_sha256(path) != partition["sha256"]:
            logger.warning("%s is damaged: cleaning its task again", path)
            return False
    return True


def _manifest(raw: RawCorpus, settings: CleanSettings, tasks: list[_Task],
              results: list[dict]) -> dict:
    rows = []
    for file in raw.files:
        file_results = [r for t, r in zip(tasks, results, strict=True) if t.file.name == file.name]
        fmt = next(t.fmt for t in tasks if t.file.name == file.name)
        row = merge_rows(file.name, [r["row"] for r in file_results])
        row.update(format=fmt, role=file.role, size=file.size, sha256=file.sha256,
                   n_ranges=len(file_results))
        rows.append(row)
    report = merge_reports(rows, split=settings.split.describe(), ignored=raw.ignored)
    report["source"] = {"kind": raw.source, **raw.details}
    report["settings"] = {"on_bad_record": settings.on_bad_record,
                          "max_stories_per_file": settings.max_stories_per_file}
    partitions = [p for result in results for p in result["partitions"]]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fingerprint": report["corpus_fingerprint"],
        "partitions": partitions,
        "tasks": results,
        "report": report,
    }


def _remove_unlisted(folder: Path, manifest: dict) -> None:
    """Delete partitions the new manifest does not name, and the finished work."""
    keep = {folder / partition["file"] for partition in manifest["partitions"]}
    parts = folder / PARTS
    if parts.is_dir():
        for path in sorted(parts.rglob("*"), reverse=True):
            if path.is_file() and path not in keep:
                path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
    shutil.rmtree(folder / WORK, ignore_errors=True)


# ------------------------------------------------------------------------------ reading


class StoryTable(Mapping[str, Callable[[], "pd.DataFrame"]]):
    """A finished story table: partition name -> loader of its rows, in table order.

    Loading a partition checks its sha256 against the manifest. Picklable (the pickle
    holds the folder and the manifest), so worker processes read the same table.
    """

    def __init__(self, folder: Path | str, manifest: dict | None = None) -> None:
        self.folder = Path(folder)
        self.manifest = manifest if manifest is not None else _read_manifest(self.folder)
        self.partitions: list[dict] = list(self.manifest["partitions"])
        self._by_name = {partition["name"]: partition for partition in self.partitions}

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    @property
    def report(self) -> dict:
        return self.manifest["report"]

    def __getitem__(self, name: str) -> Callable[[], pd.DataFrame]:
        if name not in self._by_name:
            raise KeyError(name)
        return functools.partial(self.load_frame, name)

    def __iter__(self) -> Iterator[str]:
        return (partition["name"] for partition in self.partitions)

    def __len__(self) -> int:
        return len(self.partitions)

    def __getstate__(self) -> dict:
        return {"folder": str(self.folder), "manifest": self.manifest}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["folder"], state["manifest"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return (f"StoryTable({str(self.folder)!r}, {len(self)} partitions, "
                f"{self.report['n_kept']} stories, fingerprint {self.fingerprint[:12]})")

    def partition_names(self, split: str | None = None) -> list[str]:
        """Partitions in table order (only those holding ``split`` records, if given)."""
        if split is None:
            return list(self)
        _check_split(split)
        return [p["name"] for p in self.partitions if p[f"n_{split}"]]

    def count(self, split: str) -> int:
        """Records of ``split`` in the table."""
        _check_split(split)
        return sum(p[f"n_{split}"] for p in self.partitions)

    def load_table(self, name: str) -> pa.Table:
        """The rows of one partition, after checking the file against the manifest."""
        partition = self._by_name[name]
        path = self.folder / partition["file"]
        try:
            data = path.read_bytes()
        except OSError as err:
            raise StoryTableError(
                f"{path}: cannot read this partition of the story table ({err.strerror}); "
                "run the ingest pipeline again"
            ) from None
        if _sha256(data) != partition["sha256"]:
            raise StoryTableError(
                f"{path}: damaged (its sha256 is not the one {self.folder / MANIFEST} "
                "records); run the ingest pipeline again"
            )
        return pq.read_table(pa.BufferReader(data))

    def load_frame(self, name: str) -> pd.DataFrame:
        return self.load_table(name).to_pandas()  # pyarrow imports pandas on demand

    def records(self, split: str, names: list[str] | None = None) -> Iterator[dict]:
        """The records of one split as dicts, partition by partition, in table order."""
        _check_split(split)
        for name in self.partition_names(split) if names is None else names:
            table = self.load_table(name)
            yield from table.filter(pc.equal(table["split"], split)).to_pylist()

    def verify(self) -> None:
        """Check every partition file against the manifest (raises StoryTableError)."""
        for name in self:
            self.load_table(name)


def _check_split(split: str) -> None:
    if split not in splits.SPLITS:
        raise ValueError(f"split must be one of {splits.SPLITS}, got {split!r}")


def _read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        unfinished = (folder / WORK).is_dir()
        raise StoryTableError(
            f"{folder} holds no finished story table ({MANIFEST} is missing"
            + ("; an ingest was interrupted" if unfinished else "")
            + "); run the ingest pipeline (`kedro run --pipelines ingest`)"
        )
    try:
        manifest = read_json(path)
    except ValueError as err:
        raise StoryTableError(f"{path}: not readable JSON ({err}); run ingest again") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise StoryTableError(
            f"{path}: not a version-{FORMAT_VERSION} story table manifest; run ingest again"
        )
    return manifest


def story_texts(stories: Mapping[str, Callable[[], pd.DataFrame]], split: str,
                words: str = "forward") -> Iterator[str]:
    """The stories of one split, as written or with their word order reversed."""
    if words not in WORD_ORDERS:
        raise ValueError(f"words must be one of {WORD_ORDERS}, got {words!r}")
    return (in_word_order(r["story"], words) for r in iter_records(stories, split))


def iter_records(stories: Mapping[str, Callable[[], pd.DataFrame]], split: str
                 ) -> Iterator[dict]:
    """Records of one split from a ``StoryTable`` or any mapping of partition loaders."""
    if isinstance(stories, StoryTable):
        yield from stories.records(split)
        return
    for name in sorted(stories):
        frame = stories[name]()
        for row in frame[frame["split"] == split].itertuples(index=False):
            record = row._asdict()
            record["words"] = [str(w) for w in record["words"]]
            record["features"] = [str(f) for f in record["features"]]
            yield record
