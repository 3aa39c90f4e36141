"""Cleaning: validate records, assign the train/val split, count what was skipped or odd.

``RecordCleaner`` takes the items a reader yields for one raw file (or one byte range
of it) and keeps the valid records, each with its location (``shard``, ``record``) and
split, while counting bad records by reason, non-record chunks by kind and reader
quirks by name. ``clean_file`` runs it over a whole file held in memory (tests, small
inputs); the story table (``backstory.data.corpus.story_table``) runs it task by task
into partitions. ``merge_reports`` folds per-file rows into the ingest report and the
corpus fingerprint that later stages record.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from backstory.data.corpus.readers import EmptyChunk, RawItem, read_records
from backstory.data.corpus.schema import BadRecordError, normalize_line_endings, validate_record
from backstory.data.corpus.splits import SplitRule

logger = logging.getLogger(__name__)

ON_BAD_RECORD = ("raise", "skip")
# One encoder for every record: building it per record costs more than the encoding.
_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"))
TABLE_COLUMNS = (
    "story", "summary", "words", "features", "random_sentence", "extra_fields",
    "source", "source_bits", "shard", "record", "split",
)


def check_on_bad_record(on_bad_record: str) -> None:
    """Raise ValueError unless the bad-record policy is one we know."""
    if on_bad_record not in ON_BAD_RECORD:
        raise ValueError(
            f"ingest.on_bad_record must be one of {ON_BAD_RECORD}, got {on_bad_record!r}"
        )


class RecordCleaner:
    """Validates the reader items of one raw file (or byte range) and counts them.

    ``take`` returns the cleaned record to keep, or None. Under
    ``on_bad_record="raise"`` the first bad record raises its BadRecordError (it names
    the file, record and reason); under ``"skip"`` it is counted by reason. ``limit``
    stops keeping after that many records (``done`` turns True).
    """

    def __init__(
        self, name: str, *, on_bad_record: str, split: SplitRule, role: str = "train",
        limit: int | None = None,
    ) -> None:
        check_on_bad_record(on_bad_record)
        self.name = name
        self.role = role
        self.on_bad_record = on_bad_record
        self.split = split
        self.limit = limit
        self.n_read = 0
        self.n_kept = 0
        self.n_val = 0
        self.skipped: Counter[str] = Counter()
        self.non_records: Counter[str] = Counter()
        self.quirks: Counter[str] = Counter()
        self._hasher = hashlib.sha256()

    @property
    def done(self) -> bool:
        return self.limit is not None and self.n_kept >= self.limit

    def take(self, item: RawItem) -> dict[str, Any] | None:
        if isinstance(item.value, EmptyChunk):
            self.non_records[item.value.kind] += 1
            self.quirks.update(item.quirks)
            return None
        self.n_read += 1
        try:
            if isinstance(item.value, BadRecordError):
                raise item.value
            record = validate_record(item.value, self.name, item.index)
        except BadRecordError as err:
            if self.on_bad_record == "raise":
                raise
            self.skipped[err.reason] += 1
            return None
        quirks = list(item.quirks)
        for key in ("story", "summary"):
            normalized = normalize_line_endings(record[key])
            if normalized != record[key]:
                record[key] = normalized.strip() if key == "story" else normalized
                if "crlf" not in quirks:
                    quirks.append("crlf")
        self.quirks.update(quirks)
        record["shard"] = self.name
        record["record"] = item.index
        record["split"] = self.split.split_of(record["story"], self.name, self.role)
        self.n_kept += 1
        self.n_val += record["split"] == "val"
        self._hasher.update(_CANONICAL_JSON.encode(record).encode("utf-8"))
        self._hasher.update(b"\n")
        return record

    @property
    def digest(self) -> str:
        """sha256 over the kept records in order (see ``records_digest``)."""
        return self._hasher.hexdigest()

    def summary(self, file_error: str | None = None) -> dict[str, Any]:
        """Counts of this file or range (a report row without the file's identity)."""
        if file_error is not None:
            return {
                "name": self.name, "n_read": 0, "n_kept": 0, "n_train": 0, "n_val": 0,
                "skipped": {file_error: 1}, "empty_chunks": 0, "leading_fragments": 0,
                "quirks": {}, "file_error": file_error, "digest": records_digest([]),
                "stopped_early": False,
            }
        return {
            "name": self.name,
            "n_read": self.n_read,
            "n_kept": self.n_kept,
            "n_train": self.n_kept - self.n_val,
            "n_val": self.n_val,
            "skipped": dict(sorted(self.skipped.items())),
            "empty_chunks": self.non_records["empty_chunk"],
            "leading_fragments": self.non_records["leading_fragment"],
            "quirks": dict(sorted(self.quirks.items())),
            "file_error": None,
            "digest": self.digest,
            "stopped_early": self.done,
        }


@dataclass
class CleanResult:
    """What cleaning one whole raw file in memory produced (``clean_file``).

    ``n_read`` counts records parsed from the file (empty text chunks are not
    records: they are counted in ``empty_chunks``). ``skipped`` counts skipped
    records by reason. When the whole file is rejected (``file_error`` set,
    only with ``on_bad_record="skip"``), ``n_read`` is 0 and ``skipped`` holds
    ``{reason: 1}``: one file, not a number of records.
    """

    name: str
    records: list[dict[str, Any]] = field(default_factory=list)
    row: dict[str, Any] = field(default_factory=dict)

    @property
    def n_read(self) -> int:
        return self.row["n_read"]

    @property
    def n_kept(self) -> int:
        return len(self.records)

    @property
    def skipped(self) -> dict[str, int]:
        return self.row["skipped"]

    @property
    def empty_chunks(self) -> int:
        return self.row["empty_chunks"]

    @property
    def quirks(self) -> dict[str, int]:
        return self.row["quirks"]

    @property
    def file_error(self) -> str | None:
        return self.row["file_error"]

    @property
    def digest(self) -> str:
        return self.row["digest"]

    def summary(self) -> dict[str, Any]:
        """The per-file row of the ingest report (everything but the records)."""
        return dict(self.row)


def clean_file(
    name: str,
    data: bytes,
    *,
    on_bad_record: str,
    split: SplitRule,
    role: str = "train",
) -> CleanResult:
    """Validate every record of one raw file held in memory and assign its ``split``.

    ``on_bad_record="raise"`` re-raises the first BadRecordError; ``"skip"`` counts bad
    records by reason and rejects a file that is bad as a whole (see CleanResult).
    """
    check_on_bad_record(on_bad_record)
    cleaner = RecordCleaner(name, on_bad_record=on_bad_record, split=split, role=role)
    records = []
    try:
        for item in read_records(name, data):
            kept = cleaner.take(item)
            if kept is not None:
                records.append(kept)
    except BadRecordError as err:
        # Record errors only escape under "raise"; file errors carry no index.
        if err.index is not None or on_bad_record == "raise":
            raise
        logger.warning("skipping the whole file: %s", err)
        return CleanResult(name, [], cleaner.summary(file_error=err.reason))
    result = CleanResult(name, records, cleaner.summary())
    log_row(result.row)
    return result


def log_row(row: dict[str, Any]) -> None:
    """One log line per cleaned file: what was kept, and what was skipped."""
    if row["skipped"]:
        logger.warning("%s: kept %d of %d records, skipped %s",
                       row["name"], row["n_kept"], row["n_read"], row["skipped"])
    else:
        logger.info("%s: kept %d of %d records", row["name"], row["n_kept"], row["n_read"])


def records_digest(records: Iterable[dict[str, Any]]) -> str:
    """sha256 hex over the records in order, each as canonical JSON plus a newline.

    Canonical JSON: keys sorted, no spaces, UTF-8 (not ASCII escapes).
    """
    hasher = hashlib.sha256()
    encode = _CANONICAL_JSON.encode
    for record in records:
        hasher.update(encode(record).encode("utf-8"))
        hasher.update(b"\n")
    return hasher.hexdigest()


def combine_digests(digests: Sequence[str]) -> str:
    """The digest of a file read as byte ranges: its one range's, or a hash of them all."""
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def to_columns(records: Iterable[dict[str, Any]]) -> dict[str, list[Any]]:
    """Flatten cleaned records into the stories-table columns (see docs/architecture.md).

    The instruction prompt is not a column: it is synthesized downstream.
    """
    columns: dict[str, list[Any]] = {name: [] for name in TABLE_COLUMNS}
    for record in records:
        instruction = record["instruction"]
        columns["words"].append(instruction["words"])
        columns["features"].append(instruction["features"])
        for name in ("story", "summary", "random_sentence", "extra_fields", "source",
                     "source_bits", "shard", "record", "split"):
            columns[name].append(record[name])
    return columns


_REPORT_ROW_KEYS = (
    "name", "n_read", "n_kept", "n_train", "n_val", "skipped", "empty_chunks",
    "leading_fragments", "quirks", "file_error", "digest",
)
_COUNT_KEYS = ("n_read", "n_kept", "n_train", "n_val", "empty_chunks", "leading_fragments")


def merge_rows(name: str, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One file's row from the rows of its byte ranges, in order."""
    errors = [row["file_error"] for row in rows if row["file_error"] is not None]
    if errors:
        return dict(rows[[row["file_error"] for row in rows].index(errors[0])], name=name)
    merged: dict[str, Any] = {"name": name}
    for key in _COUNT_KEYS:
        merged[key] = sum(row[key] for row in rows)
    for key in ("skipped", "quirks"):
        total: Counter[str] = Counter()
        for row in rows:
            total.update(row[key])
        merged[key] = dict(sorted(total.items()))
    merged["file_error"] = None
    merged["digest"] = combine_digests([row["digest"] for row in rows])
    merged["stopped_early"] = any(row.get("stopped_early") for row in rows)
    return merged


def merge_reports(
    per_file: Sequence[dict[str, Any]],
    *,
    split: dict[str, Any] | None = None,
    ignored: Sequence[dict[str, str]] = (),
) -> dict[str, Any]:
    """Fold per-file rows (``CleanResult.summary()``) into the ingest report.

    Skips are reported apart: ``skipped_records`` by reason for bad records,
    ``skipped_files`` by reason for files rejected as a whole; ``quirks`` totals what
    the readers handled (see ``readers.QUIRKS``); ``ignored`` lists the files of the
    source that were not read, with why. The corpus fingerprint is a sha256 over
    ``name<TAB>digest`` lines in file order, so it changes with any kept record, its
    split, or the file order.
    """
    for position, row in enumerate(per_file):
        missing = [key for key in _REPORT_ROW_KEYS if key not in row]
        if missing:
            raise ValueError(f"ingest report row {position} lacks keys {missing}")
    skipped_records: Counter[str] = Counter()
    skipped_files: Counter[str] = Counter()
    quirks: Counter[str] = Counter()
    fingerprint = hashlib.sha256()
    for row in per_file:
        target = skipped_files if row["file_error"] is not None else skipped_records
        target.update(row["skipped"])
        quirks.update(row["quirks"])
        fingerprint.update(f"{row['name']}\t{row['digest']}\n".encode())
    report = {
        "n_files": len(per_file),
        "n_read": sum(row["n_read"] for row in per_file),
        "n_kept": sum(row["n_kept"] for row in per_file),
        "n_train": sum(row["n_train"] for row in per_file),
        "n_val": sum(row["n_val"] for row in per_file),
        "n_skipped_records": sum(skipped_records.values()),
        "skipped_records": dict(sorted(skipped_records.items())),
        "skipped_files": dict(sorted(skipped_files.items())),
        "empty_chunks": sum(row["empty_chunks"] for row in per_file),
        "leading_fragments": sum(row["leading_fragments"] for row in per_file),
        "quirks": dict(sorted(quirks.items())),
        "corpus_fingerprint": fingerprint.hexdigest(),
        "files": [dict(row) for row in per_file],
        "files_ignored": [dict(entry) for entry in ignored],
    }
    if split is not None:
        report["split"] = dict(split)
    return report
