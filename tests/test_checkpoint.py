"""Checkpoints (atomic writes, latest, pruning, RNG), final model files and their datasets."""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from kedro.io import DatasetError

import backstory.lm.checkpoint as ckpt
from backstory.datasets.model_dataset import ModelDataset, RunDirDataset
from backstory.lm.checkpoint import (
    CheckpointError,
    TrainedModel,
    capture_rng_state,
    cpu_state_dict,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_model,
    load_trained,
    restore_rng_state,
    save_checkpoint,
    save_model,
)
from backstory.lm.model import ModelConfig, Transformer

CONFIG = ModelConfig(vocab_size=40, dim=16, n_layers=2, n_heads=2, max_seq_len=16)


def tiny_model(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(CONFIG)


def optimizer_after_one_step(model: Transformer) -> torch.optim.Optimizer:
    optimizer = model.configure_optimizer(lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95),
                                          device_type="cpu")
    tokens = torch.arange(16).reshape(2, 8) % CONFIG.vocab_size
    _, loss = model(tokens, tokens)
    loss.backward()
    optimizer.step()
    return optimizer


def save_step(run_dir: Path, step: int, model: Transformer, **kwargs) -> Path:
    optimizer = optimizer_after_one_step(model)
    return save_checkpoint(run_dir, step=step, model_state=cpu_state_dict(model),
                           optimizer_state=optimizer.state_dict(),
                           state={"note": f"step {step}"}, **kwargs)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = tiny_model()
    optimizer = optimizer_after_one_step(model)
    path = save_checkpoint(tmp_path, step=7, model_state=cpu_state_dict(model),
                           optimizer_state=optimizer.state_dict(), state={"micro_batch": 14})
    assert path == tmp_path / "checkpoints" / "step_00000007"
    assert latest_checkpoint(tmp_path) == path
    loaded = load_checkpoint(path)
    assert loaded.step == 7 and loaded.state["micro_batch"] == 14
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.model_state[name], tensor)
    fresh = tiny_model(seed=1)
    fresh.load_state_dict(loaded.model_state, strict=True)
    other = fresh.configure_optimizer(lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95),
                                      device_type="cpu")
    other.load_state_dict(loaded.optimizer_state)
    for a, b in zip(optimizer.state.values(), other.state.values(), strict=True):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["step"], b["step"])


def test_keeps_last_two_and_latest_points_to_newest(tmp_path: Path) -> None:
    model = tiny_model()
    for step in (10, 20, 30, 40):
        save_step(tmp_path, step, model)
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["step_00000030", "step_00000040"]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000040"
    assert load_checkpoint(latest_checkpoint(tmp_path)).state["note"] == "step 40"


