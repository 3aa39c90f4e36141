"""Per-file cleaning: validate records, assign the train/val split, count what was skipped.

One raw file is cleaned at a time, so memory stays bounded by one shard.
``clean_file`` returns the kept records and the counts; ``merge_reports``
folds the per-file summaries into the ingest report and the corpus
fingerprint that later stages record.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from backstory.data.corpus.readers import EmptyChunk, read_records
from backstory.data.corpus.schema import BadRecordError, validate_record

logger = logging.getLogger(__name__)

ON_BAD_RECORD = ("raise", "skip")
DEFAULT_SPLIT_SALT = "backstory-split-v1"
SPLITS = ("train", "val")
# One encoder for every record: building it per record costs more than the encoding.
_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"))
TABLE_COLUMNS = ("story", "summary", "words", "features", "source", "shard", "record", "split")


@dataclass
class CleanResult:
    """What cleaning one raw file produced.

    ``n_read`` counts records parsed from the file (empty text chunks are not
    records: they are counted in ``empty_chunks``). ``skipped`` counts skipped
    records by reason. When the whole file is rejected (``file_error`` set,
    only with ``on_bad_record="skip"``), ``n_read`` is 0 and ``skipped`` holds
    ``{reason: 1}``: one file, not a number of records.
    """

    name: str
    records: list[dict[str, Any]] = field(default_factory=list)
    n_read: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    empty_chunks: int = 0
    file_error: str | None = None
    digest: str = ""

    @property
    def n_kept(self) -> int:
        return len(self.records)

    def summary(self) -> dict[str, Any]:
        """The per-file row of the ingest report (everything but the records)."""
        n_val = sum(1 for record in self.records if record["split"] == "val")
        return {
            "name": self.name,
            "n_read": self.n_read,
            "n_kept": self.n_kept,
            "n_train": self.n_kept - n_val,
            "n_val": n_val,
            "skipped": dict(sorted(self.skipped.items())),
            "empty_chunks": self.empty_chunks,
            "file_error": self.file_error,
            "digest": self.digest,
        }


def check_val_fraction(val_fraction: float) -> None:
    """Raise ValueError unless ``val_fraction`` is a number in [0, 1)."""
    is_number = isinstance(val_fraction, int | float) and not isinstance(val_fraction, bool)
    if not is_number or not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"split.val_fraction must be a number in [0, 1), got {val_fraction!r}")


def check_on_bad_record(on_bad_record: str) -> None:
    """Raise ValueError unless the bad-record policy is one we know."""
    if on_bad_record not in ON_BAD_RECORD:
        raise ValueError(
            f"ingest.on_bad_record must be one of {ON_BAD_RECORD}, got {on_bad_record!r}"
        )


def split_of(story: str, val_fraction: float, salt: str = DEFAULT_SPLIT_SALT) -> str:
    """Return ``"val"`` or ``"train"`` from a hash of the stripped story text.

    The side depends on the text alone (not on its position or on the corpus
    size), so identical stories always share a side and a growing or
    reordered corpus keeps every story where it was.
    """
    check_val_fraction(val_fraction)
    digest = hashlib.sha256(f"{salt}\x00{story.strip()}".encode()).digest()
    uniform = int.from_bytes(digest[:8], "big") / 2.0**64  # in [0, 1)
    return "val" if uniform < val_fraction else "train"


def clean_file(
    name: str,
    data: bytes,
    *,
    on_bad_record: str,
    val_fraction: float,
    split_salt: str = DEFAULT_SPLIT_SALT,
) -> CleanResult:
    """Validate every record of one raw file and assign its split.

    ``on_bad_record="raise"`` re-raises the first BadRecordError (it names the
    file, record and reason); ``"skip"`` counts bad records by reason and
    rejects a file that is bad as a whole (see CleanResult).
    """
    check_on_bad_record(on_bad_record)
    check_val_fraction(val_fraction)
    if not isinstance(split_salt, str):
        raise ValueError(f"the split salt must be a string, got {split_salt!r}")
    result = CleanResult(name=name)
    try:
        for index, item in read_records(name, data):
            _take(result, index, item, on_bad_record, val_fraction, split_salt)
    except BadRecordError as err:
        # Record errors only escape under "raise"; file errors carry no index.
        if err.index is not None or on_bad_record == "raise":
            raise
        logger.warning("skipping the whole file: %s", err)
        return CleanResult(
            name=name, skipped={err.reason: 1}, file_error=err.reason, digest=records_digest([])
        )
    result.digest = records_digest(result.records)
    _log_result(result)
    return result


def _take(
    result: CleanResult,
    index: int,
    item: Any,
    on_bad_record: str,
    val_fraction: float,
    split_salt: str,
) -> None:
    """Add one reader item to ``result``: a kept record, a counted skip, or an empty chunk."""
    if isinstance(item, EmptyChunk):
        result.empty_chunks += 1
        return
    result.n_read += 1
    try:
        if isinstance(item, BadRecordError):
            raise item
        record = validate_record(item, result.name, index)
    except BadRecordError as err:
        if on_bad_record == "raise":
            raise
        result.skipped[err.reason] = result.skipped.get(err.reason, 0) + 1
        return
    record["shard"] = result.name
    record["record"] = index
    record["split"] = split_of(record["story"], val_fraction, split_salt)
    result.records.append(record)


def _log_result(result: CleanResult) -> None:
    if result.skipped:
        logger.warning(
            "%s: kept %d of %d records, skipped %s",
            result.name,
            result.n_kept,
            result.n_read,
            dict(sorted(result.skipped.items())),
        )
    else:
        logger.info("%s: kept %d of %d records", result.name, result.n_kept, result.n_read)


def records_digest(records: list[dict[str, Any]]) -> str:
    """sha256 hex over the records in order, each as canonical JSON plus a newline.

    Canonical JSON: keys sorted, no spaces, UTF-8 (not ASCII escapes).
    """
    hasher = hashlib.sha256()
    encode = _CANONICAL_JSON.encode
    for record in records:
        hasher.update(encode(record).encode("utf-8"))
        hasher.update(b"\n")
    return hasher.hexdigest()


def to_columns(records: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Flatten cleaned records into the stories-table columns (see docs/architecture.md).

    The instruction prompt is not a column: it is synthesized downstream.
    """
    columns: dict[str, list[Any]] = {name: [] for name in TABLE_COLUMNS}
    for record in records:
        instruction = record["instruction"]
        columns["words"].append(instruction["words"])
        columns["features"].append(instruction["features"])
        for name in ("story", "summary", "source", "shard", "record", "split"):
            columns[name].append(record[name])
    return columns


