"""Atomic training checkpoints and the final model files.

A checkpoint is a directory ``<run_dir>/checkpoints/step_XXXXXXXX/`` holding
``model.safetensors`` (weights), ``optimizer.pt`` (optimizer state, tensors and plain
numbers only), ``state.json`` (step, data position, configs, lineage, RNG states) and
``SHA256SUMS`` (the sha256 of those three, in ``sha256sum`` format, written last).
It is written into a temporary sibling, fsynced, renamed into place, and only then
named by ``checkpoints/latest``: a crash at any point leaves the previous checkpoint
loadable. Loading verifies the sums first, so a truncated, overwritten or bit-flipped
file is refused by name; ``resumable_checkpoint`` then falls back to the newest intact
checkpoint (``KEEP_LAST`` keeps one in reserve for that). Loading never unpickles code:
safetensors, ``torch.load(weights_only=True)`` and JSON only.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.overrides import TorchFunctionMode

from backstory.core.errors import InputError, UserError
from backstory.core.files import (
    WriteError,
    file_mode,
    file_sha256,
    fsync_folder,
    write_file_atomically,
    write_text_atomically,
)
from backstory.lm.families import LanguageModel, new_model
from backstory.lm.model import ModelConfig

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "latest"
KEEP_LAST = 2  # checkpoints kept on disk: the newest, plus one in case it is damaged later
STABLE_DIR = "stable"  # wsd: a copy of the checkpoint at the end of the stable phase
WEIGHTS_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "state.json"
SUMS_FILE = "SHA256SUMS"
CHECKPOINT_FILES = (WEIGHTS_FILE, OPTIMIZER_FILE, STATE_FILE)  # what SUMS_FILE covers
MODEL_META_FILE = "model.json"
MODEL_FORMAT = "backstory-model"
MODEL_FORMAT_VERSION = 1
CHECKPOINT_FORMAT = "backstory-checkpoint"
CHECKPOINT_FORMAT_VERSION = 2  # 2: SHA256SUMS; version 1 checkpoints are trial-loaded
DAMAGED_PREFIX = "damaged-"  # a damaged checkpoint set aside by resumable_checkpoint
_STEP_DIR = re.compile(r"^step_(\d{8})$")
_SUM_LINE = re.compile(r"^([0-9a-f]{64}) [ *](\S+)$")
_TMP_PREFIX = ".tmp-"
_OLD_PREFIX = ".old-"


class CheckpointError(InputError):
    """A checkpoint or model directory is incomplete, damaged, or does not fit."""


class CheckpointWriteError(UserError, OSError):
    """A checkpoint could not be written (full disk, size limit, permissions)."""


@dataclass
class TrainedModel:
    """A trained model: its config, CPU float32 weights and what made it (``meta``)."""

    config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any]


@dataclass
class Checkpoint:
    """One loaded checkpoint; tensors are on the CPU."""

    path: Path
    step: int
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    state: dict[str, Any]


def checkpoint_name(step: int) -> str:
    """Directory name of the checkpoint taken after ``step`` optimizer steps."""
    return f"step_{step:08d}"


def checkpoints_dir(run_dir: Path) -> Path:
    """Where a run keeps its checkpoints."""
    return Path(run_dir) / CHECKPOINTS_DIR


def cpu_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Detached CPU copies of ``module``'s state, one storage per name.

    Copies rather than views: safetensors refuses tensors that share memory (the tied
    embedding and output matrix do), and later optimizer steps must not change them.
    """
    return cpu_copies(module.state_dict())


