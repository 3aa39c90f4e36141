"""Checkpoints (atomic writes, latest, pruning, RNG), final model files and their datasets."""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import random
import shutil
import signal
import subprocess
import sys
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
    resumable_checkpoint,
    save_checkpoint,
    save_model,
    verify_checkpoint,
)
from backstory.lm.model import MAX_SEQ_LEN, ModelConfig, Transformer
from tests.project import model_config

CONFIG = model_config(vocab_size=40, dim=16, n_layers=2, n_heads=2, max_seq_len=16)


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


WRITE_PAST_A_SIZE_LIMIT = """
import json, resource, signal, sys, torch
from pathlib import Path
from backstory.lm.checkpoint import CheckpointWriteError, save_checkpoint

run_dir, big = Path(sys.argv[1]), sys.argv[2]
save_checkpoint(run_dir, step=10, model_state={"w": torch.ones(10)}, optimizer_state={},
                state={})
# A real failed write, as on a full disk: the kernel refuses to grow a file past 100 kB
# (EFBIG; SIGXFSZ, which would kill the process instead, is ignored).
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))
tensors = {"w": torch.ones(10)}, {"big": torch.zeros(100_000)}
model_state, optimizer_state = tensors if big == "optimizer" else tensors[::-1]
try:
    save_checkpoint(run_dir, step=20, model_state=model_state,
                    optimizer_state=optimizer_state, state={})
except CheckpointWriteError as err:
    print(json.dumps({"message": str(err), "is_oserror": isinstance(err, OSError)}))
"""


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs POSIX file size limits")
@pytest.mark.parametrize(("big", "file"), [("optimizer", "optimizer.pt"),
                                           ("weights", "model.safetensors")])
def test_a_failed_write_names_the_file_and_keeps_the_previous_checkpoint(
        tmp_path: Path, big: str, file: str) -> None:
    result = subprocess.run([sys.executable, "-c", WRITE_PAST_A_SIZE_LIMIT, str(tmp_path), big],
                            capture_output=True, text=True, check=True)
    report = json.loads(result.stdout)
    assert report["is_oserror"]
    root = tmp_path / "checkpoints"
    assert report["message"].startswith(f"cannot write {root / '.tmp-step_00000020' / file}: ")
    assert "untouched" in report["message"]
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000010"]
    assert load_checkpoint(latest_checkpoint(tmp_path)).step == 10


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
    with pytest.raises(CheckpointError, match="does not exist; delete it to start over"):
        latest_checkpoint(tmp_path)


def test_missing_file_names_it(tmp_path: Path) -> None:
    path = save_step(tmp_path, 1, tiny_model())
    (path / "optimizer.pt").unlink()
    with pytest.raises(CheckpointError, match=f"{path / 'optimizer.pt'} is missing"):
        load_checkpoint(path)


# --- damaged checkpoints ----------------------------------------------------------------


def rewrite_sums(path: Path) -> None:
    """Record the files' current sha256, as if they had been written that way."""
    lines = [f"{hashlib.sha256((path / n).read_bytes()).hexdigest()}  {n}\n"
             for n in ckpt.CHECKPOINT_FILES]
    (path / "SHA256SUMS").write_text("".join(lines))


def truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def garbage(file: Path) -> None:
    file.write_bytes(b"\x00garbage, not a checkpoint file\n" * 8)


def flip_one_bit(file: Path) -> None:
    """Flip a bit near the end: in the last tensor's bytes, past the safetensors header."""
    data = bytearray(file.read_bytes())
    data[-7] ^= 0x10
    file.write_bytes(bytes(data))


DAMAGES = {
    "truncated weights": ("model.safetensors", truncate),
    "garbage weights": ("model.safetensors", garbage),
    "one flipped bit in the weights": ("model.safetensors", flip_one_bit),
    "truncated optimizer": ("optimizer.pt", truncate),
    "garbage optimizer": ("optimizer.pt", garbage),
    "flipped bit in state.json": ("state.json", flip_one_bit),
}


def test_sums_are_recorded_in_sha256sum_format(tmp_path: Path) -> None:
    path = save_step(tmp_path, 1, tiny_model())
    lines = (path / "SHA256SUMS").read_text().splitlines()
    assert lines == [f"{hashlib.sha256((path / n).read_bytes()).hexdigest()}  {n}"
                     for n in ("model.safetensors", "optimizer.pt", "state.json")]
    if shutil.which("sha256sum"):  # what docs/reproducibility.md tells users to run
        subprocess.run(["sha256sum", "--check", "--quiet", "SHA256SUMS"], cwd=path, check=True)


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_file_is_refused_by_name(tmp_path: Path, damage: str) -> None:
    path = save_step(tmp_path, 1, tiny_model())
    name, spoil = DAMAGES[damage]
    spoil(path / name)
    with pytest.raises(CheckpointError, match=f"{path / name} is damaged"):
        verify_checkpoint(path)
    with pytest.raises(CheckpointError, match=f"{path / name}"):
        load_checkpoint(path)