_REPORT_ROW_KEYS = (
    "name",
    "n_read",
    "n_kept",
    "n_train",
    "n_val",
    "skipped",
    "empty_chunks",
    "file_error",
    "digest",
)


def merge_reports(per_file: list[dict[str, Any]]) -> dict[str, Any]:
    """Fold per-file summaries (``CleanResult.summary()``) into the ingest report.

    Skips are reported apart: ``skipped_records`` by reason for bad records,
    ``skipped_files`` by reason for files rejected as a whole. The corpus
    fingerprint is a sha256 over ``name<TAB>digest`` lines in file order, so it
    changes with any kept record, its split, or the file order.
    """
    for position, row in enumerate(per_file):
        missing = [key for key in _REPORT_ROW_KEYS if key not in row]
        if missing:
            raise ValueError(f"ingest report row {position} lacks keys {missing}")
    skipped_records: dict[str, int] = {}
    skipped_files: dict[str, int] = {}
    fingerprint = hashlib.sha256()
    for row in per_file:
        target = skipped_files if row["file_error"] is not None else skipped_records
        for reason, count in row["skipped"].items():
            target[reason] = target.get(reason, 0) + count
        fingerprint.update(f"{row['name']}\t{row['digest']}\n".encode())
    return {
        "n_files": len(per_file),
        "n_read": sum(row["n_read"] for row in per_file),
        "n_kept": sum(row["n_kept"] for row in per_file),
        "n_train": sum(row["n_train"] for row in per_file),
        "n_val": sum(row["n_val"] for row in per_file),
        "n_skipped_records": sum(skipped_records.values()),
        "skipped_records": dict(sorted(skipped_records.items())),
        "skipped_files": dict(sorted(skipped_files.items())),
        "empty_chunks": sum(row["empty_chunks"] for row in per_file),
        "corpus_fingerprint": fingerprint.hexdigest(),
        "files": [dict(row) for row in per_file],
    }