def cpu_copies(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies of ``tensors`` that share no memory with them or each other."""
    return {name: t.detach().to("cpu", copy=True).contiguous() for name, t in tensors.items()}


# --- writing -------------------------------------------------------------------------


def save_weights(tensors: dict[str, torch.Tensor], path: Path,
                 metadata: dict[str, str]) -> None:
    """Write a safetensors file with the mode of every other data file (safetensors
    alone makes it 0600); a failed write (full disk) is a ``WriteError`` naming ``path``."""
    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as err:
        raise WriteError(f"cannot write {path}: {err}") from err
    os.chmod(path, file_mode())


def save_checkpoint(
    run_dir: Path,
    *,
    step: int,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    state: dict[str, Any],
    keep: int = KEEP_LAST,
) -> Path:
    """Write checkpoint ``step`` atomically, point ``latest`` at it, keep the last ``keep``.

    A failed write (full disk, file size limit, permissions) raises
    ``CheckpointWriteError`` naming the file; the half-written folder is removed at once
    (a full disk needs the space back) and the checkpoints already there are untouched.
    """
    if keep < 1:
        raise ValueError(f"keep={keep} must be >= 1: the newest checkpoint is always kept")
    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(root)
    name = checkpoint_name(step)
    tmp = root / f"{_TMP_PREFIX}{name}"
    document = {**state, "step": step, "format": CHECKPOINT_FORMAT,
                "format_version": CHECKPOINT_FORMAT_VERSION}
    writers: tuple[tuple[str, Callable[[Path], object]], ...] = (
        (WEIGHTS_FILE, lambda f: save_weights(model_state, f, metadata={"step": str(step)})),
        (OPTIMIZER_FILE, lambda f: torch.save(optimizer_state, f)),
        (STATE_FILE, lambda f: f.write_text(json.dumps(document, sort_keys=True, indent=1))),
        # Last: the sums of what is on disk, so a damaged write shows as a mismatch.
        (SUMS_FILE, lambda f: f.write_text(
            "".join(f"{file_sha256(tmp / file)}  {file}\n" for file in CHECKPOINT_FILES))),
    )
    try:
        tmp.mkdir()
        for file, write in writers:
            _write_or_explain(tmp / file, write)
        fsync_folder(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    final = root / name
    _rename_into_place(tmp, final)
    _write_or_explain(root / LATEST_FILE, lambda f: write_text_atomically(f, name + "\n"))
    prune_checkpoints(run_dir, keep=keep)
    return final


def _write_or_explain(file: Path, write: Callable[[Path], object]) -> None:
    """``write(file)`` and fsync it; an I/O failure becomes a ``CheckpointWriteError``.

    The writers report a full disk three ways (OSError, safetensors' SafetensorError,
    torch's RuntimeError from its zip writer), none naming the file.
    """
    try:
        write(file)
        _fsync_file(file)
    except (OSError, RuntimeError, SafetensorError) as err:
        raise CheckpointWriteError(
            f"cannot write {file}: {err}. The checkpoints already in {file.parent.parent} "
            "are untouched: free disk space (or fix the folder's permissions) and run "
            "again to resume from the newest"
        ) from err


def _rename_into_place(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; an older ``final`` (from a run resumed before it) goes.

    Not ``write_folder_atomically``: that merges files into an existing folder, while a
    checkpoint replaces the old folder of its step whole.
    """
    old = None
    if final.exists():
        old = final.with_name(f"{_OLD_PREFIX}{final.name}")
        os.rename(final, old)
    os.rename(tmp, final)
    fsync_folder(final.parent)
    if old is not None:
        shutil.rmtree(old)


def _remove_leftovers(root: Path) -> None:
    """Delete temporary directories an interrupted save left behind."""
    for entry in root.iterdir():
        if entry.is_dir() and entry.name.startswith((_TMP_PREFIX, _OLD_PREFIX)):
            logger.info("Removing leftover of an interrupted checkpoint write: %s", entry)
            shutil.rmtree(entry)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def prune_checkpoints(run_dir: Path, keep: int = KEEP_LAST) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints up to ``latest``; return the removed."""
    latest = latest_checkpoint(run_dir)
    if latest is None:
        return []
    latest_step = _step_of(latest)
    steps = [p for p in list_checkpoints(run_dir) if _step_of(p) <= latest_step]
    doomed = steps[:-keep]
    for path in doomed:
        shutil.rmtree(path)
    return doomed


def discard_checkpoints_after(run_dir: Path, step: int) -> list[Path]:
    """Delete checkpoints newer than ``step`` (left by a crash between rename and ``latest``)."""
    doomed = [p for p in list_checkpoints(run_dir) if _step_of(p) > step]
    for path in doomed:
        logger.info("Removing checkpoint %s newer than the resumed step %d", path, step)
        shutil.rmtree(path)
    return doomed


def remove_checkpoints(run_dir: Path) -> None:
    """Delete every checkpoint of ``run_dir`` (a fresh start asked for with resume=false)."""
    root = checkpoints_dir(run_dir)
    if root.exists():
        shutil.rmtree(root)


def keep_stable(run_dir: Path, checkpoint: Path) -> Path:
    """Copy ``checkpoint`` to ``<run_dir>/stable/`` in place of the one there.

    A wsd run's checkpoint at the end of its stable phase outlives pruning there: a
    longer run of the same settings continues from it (``restore_checkpoint``) instead
    of training again from step 0. The copy is renamed into place whole.
    """
    root = Path(run_dir) / STABLE_DIR
    root.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(root)
    _copy_into(root, checkpoint)
    for other in root.iterdir():
        if other.name != checkpoint.name:
            shutil.rmtree(other)
    return root / checkpoint.name


def stable_checkpoint(run_dir: Path) -> Path | None:
    """The kept end-of-stable-phase checkpoint of ``run_dir``, if it has one."""
    root = Path(run_dir) / STABLE_DIR
    found = [p for p in root.iterdir() if _STEP_DIR.match(p.name)] if root.is_dir() else []
    return max(found, key=_step_of, default=None)


def restore_checkpoint(run_dir: Path, checkpoint: Path) -> Path:
    """Make the intact ``checkpoint`` the one ``run_dir`` resumes from: checkpoints after
    its step go, a copy of it takes its place and ``latest`` names it."""
    verify_checkpoint(checkpoint)
    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    discard_checkpoints_after(run_dir, _step_of(checkpoint))
    _copy_into(root, checkpoint)
    write_text_atomically(root / LATEST_FILE, checkpoint.name + "\n")
    return root / checkpoint.name


def _copy_into(root: Path, checkpoint: Path) -> None:
    tmp = root / f"{_TMP_PREFIX}{checkpoint.name}"
    shutil.copytree(checkpoint, tmp)
    fsync_folder(tmp)
    _rename_into_place(tmp, root / checkpoint.name)


# --- reading -------------------------------------------------------------------------


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint directories of ``run_dir``, oldest first."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(found, key=_step_of)


def _step_of(path: Path) -> int:
    match = _STEP_DIR.match(path.name)
    if match is None:
        raise CheckpointError(f"{path} is not a checkpoint directory (expected step_XXXXXXXX)")
    return int(match.group(1))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint ``latest`` names; without that file, the newest complete one, or None."""
    root = checkpoints_dir(run_dir)
    pointer = root / LATEST_FILE
    if not pointer.exists():
        found = list_checkpoints(run_dir)
        return found[-1] if found else None
    name = pointer.read_text(errors="replace").strip()
    if not _STEP_DIR.match(name):
        raise CheckpointError(f"{pointer} holds {name[:40]!r}, not a checkpoint name; "
                              "delete it to use the newest checkpoint")
    path = root / name
    if not path.is_dir():
        found = list_checkpoints(run_dir)
        advice = (f"write {found[-1].name} (the newest one present) into it" if found
                  else "delete it to start over: no checkpoint is left")
        raise CheckpointError(f"{pointer} names {path}, which does not exist; {advice}")
    return path


def resumable_checkpoint(run_dir: Path, *, repair: bool = True) -> Path | None:
    """The newest intact checkpoint of ``run_dir`` to resume from; None if there is none.

    Candidates are the checkpoint ``latest`` names, then the older ones, newest first
    (all of them, newest first, when ``latest`` is absent or names nothing usable); each
    is verified with ``verify_checkpoint``. Damaged ones are passed over. With
    ``repair`` (the one process that owns the run folder) they are moved aside to
    ``damaged-step_XXXXXXXX``, ``latest`` is pointed at the intact one, and one warning
    names what was damaged, so that later calls find a clean folder. Raises
    ``CheckpointError`` naming every damaged file when no intact checkpoint is left.
    """
    root = checkpoints_dir(run_dir)
    pointer_problem, candidates = _resume_candidates(run_dir)
    damaged: list[tuple[Path, CheckpointError]] = []
    for path in candidates:
        try:
            verify_checkpoint(path)
        except CheckpointError as err:
            damaged.append((path, err))
            continue
        if pointer_problem or damaged:
            _fall_back(root, path, pointer_problem, damaged, repair)
        return path
    problems = ([pointer_problem] if pointer_problem else []) + [str(e) for _, e in damaged]
    if damaged:
        raise CheckpointError(
            f"no intact checkpoint to resume in {root}: {'; '.join(problems)}. Restore the "
            "damaged files from a copy, or set train.resume=false to start over (that "
            f"deletes {root})"
        )
    if pointer_problem:
        raise CheckpointError(
            f"{pointer_problem}, and {root} holds no checkpoint; delete "
            f"{root / LATEST_FILE} to start over"
        )
    return None


def _resume_candidates(run_dir: Path) -> tuple[str | None, list[Path]]:
    """(what is wrong with ``latest`` or None, the checkpoints to try, newest first)."""
    root = checkpoints_dir(run_dir)
    newest_first = list_checkpoints(run_dir)[::-1]
    pointer = root / LATEST_FILE
    if not pointer.exists():
        return None, newest_first
    name = pointer.read_text(errors="replace").strip()
    if not _STEP_DIR.match(name):
        return f"{pointer} holds {name[:40]!r}, not a checkpoint name", newest_first
    if not (root / name).is_dir():
        return f"{pointer} names {name}, which does not exist", newest_first
    # Newer checkpoints than `latest` were renamed into place by a save that crashed
    # before moving `latest`: the pointer is the commit, so they are not resumed.
    step = _step_of(root / name)
    return None, [p for p in newest_first if _step_of(p) <= step]


def _fall_back(root: Path, intact: Path, pointer_problem: str | None,
               damaged: list[tuple[Path, CheckpointError]], repair: bool) -> None:
    """Report (once, from the repairing process) and repair a fallback to ``intact``."""
    if not repair:
        logger.debug("Passing over damaged checkpoints %s", [p.name for p, _ in damaged])
        return
    problems = [pointer_problem] if pointer_problem else []
    for path, err in damaged:
        aside = path.with_name(f"{DAMAGED_PREFIX}{path.name}")
        if aside.exists():
            shutil.rmtree(aside)
        os.rename(path, aside)
        problems.append(f"{err} (checkpoint moved to {aside}; delete it once you have "
                        "looked at it)")
    write_text_atomically(root / LATEST_FILE, intact.name + "\n")
    logger.warning("Resuming from %s, the newest intact checkpoint: %s", intact,
                   "; ".join(problems))


def read_state(path: Path) -> dict[str, Any]:
    """The ``state.json`` of checkpoint ``path`` (cheap: no tensors, not verified)."""
    file = Path(path) / STATE_FILE
    if not file.is_file():
        raise CheckpointError(f"{file} is missing")
    try:
        document = json.loads(file.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{file} is not valid JSON (damaged?): {err}") from err
    if not isinstance(document, dict) or not isinstance(document.get("step"), int):
        raise CheckpointError(f"{file} is not a checkpoint state (no integer 'step')")
    return document


def verify_checkpoint(path: Path, files: tuple[str, ...] = CHECKPOINT_FILES) -> None:
    """Raise ``CheckpointError`` naming the file unless ``files`` of checkpoint ``path``
    are exactly as written (their sha256 in ``SHA256SUMS``).

    A checkpoint from before checksums (format version 1) can only be checked by
    reading it: its files must load.
    """
    path = Path(path)
    for name in files:
        if not (path / name).is_file():
            raise CheckpointError(f"{path / name} is missing")
    sums = path / SUMS_FILE
    if not sums.is_file():
        if read_state(path).get("format_version", 1) != 1:
            raise CheckpointError(f"{sums} is missing")
        _load_files(path, files)
        return
    recorded = _read_sums(sums)
    for name in files:
        if name not in recorded:
            raise CheckpointError(f"{sums} records no sha256 for {name}")
        if file_sha256(path / name) != recorded[name]:
            raise CheckpointError(
                f"{path / name} is damaged: its sha256 differs from the one {sums} "
                "recorded when it was written"
            )


def _read_sums(file: Path) -> dict[str, str]:
    recorded = {}
    for number, line in enumerate(file.read_text(errors="replace").splitlines(), 1):
        match = _SUM_LINE.match(line)
        if match is None:
            raise CheckpointError(f"{file} line {number} is not '<sha256>  <file>' (damaged?)")
        recorded[match.group(2)] = match.group(1)
    return recorded


def _load_files(path: Path, files: tuple[str, ...]) -> None:
    for name in files:
        if name == WEIGHTS_FILE:
            load_weights(path / name)
        elif name == OPTIMIZER_FILE:
            _load_optimizer(path / name)
        else:
            read_state(path)


def load_weights(file: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a damaged file is a ``CheckpointError`` naming it."""
    try:
        return load_file(str(file), device="cpu")
    except Exception as err:  # any decoding failure means the same thing: a bad file
        raise CheckpointError(f"{file} cannot be read as safetensors weights: {err}") from err


def _load_optimizer(file: Path) -> dict[str, Any]:
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, foreign pickle, refused global, ...
        raise CheckpointError(f"{file} cannot be read as an optimizer state: {err}") from err


def load_checkpoint(path: Path) -> Checkpoint:
    """Verify and load checkpoint directory ``path`` onto the CPU."""
    path = Path(path)
    verify_checkpoint(path)
    state = read_state(path)
    return Checkpoint(
        path=path,
        step=state["step"],
        model_state=load_weights(path / WEIGHTS_FILE),
        optimizer_state=_load_optimizer(path / OPTIMIZER_FILE),
        state=state,
    )


def trained_at(path: Path, state: dict[str, Any]) -> TrainedModel:
    """The model a checkpoint holds (weights, config and meta), without the optimizer."""
    path = Path(path)
    verify_checkpoint(path, (WEIGHTS_FILE, STATE_FILE))
    try:
        config = ModelConfig.from_dict(state["model_config"])
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"{path / STATE_FILE}: bad model_config: {err}") from err
    return TrainedModel(config=config, state_dict=load_weights(path / WEIGHTS_FILE),
                        meta=state["meta"])


# --- RNG states ------------------------------------------------------------------------


def capture_rng_state() -> dict[str, Any]:
    """The Python, NumPy, torch CPU and CUDA generator states, as JSON-ready values."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": _encode_bytes(torch.get_rng_state()),
        "cuda": [_encode_bytes(s) for s in cuda],
    }


def restore_rng_state(saved: dict[str, Any]) -> None:
    """Put back the generator states ``capture_rng_state`` returned."""
    version, internal, gauss = saved["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = saved["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_decode_bytes(saved["torch"]))
    cuda = saved.get("cuda") or []
    if cuda and torch.cuda.is_available():
        if len(cuda) != torch.cuda.device_count():
            logger.warning(
                "Checkpoint has %d CUDA RNG states, this machine %d GPUs: CUDA RNG not restored",
                len(cuda),
                torch.cuda.device_count(),
            )
            return
        torch.cuda.set_rng_state_all([_decode_bytes(s) for s in cuda])


def _encode_bytes(tensor: torch.Tensor) -> str:
    return base64.b64encode(tensor.cpu().numpy().tobytes()).decode("ascii")


def _decode_bytes(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


# --- final model files -------------------------------------------------------------------


def save_model(directory: Path, trained: TrainedModel) -> None:
    """Write ``model.safetensors`` and ``model.json`` into ``directory``, each atomically.

    Other files in ``directory`` (a run's checkpoints and logs may live there) are left
    alone. ``model.json`` records the weights' sha256, so a crash between the two
    replacements is detected on load rather than pairing new weights with old metadata.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / WEIGHTS_FILE
    tensors = cpu_copies(trained.state_dict)
    write_file_atomically(
        weights, lambda tmp: save_weights(tensors, tmp, metadata={"format": MODEL_FORMAT}))
    document = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "model_config": trained.config.to_dict(),
        "weights_sha256": file_sha256(weights),
        "meta": trained.meta,
    }
    write_text_atomically(directory / MODEL_META_FILE,
                          json.dumps(document, sort_keys=True, indent=1))


def load_trained(directory: Path) -> TrainedModel:
    """Read a directory ``save_model`` wrote back into a ``TrainedModel`` (CPU tensors).

    The config is checked (sizes within bounds) and compared with the weights' shapes
    before any model is allocated; every error names the file at fault.
    """
    directory = Path(directory)
    document = _read_model_document(directory)
    weights = directory / WEIGHTS_FILE
    meta_file = directory / MODEL_META_FILE
    if file_sha256(weights) != document["weights_sha256"]:
        raise CheckpointError(
            f"{weights} does not match the sha256 in {meta_file} (damaged, or an "
            "interrupted save?); save the model again"
        )
    try:
        config = ModelConfig.from_dict(document["model_config"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{meta_file}: bad model_config: {err}") from err
    trained = TrainedModel(config=config, state_dict=load_weights(weights),
                           meta=document["meta"])
    check_weights_fit(trained, source=f"{weights} and the model_config in {meta_file}")
    return trained


def load_model(directory: Path, *, device: str = "cpu"
               ) -> tuple[LanguageModel, dict[str, Any]]:
    """Rebuild the model saved in ``directory`` (strict load), in eval mode on ``device``."""
    trained = load_trained(directory)
    return build_model(trained, source=Path(directory)).to(device).eval(), trained.meta


def build_model(trained: TrainedModel, *, source: Path | str = "model") -> LanguageModel:
    """A CPU model of the config's family holding ``trained``'s weights; every weight
    must fit exactly."""
    check_weights_fit(trained, source=source)
    # The random init of the fresh model must not move the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        model = new_model(trained.config)
    try:
        model.load_state_dict(trained.state_dict, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{source}: weights do not fit the model config: {err}") from err
    return model


def check_weights_fit(trained: TrainedModel, *, source: Path | str = "model") -> None:
    """Raise ``CheckpointError`` unless the weights have exactly the config's names and
    shapes; compared on the meta device, so nothing is allocated (a vocab_size edited
    in model.json must not first build a model of that size)."""
    with torch.device("meta"), _SkipInit():
        expected = {name: tuple(t.shape) for name, t in
                    new_model(trained.config).state_dict().items()}
    got = {name: tuple(t.shape) for name, t in trained.state_dict.items()}
    problems = [f"{name} is missing" for name in sorted(expected.keys() - got.keys())]
    problems += [f"{name} is unexpected" for name in sorted(got.keys() - expected.keys())]
    problems += [f"{name} is {got[name]} but the config needs {expected[name]}"
                 for name in sorted(expected.keys() & got.keys()) if got[name] != expected[name]]
    if problems:
        shown = "; ".join(problems[:4]) + ("; ..." if len(problems) > 4 else "")
        raise CheckpointError(
            f"{source}: weights do not fit the model config (vocab_size="
            f"{trained.config.vocab_size}, dim={trained.config.dim}, n_layers="
            f"{trained.config.n_layers}): {shown}"
        )


class _SkipInit(TorchFunctionMode):
    """Leaves every ``torch.nn.init`` call undone: only names and shapes are wanted, and
    random init on the meta device runs torch's Python references, which import its
    compiler (1.4 s a process)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else kwargs["tensor"]
        return func(*args, **(kwargs or {}))


def _read_model_document(directory: Path) -> dict[str, Any]:
    if not directory.is_dir():
        raise FileNotFoundError(f"model directory {directory} does not exist; train it first")
    for name in (WEIGHTS_FILE, MODEL_META_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"model directory {directory} has no {name}")
    file = directory / MODEL_META_FILE
    try:
        document = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{file} is not valid JSON: {err}") from err
    if not isinstance(document, dict) or document.get("format") != MODEL_FORMAT:
        raise CheckpointError(f"{file} is not a {MODEL_FORMAT} file")
    if document.get("format_version") != MODEL_FORMAT_VERSION:
        raise CheckpointError(
            f"{file} has format_version {document.get('format_version')!r}; "
            f"this backstory reads version {MODEL_FORMAT_VERSION}"
        )
    for key in ("model_config", "weights_sha256", "meta"):
        if key not in document:
            raise CheckpointError(f"{file} lacks {key!r}")
    return document
