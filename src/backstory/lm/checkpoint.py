"""Atomic training checkpoints and the final model files.

A checkpoint is a directory ``<run_dir>/checkpoints/step_XXXXXXXX/`` holding
``model.safetensors`` (weights), ``optimizer.pt`` (optimizer state, tensors and plain
numbers only) and ``state.json`` (step, data position, configs, lineage, RNG states).
It is written into a temporary sibling, fsynced, renamed into place, and only then
named by ``checkpoints/latest``: a crash at any point leaves the previous checkpoint
loadable. Loading never unpickles code: safetensors, ``torch.load(weights_only=True)``
and JSON only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from backstory.lm.model import ModelConfig, Transformer

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "latest"
KEEP_LAST = 2  # checkpoints kept on disk: the newest, plus one in case it is damaged later
WEIGHTS_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "state.json"
MODEL_META_FILE = "model.json"
MODEL_FORMAT = "backstory-model"
MODEL_FORMAT_VERSION = 1
CHECKPOINT_FORMAT = "backstory-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d{8})$")
_TMP_PREFIX = ".tmp-"
_OLD_PREFIX = ".old-"


class CheckpointError(ValueError):
    """A checkpoint or model directory is incomplete, damaged, or does not fit."""


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


def save_checkpoint(
    run_dir: Path,
    *,
    step: int,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    state: dict[str, Any],
    keep: int = KEEP_LAST,
) -> Path:
    """Write checkpoint ``step`` atomically, point ``latest`` at it, keep the last ``keep``."""
    if keep < 1:
        raise ValueError(f"keep={keep} must be >= 1: the newest checkpoint is always kept")
    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(root)
    name = checkpoint_name(step)
    tmp = root / f"{_TMP_PREFIX}{name}"
    tmp.mkdir()
    save_file(model_state, str(tmp / WEIGHTS_FILE), metadata={"step": str(step)})
    torch.save(optimizer_state, tmp / OPTIMIZER_FILE)
    document = {**state, "step": step, "format": CHECKPOINT_FORMAT,
                "format_version": CHECKPOINT_FORMAT_VERSION}
    (tmp / STATE_FILE).write_text(json.dumps(document, sort_keys=True, indent=1))
    for file in (WEIGHTS_FILE, OPTIMIZER_FILE, STATE_FILE):
        _fsync_file(tmp / file)
    _fsync_dir(tmp)
    final = root / name
    _rename_into_place(tmp, final)
    _write_text_atomic(root / LATEST_FILE, name + "\n")
    prune_checkpoints(run_dir, keep=keep)
    return final


def _rename_into_place(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; an older ``final`` (from a run resumed before it) goes."""
    old = None
    if final.exists():
        old = final.with_name(f"{_OLD_PREFIX}{final.name}")
        os.rename(final, old)
    os.rename(tmp, final)
    _fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old)


def _remove_leftovers(root: Path) -> None:
    """Delete temporary directories an interrupted save left behind."""
    for entry in root.iterdir():
        if entry.is_dir() and entry.name.startswith((_TMP_PREFIX, _OLD_PREFIX)):
            logger.info("Removing leftover of an interrupted checkpoint write: %s", entry)
            shutil.rmtree(entry)


def _write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so readers see the old or the new content, never half."""
    tmp = path.with_name(f"{path.name}.tmp")
    tmp.write_text(text)
    _fsync_file(tmp)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    """Persist a directory's entries (renames), where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # Windows cannot open directories; its renames are durable enough
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    name = pointer.read_text().strip()
    if not _STEP_DIR.match(name):
        raise CheckpointError(f"{pointer} holds {name!r}, not a checkpoint name; delete it")
    path = root / name
    if not path.is_dir():
        raise CheckpointError(
            f"{pointer} names {path}, which does not exist; delete {root} to start over"
        )
    return path


def read_state(path: Path) -> dict[str, Any]:
    """The ``state.json`` of checkpoint ``path`` (cheap: no tensors)."""
    file = Path(path) / STATE_FILE
    if not file.exists():
        raise FileNotFoundError(f"checkpoint {path} has no {STATE_FILE}")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{file} is not valid JSON: {err}") from err


def load_checkpoint(path: Path) -> Checkpoint:
    """Load checkpoint directory ``path`` onto the CPU."""
    path = Path(path)
    for file in (WEIGHTS_FILE, OPTIMIZER_FILE, STATE_FILE):
        if not (path / file).exists():
            raise FileNotFoundError(f"checkpoint {path} has no {file}")
    state = read_state(path)
    return Checkpoint(
        path=path,
        step=int(state["step"]),
        model_state=load_file(str(path / WEIGHTS_FILE), device="cpu"),
        optimizer_state=torch.load(path / OPTIMIZER_FILE, map_location="cpu", weights_only=True),
        state=state,
    )


def trained_at(path: Path, state: dict[str, Any]) -> TrainedModel:
    """The model a checkpoint holds (weights, config and meta), without the optimizer."""
    return TrainedModel(
        config=ModelConfig.from_dict(state["model_config"]),
        state_dict=load_file(str(Path(path) / WEIGHTS_FILE), device="cpu"),
        meta=state["meta"],
    )


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
    tmp = directory / f"{_TMP_PREFIX}{WEIGHTS_FILE}"
    save_file(cpu_copies(trained.state_dict), str(tmp), metadata={"format": MODEL_FORMAT})
    _fsync_file(tmp)
    os.replace(tmp, weights)
    document = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "model_config": trained.config.to_dict(),
        "weights_sha256": _sha256(weights),
        "meta": trained.meta,
    }
    _write_text_atomic(directory / MODEL_META_FILE, json.dumps(document, sort_keys=True, indent=1))


def load_trained(directory: Path) -> TrainedModel:
    """Read a directory ``save_model`` wrote back into a ``TrainedModel`` (CPU tensors)."""
    directory = Path(directory)
    document = _read_model_document(directory)
    weights = directory / WEIGHTS_FILE
    if _sha256(weights) != document["weights_sha256"]:
        raise CheckpointError(
            f"{weights} does not match the sha256 in {directory / MODEL_META_FILE} "
            "(an interrupted save?); save the model again"
        )
    try:
        config = ModelConfig.from_dict(document["model_config"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{directory / MODEL_META_FILE}: bad model_config: {err}") from err
    return TrainedModel(config=config, state_dict=load_file(str(weights)), meta=document["meta"])


def load_model(directory: Path, *, device: str = "cpu") -> tuple[Transformer, dict[str, Any]]:
    """Rebuild the model saved in ``directory`` (strict load), in eval mode on ``device``."""
    trained = load_trained(directory)
    return build_model(trained, source=Path(directory)).to(device).eval(), trained.meta


def build_model(trained: TrainedModel, *, source: Path | str = "model") -> Transformer:
    """A CPU ``Transformer`` holding ``trained``'s weights; every weight must fit exactly."""
    # The random init of the fresh model must not move the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        model = Transformer(trained.config)
    try:
        model.load_state_dict(trained.state_dict, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{source}: weights do not fit the model config: {err}") from err
    return model


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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