def test_a_flipped_bit_in_the_weights_is_only_caught_by_the_sums(tmp_path: Path) -> None:
    path = save_step(tmp_path, 1, tiny_model())
    flip_one_bit(path / "model.safetensors")
    rewrite_sums(path)  # without the sums the file loads and differs silently
    loaded = load_checkpoint(path)
    assert any(not torch.equal(loaded.model_state[k], v)
               for k, v in cpu_state_dict(tiny_model()).items())


def test_missing_sums_file_is_damage(tmp_path: Path) -> None:
    path = save_step(tmp_path, 1, tiny_model())
    (path / "SHA256SUMS").unlink()
    with pytest.raises(CheckpointError, match="SHA256SUMS is missing"):
        verify_checkpoint(path)
    (path / "SHA256SUMS").write_text("this is not a sums line\n")
    with pytest.raises(CheckpointError, match="SHA256SUMS line 1"):
        verify_checkpoint(path)


def test_checkpoint_from_before_sums_is_checked_by_loading(tmp_path: Path) -> None:
    path = save_step(tmp_path, 1, tiny_model())
    (path / "SHA256SUMS").unlink()
    state = json.loads((path / "state.json").read_text())
    (path / "state.json").write_text(json.dumps({**state, "format_version": 1}))
    verify_checkpoint(path)
    assert load_checkpoint(path).step == 1
    truncate(path / "model.safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors cannot be read"):
        verify_checkpoint(path)


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("damage", DAMAGES)
def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path: Path, caplog,
                                                           damage: str) -> None:
    model = tiny_model()
    for step in (10, 20):
        save_step(tmp_path, step, model)
    root = tmp_path / "checkpoints"
    name, spoil = DAMAGES[damage]
    spoil(root / "step_00000020" / name)
    with caplog.at_level(logging.INFO):
        assert resumable_checkpoint(tmp_path) == root / "step_00000010"
    (warning,) = warnings_of(caplog)
    assert f"{root / 'step_00000020' / name} is damaged" in warning
    assert "step_00000010" in warning
    # Repaired: set aside (not deleted), `latest` moved; a second look finds a clean folder.
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000010"]
    assert (root / "damaged-step_00000020" / name).is_file()
    assert (root / "latest").read_text().strip() == "step_00000010"
    caplog.clear()
    assert resumable_checkpoint(tmp_path) == root / "step_00000010"
    assert warnings_of(caplog) == []


def test_without_repair_damage_is_passed_over_silently(tmp_path: Path, caplog) -> None:
    model = tiny_model()
    for step in (10, 20):
        save_step(tmp_path, step, model)
    garbage(tmp_path / "checkpoints" / "step_00000020" / "optimizer.pt")
    assert resumable_checkpoint(tmp_path, repair=False).name == "step_00000010"
    assert warnings_of(caplog) == []
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000010", "step_00000020"]
    assert latest_checkpoint(tmp_path).name == "step_00000020"


def test_latest_naming_a_missing_folder_falls_back(tmp_path: Path, caplog) -> None:
    model = tiny_model()
    for step in (10, 20):
        save_step(tmp_path, step, model)
    root = tmp_path / "checkpoints"
    shutil.rmtree(root / "step_00000020")
    with pytest.raises(CheckpointError, match="write step_00000010") as info:
        latest_checkpoint(tmp_path)  # the strict reader advises precisely...
    assert "start over" not in str(info.value)  # ...and never to drop the good checkpoint
    assert resumable_checkpoint(tmp_path) == root / "step_00000010"  # resume falls back
    (warning,) = warnings_of(caplog)
    assert f"{root / 'latest'} names step_00000020, which does not exist" in warning
    assert latest_checkpoint(tmp_path) == root / "step_00000010"


def test_no_intact_checkpoint_names_every_damaged_file(tmp_path: Path) -> None:
    model = tiny_model()
    for step in (10, 20):
        save_step(tmp_path, step, model)
    root = tmp_path / "checkpoints"
    truncate(root / "step_00000020" / "model.safetensors")
    garbage(root / "step_00000010" / "optimizer.pt")
    with pytest.raises(CheckpointError) as info:
        resumable_checkpoint(tmp_path)
    message = str(info.value)
    assert str(root / "step_00000020" / "model.safetensors") in message
    assert str(root / "step_00000010" / "optimizer.pt") in message
    assert "train.resume=false" in message
    # Nothing is moved when there is nothing to fall back to: the user decides.
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000010", "step_00000020"]