def test_crash_during_write_leaves_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    model = tiny_model()
    save_step(tmp_path, 10, model)
    real_save_file = ckpt.save_file

    def partial_then_crash(tensors: dict, filename: str, metadata=None) -> None:
        real_save_file(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as handle:  # leave half a file behind, as a crash would
            handle.truncate(Path(filename).stat().st_size // 2)
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", partial_then_crash)
    with pytest.raises(OSError, match="disk full"):
        save_step(tmp_path, 20, model)
    latest = latest_checkpoint(tmp_path)
    assert latest is not None and latest.name == "step_00000010"
    assert load_checkpoint(latest).state["note"] == "step 10"
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000010"]

    monkeypatch.setattr(ckpt, "save_file", real_save_file)
    save_step(tmp_path, 20, model)  # the next save clears the leftover temp directory
    leftovers = [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]
    assert leftovers == []
    assert latest_checkpoint(tmp_path).name == "step_00000020"


def test_crash_before_latest_update_is_overwritten_on_resave(tmp_path: Path) -> None:
    model = tiny_model()
    save_step(tmp_path, 10, model)
    stale = tmp_path / "checkpoints" / "step_00000020"
    stale.mkdir()  # renamed into place, but the crash came before `latest` moved
    (stale / "state.json").write_text("{}")
    assert latest_checkpoint(tmp_path).name == "step_00000010"
    save_step(tmp_path, 20, model)
    assert load_checkpoint(latest_checkpoint(tmp_path)).state["note"] == "step 20"


def test_latest_without_pointer_falls_back_to_newest(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None
    model = tiny_model()
    save_step(tmp_path, 3, model)
    save_step(tmp_path, 5, model)
    (tmp_path / "checkpoints" / "latest").unlink()
    assert latest_checkpoint(tmp_path).name == "step_00000005"


def test_latest_naming_a_missing_checkpoint_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest").write_text("step_00000099\n")
    with pytest.raises(CheckpointError, match="does not exist"):
        latest_checkpoint(tmp_path)


def test_missing_file_names_it(tmp_path: Path) -> None:
    path = save_step(tmp_path, 1, tiny_model())
    (path / "optimizer.pt").unlink()
    with pytest.raises(FileNotFoundError, match="optimizer.pt"):
        load_checkpoint(path)


class _Payload:
    """Unpickling this would run code (it records that it did)."""

    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_loading_never_unpickles_code(tmp_path: Path) -> None:
    path = save_step(tmp_path, 1, tiny_model())
    (path / "optimizer.pt").write_bytes(pickle.dumps(_Payload(), protocol=2))
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(path)


def test_rng_state_round_trips_through_json() -> None:
    saved = json.loads(json.dumps(capture_rng_state()))
    first = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    restore_rng_state(saved)
    again = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    assert first == again


# --- final model files ---------------------------------------------------------------


def trained(seed: int = 0) -> TrainedModel:
    model = tiny_model(seed)
    meta = {"steps": 3, "lineage": {"tokenizer_sha256": "ab" * 32}, "val_loss": 2.5}
    return TrainedModel(config=CONFIG, state_dict=cpu_state_dict(model), meta=meta)


def test_save_and_load_model(tmp_path: Path) -> None:
    original = trained()
    save_model(tmp_path / "model", original)
    model, meta = load_model(tmp_path / "model")
    assert meta == original.meta
    assert not model.training
    tokens = torch.arange(10).reshape(1, 10)
    reference = Transformer(CONFIG)
    reference.load_state_dict(original.state_dict)
    assert torch.equal(model(tokens)[0], reference(tokens)[0])
    # Tied weights stay tied after loading.
    assert model.output.weight is model.tok_embeddings.weight
    again = load_trained(tmp_path / "model")
    assert again.config == CONFIG
    assert all(torch.equal(again.state_dict[k], v) for k, v in original.state_dict.items())


def test_save_model_leaves_other_files_and_replaces_its_own(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    save_model(tmp_path, trained(seed=0))
    save_model(tmp_path, trained(seed=1))
    assert (tmp_path / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt", "model.json",
                                                           "model.safetensors"]
    loaded = load_trained(tmp_path)
    assert torch.equal(loaded.state_dict["norm.weight"], trained(seed=1).state_dict["norm.weight"])


def test_load_model_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    save_model(tmp_path / "m", trained())
    document = json.loads((tmp_path / "m" / "model.json").read_text())

    document["model_config"]["dim"] = 32  # weights are dim 16
    (tmp_path / "m" / "model.json").write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(tmp_path / "m")

    save_model(tmp_path / "m", trained(seed=2))
    (tmp_path / "m" / "model.safetensors").write_bytes(
        (tmp_path / "m" / "model.safetensors").read_bytes()[:-4] + b"\0\0\0\0"
    )
    with pytest.raises(CheckpointError, match="sha256"):
        load_model(tmp_path / "m")

    (tmp_path / "m" / "model.json").unlink()
    with pytest.raises(FileNotFoundError, match="model.json"):
        load_model(tmp_path / "m")


# --- Kedro datasets ---------------------------------------------------------------------


def test_model_dataset_round_trip(tmp_path: Path) -> None:
    dataset = ModelDataset(filepath=str(tmp_path / "model"))
    assert not dataset.exists()
    original = trained()
    dataset.save(original)
    assert dataset.exists()
    loaded = dataset.load()
    assert loaded.config == original.config and loaded.meta == original.meta
    assert all(torch.equal(loaded.state_dict[k], v) for k, v in original.state_dict.items())
    with pytest.raises(DatasetError, match="TrainedModel"):
        dataset.save({"not": "a model"})


def test_model_dataset_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        ModelDataset(filepath=str(tmp_path / "absent")).load()


def test_run_dir_dataset(tmp_path: Path) -> None:
    dataset = RunDirDataset(filepath=str(tmp_path / "runs" / "forward"))
    assert not dataset.exists()
    path = dataset.load()
    assert path == tmp_path / "runs" / "forward" and path.is_dir()
    assert dataset.exists()
    with pytest.raises(DatasetError, match="input only"):
        dataset.save(path)
