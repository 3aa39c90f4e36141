"""Parallel, resumable export of a story-table split into a token store.

``write_token_store_parallel(path, documents, attrs=..., workers=...)`` encodes the
partitions of a ``StoryDocuments`` in worker processes (one partition at a time per
process, one sentencepiece thread each), spills each partition to raw files in
``.<store>.parts/`` next to the store with a marker holding their sizes and sha256,
then assembles the store from the parts in table order. Parts are independent of the
number of workers, so the store's bytes are too (and equal ``write_token_store`` of the
same documents). A killed export resumes: parts whose marker and files check out are
not encoded again; the work folder is tied to the inputs' identity (corpus fingerprint,
tokenizer, variant, text settings, code), so a stale one is discarded.

The corpus fingerprint recorded in ``attrs`` (from the ingest report) must equal the
story table's: a table changed after its report was written is refused.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from backstory.core.files import read_json, write_json_atomically
from backstory.data import documents as documents_module
from backstory.data import text, token_format, token_writer
from backstory.data.fingerprints import code_digest, sha256_of
from backstory.data.parallel import resolve_workers, run_tasks, workers_for
from backstory.data.token_format import TokenStoreError, check_attrs
from backstory.data.token_writer import SpillPart

logger = logging.getLogger(__name__)

IDENTITY_FILE = "identity.json"
PARALLEL_RECORDS = 10_000  # below this many documents, automatic workers encode in-process

# The documents of the current worker process, set once by the pool's initializer.
_DOCUMENTS: Any = None


def work_folder(path: Path) -> Path:
    """Where the parts of an unfinished export of ``path`` are kept."""
    return path.with_name(f".{path.name}.parts")


def write_token_store_parallel(path: Path | str, documents: Any, *, attrs: dict,
                               workers: int = 0) -> dict:
    """Encode ``documents`` into the token store at ``path``; its summary (see module doc)."""
    path = Path(path)
    header = check_attrs(attrs, path)
    if attrs["corpus_fingerprint"] != documents.fingerprint:
        raise TokenStoreError(
            f"{path}: the story table (corpus fingerprint {documents.fingerprint[:16]}) is not "
            f"the one the ingest report describes ({str(attrs['corpus_fingerprint'])[:16]}); "
            "it changed after the report was written. Run the ingest pipeline again"
        )
    work = work_folder(path)
    identity = sha256_of({
        "attrs": attrs, "documents": documents.identity(), "format": token_format.FORMAT_VERSION,
        "code": code_digest(documents_module, text, token_format, token_writer),
    })
    _prepare(work, identity)
    names = documents.parts
    parts: dict[int, SpillPart] = {}
    for index in range(len(names)):
        marker = work / f"part-{index:05d}.json"
        if marker.is_file():
            part = SpillPart.from_dict(read_json(marker), work)
            if part.intact():
                parts[index] = part
    pending = [index for index in range(len(names)) if index not in parts]
    n_workers = resolve_workers(workers_for(workers, documents.n_records, PARALLEL_RECORDS),
                                len(pending)) if pending else 1
    threads = 1 if n_workers > 1 else documents.num_threads
    logger.info("%s: %d partitions, %d encoded before, %d to encode in %d processes",
                path, len(names), len(parts), len(pending), n_workers)
    tasks = [(index, names[index], str(work), header.vocab_size, threads, str(path))
             for index in pending]
    for index, part in zip(pending, run_tasks(_encode_part, tasks, workers=n_workers,
                                              initializer=_set_documents,
                                              initargs=(documents,),
                                              what=f"{path.name} partitions"), strict=True):
        parts[index] = part
    summary = token_writer.assemble_token_store(path, [parts[i] for i in range(len(names))],
                                                attrs=attrs)
    shutil.rmtree(work, ignore_errors=True)
    return summary


def _prepare(work: Path, identity: str) -> None:
    """Keep the work folder only if it belongs to the same export."""
    record = work / IDENTITY_FILE
    try:
        same = read_json(record)["identity"] == identity
    except (OSError, ValueError, KeyError, TypeError):
        same = False
    if not same:
        if work.exists():
            logger.info("%s: parts of another export; starting over", work)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        write_json_atomically(record, {"identity": identity})


def _set_documents(documents: Any) -> None:
    global _DOCUMENTS
    _DOCUMENTS = documents


def _encode_part(task: tuple[int, str, str, int, int, str]) -> SpillPart:
    """Encode and spill one partition, then mark it done (runs in a worker)."""
    index, name, work, vocab_size, threads, store = task
    prefix = f"part-{index:05d}"
    batches = _DOCUMENTS.encode_part(name, num_threads=threads)
    part = token_writer.spill_batches(batches, Path(work), prefix, vocab_size,
                                      where=f"{store}: partition {name}")
    write_json_atomically(Path(work) / f"{prefix}.json",
                          {k: v for k, v in part.to_dict().items() if k != "folder"})
    return part