def test_latest_naming_nothing_with_no_checkpoint_left(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest").write_text("step_00000099\n")
    with pytest.raises(CheckpointError, match=r"step_00000099, which does not exist.*delete .*"
                                              r"latest to start over"):
        resumable_checkpoint(tmp_path)
    (tmp_path / "checkpoints" / "latest").write_text("\x00\xff garbage")
    with pytest.raises(CheckpointError, match="not a checkpoint name"):
        resumable_checkpoint(tmp_path)


def test_no_checkpoints_means_a_fresh_start(tmp_path: Path) -> None:
    assert resumable_checkpoint(tmp_path) is None


class _Payload:
    """Unpickling this would run code (it records that it did)."""

    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_loading_never_unpickles_code(tmp_path: Path, capfd) -> None:
    path = save_step(tmp_path, 1, tiny_model())
    (path / "optimizer.pt").write_bytes(pickle.dumps(_Payload(), protocol=2))
    with pytest.raises(CheckpointError, match="optimizer.pt is damaged"):
        load_checkpoint(path)  # the sums catch it first
    rewrite_sums(path)  # a hostile file with matching sums: torch.load must refuse it
    with pytest.raises(CheckpointError, match="optimizer.pt cannot be read") as info:
        load_checkpoint(path)
    assert isinstance(info.value.__cause__, pickle.UnpicklingError)
    assert "code ran" not in capfd.readouterr().out


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


def model_dir_with(tmp_path: Path, **config_changes) -> Path:
    """A saved model whose model.json's model_config was then edited."""
    directory = tmp_path / "edited"
    save_model(directory, trained())
    document = json.loads((directory / "model.json").read_text())
    document["model_config"].update(config_changes)
    (directory / "model.json").write_text(json.dumps(document))
    return directory


@pytest.fixture
def constructions(monkeypatch) -> list[str]:
    """The default device of every model built through backstory.lm.checkpoint."""
    built: list[str] = []
    real = ckpt.new_model

    def recording(config: ModelConfig):
        built.append(torch.get_default_device().type)
        return real(config)

    monkeypatch.setattr(ckpt, "new_model", recording)
    return built


def test_vocabulary_mismatch_in_model_json_is_refused_before_allocation(
        tmp_path: Path, constructions: list[str]) -> None:
    directory = model_dir_with(tmp_path, vocab_size=900_000)  # weights hold 40 rows
    with pytest.raises(CheckpointError) as info:
        load_trained(directory)
    message = str(info.value)
    assert str(directory / "model.safetensors") in message
    assert str(directory / "model.json") in message
    assert "tok_embeddings.weight is (40, 16) but the config needs (900000, 16)" in message
    assert constructions == ["meta"]  # compared on the meta device, nothing allocated
    # An in-memory model with the same mismatch (evaluate, compare) is refused alike.
    model = trained()
    mismatched = TrainedModel(model_config(**{**CONFIG.to_dict(), "vocab_size": 900_000}),
                              model.state_dict, model.meta)
    with pytest.raises(CheckpointError, match="do not fit"):
        ckpt.build_model(mismatched, source="evaluation")
    assert constructions == ["meta", "meta"]


def test_absurd_max_seq_len_in_model_json_is_refused_by_name(
        tmp_path: Path, constructions: list[str]) -> None:
    directory = model_dir_with(tmp_path, max_seq_len=10**9)
    with pytest.raises(CheckpointError, match=rf"{directory / 'model.json'}: bad model_config:"
                                              r" .*max_seq_len=1,000,000,000 is above"):
        load_trained(directory)
    assert constructions == []
    assert MAX_SEQ_LEN < 10**9


def test_damaged_final_weights_name_the_file(tmp_path: Path) -> None:
    save_model(tmp_path / "m", trained())
    weights = tmp_path / "m" / "model.safetensors"
    flip_one_bit(weights)
    with pytest.raises(CheckpointError, match=f"{weights} does not match the sha256 in "
                                              f"{tmp_path / 'm' / 'model.json'}"):
        load_trained(tmp_path / "m")
    garbage(weights)  # with a recorded sha256 that matches: still named, not a raw error
    document = json.loads((tmp_path / "m" / "model.json").read_text())
    document["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (tmp_path / "m" / "model.json").write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match=f"{weights} cannot be read"):
        load_trained(tmp_path / "m")
    (tmp_path / "m" / "model.json").write_text("{ truncated")
    with pytest.raises(CheckpointError, match="model.json is not valid JSON"):
        load_trained(tmp_path / "m")


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
