"""The training loop on CPU: config checks, learning, logs, checkpoints and exact resume."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from backstory.core.errors import InputError
from backstory.core.locks import LockedError
from backstory.data.token_store import TokenStore
from backstory.data.token_writer import DocBatch, write_token_store
from backstory.lm.checkpoint import (
    TrainedModel,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_state,
)
from backstory.lm.model import Transformer
from backstory.lm.optim import MuonAdamW, build_optimizer, scheduled_lr
from backstory.lm.schedules import lr_at
from backstory.lm.training import TrainConfig, train
from backstory.lm.training import logs as train_logs
from backstory.lm.training import loop as train_loop
from backstory.lm.training.logs import (
    LIVE_DIR,
    LR,
    METRICS_FILE,
    PARAMS_FILE,
    SPEED_COLUMNS,
    SPEED_LOG,
    TRAIN_LOSS,
    VAL_LOSS,
    curve_file,
)
from tests.project import load_defaults, model_config
from tests.test_checkpoint import DAMAGES, flip_one_bit

VOCAB = 64
MODEL = model_config(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, max_seq_len=32)
LINEAGE = {"tokenizer_sha256": "0" * 64, "corpus_fingerprint": "fp-test"}


def small_config(**overrides: object) -> TrainConfig:
    """The project's training defaults (conf/base) with settings that train in seconds."""
    settings = dict(batch_size=8, max_steps=12, lr=3e-3, min_lr=3e-4, warmup_steps=2,
                    eval_interval=4, eval_batches=2, log_interval=2, checkpoint_interval=4,
                    device="cpu", seed=1337, token_order="forward")
    return TrainConfig(**{**load_defaults("train"), **settings, **overrides})


def make_store(path: Path, *, seed: int = 0, n_docs: int = 40, vocab: int = VOCAB,
               tokenizer_sha256: str = "0" * 64) -> TokenStore:
    """Documents of BOS + an arithmetic progression of ids: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(20, 60, n_docs)
    docs = []
    for length in lengths:
        start, stride = rng.integers(0, vocab - 3), rng.integers(1, 4)
        story = (start + stride * np.arange(length - 1)) % (vocab - 3) + 3
        docs.append(np.concatenate([[1], story]))
    batch = DocBatch(
        tokens=np.concatenate(docs),
        doc_lengths=lengths.astype(np.int64),
        story_spans=np.stack([np.ones(n_docs), lengths], axis=1).astype(np.int64),
        doc_bytes=(4 * lengths).astype(np.int64),
    )
    attrs = dict(variant="forward", layout="bos_story", vocab_size=vocab, bos_id=1, eos_id=2,
                 tokenizer_sha256=tokenizer_sha256, corpus_fingerprint=f"fp-{seed}")
    write_token_store(path, [batch], attrs=attrs)
    return TokenStore(path)


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> tuple[TokenStore, TokenStore]:
    folder = tmp_path_factory.mktemp("stores")
    return make_store(folder / "train.h5", seed=0), make_store(folder / "val.h5", seed=1)


@pytest.fixture(autouse=True)
def one_thread():
    """One thread: tiny models run faster without thread hand-offs on a busy machine, and
    bitwise comparisons across processes need the same CPU reduction order."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run(stores, run_dir: Path, config: TrainConfig | None = None, **kwargs) -> TrainedModel:
    train_store, val_store = stores
    return train(MODEL, config or small_config(), train_store, val_store, run_dir,
                 lineage=kwargs.pop("lineage", LINEAGE), progress=False, **kwargs)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def deterministic_logs(run_dir: Path) -> dict[str, bytes]:
    """Every DVCLive file's bytes: no wall-clock figures, so equal runs give equal bytes."""
    live = run_dir / LIVE_DIR
    return {p.relative_to(live).as_posix(): p.read_bytes()
            for p in sorted(live.rglob("*")) if p.is_file()}


def curves_and_metrics(run_dir: Path) -> dict[str, bytes]:
    """The DVCLive files but params.yaml (which records the settings and machine facts,
    so runs of other settings that must train alike are compared without it)."""
    return {k: v for k, v in deterministic_logs(run_dir).items() if k != "params.yaml"}


def read_curve(run_dir: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(curve_file(run_dir / LIVE_DIR, name), sep="\t")


# --- configuration ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (dict(batch_size=0), "train.batch_size"),
        (dict(grad_accum=1.5), "train.grad_accum"),
        (dict(max_steps=True), "train.max_steps"),
        (dict(lr=-1.0), "train.lr"),
        (dict(schedule="linear"), "train.schedule"),
        (dict(warmup_steps=500), "train.warmup_steps"),
        (dict(beta2=1.0), "train.beta2"),
        (dict(grad_clip=-1.0), "train.grad_clip"),
        (dict(weight_decay=float("inf")), "train.weight_decay"),
        (dict(device="tpu"), "train.device"),
        (dict(dtype="int8"), "train.dtype"),
        (dict(compile="yes"), "train.compile"),
        (dict(compile=1), "train.compile"),
        (dict(token_order="sideways"), "train.token_order"),
        (dict(batch_size=6, nproc_per_node=4), "train.batch_size"),
        (dict(resume="yes"), "train.resume"),
        (dict(seed=-1), "train.seed"),
    ],
)
def test_bad_settings_name_their_key(overrides: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        small_config(**overrides)


def test_from_params_round_trip_and_unknown_or_missing_keys() -> None:
    config = small_config(batch_size=4, schedule="wsd", compile=False, device="cuda:1")
    assert TrainConfig.from_params(asdict(config)) == config
    assert TrainConfig.from_record(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown train key learning_rate; known keys: .*lr"):
        TrainConfig.from_params(asdict(config) | {"learning_rate": 1e-3})
    with pytest.raises(ValueError, match="train lacks .*optimizer"):  # conf must say it
        TrainConfig.from_params(config.to_dict())
    settings = asdict(config)
    del settings["lr"]
    with pytest.raises(ValueError, match="train lacks lr"):
        TrainConfig.from_params(settings)


@pytest.mark.parametrize("model_vocab", [VOCAB - 1, VOCAB + 1])
def test_model_vocabulary_must_equal_the_stores(stores, tmp_path: Path, model_vocab) -> None:
    model = replace(MODEL, vocab_size=model_vocab)
    with pytest.raises(InputError, match=rf"model vocab_size is {model_vocab} .*{VOCAB} ids"):
        train(model, small_config(), *stores, tmp_path, progress=False)
    assert not (tmp_path / "checkpoints").exists()


def test_validation_tokens_of_another_tokenizer_are_refused_before_training(
        stores, tmp_path: Path) -> None:
    other = make_store(tmp_path / "other_val.h5", seed=1, tokenizer_sha256="f" * 64)
    with pytest.raises(InputError, match="different tokenizers") as info:
        train(MODEL, small_config(), stores[0], other, tmp_path / "run", progress=False)
    assert str(stores[0].path) in str(info.value) and str(other.path) in str(info.value)
    assert not (tmp_path / "run" / "checkpoints").exists()
    bigger = make_store(tmp_path / "bigger_val.h5", seed=1, vocab=VOCAB + 8)
    with pytest.raises(InputError, match="vocab_size 64 vs 72"):
        train(MODEL, small_config(), stores[0], bigger, tmp_path / "run", progress=False)


def to_inputs(windows: np.ndarray, order: str) -> tuple[torch.Tensor, torch.Tensor]:
    host = train_loop.host_tensor(windows, order, pin=False)
    return train_loop.split_batch(host, torch.device("cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize("overrides", [dict(device="cuda"), dict(device="cuda", nproc_per_node=2)])
def test_unavailable_device_fails_before_any_work(stores, tmp_path: Path, overrides) -> None:
    with pytest.raises(ValueError, match=r"train\.device='cuda' but CUDA is not available"):
        run(stores, tmp_path, small_config(**overrides))
    assert not (tmp_path / "checkpoints").exists()


def test_backward_order_reverses_each_window_before_the_shift() -> None:
    windows = np.arange(10, dtype=np.int64).reshape(2, 5)
    inputs, targets = to_inputs(windows, "backward")
    assert inputs.tolist() == [[4, 3, 2, 1], [9, 8, 7, 6]]
    assert targets.tolist() == [[3, 2, 1, 0], [8, 7, 6, 5]]
    inputs, targets = to_inputs(windows, "forward")
    assert inputs.tolist() == [[0, 1, 2, 3], [5, 6, 7, 8]]
    assert targets.tolist() == [[1, 2, 3, 4], [6, 7, 8, 9]]


# --- a training run ------------------------------------------------------------------------


def test_training_learns_and_writes_logs_and_checkpoints(stores, tmp_path: Path) -> None:
    config = small_config(max_steps=24, eval_interval=8, checkpoint_interval=8)
    trained = run(stores, tmp_path, config)

    train_log = read_curve(tmp_path, TRAIN_LOSS)
    assert tuple(train_log.columns) == ("step", "loss")
    assert train_log["step"].tolist() == list(range(2, 25, 2))
    lr_log = read_curve(tmp_path, LR)
    assert lr_log["step"].tolist() == train_log["step"].tolist()
    speed_log = pd.read_csv(tmp_path / SPEED_LOG)
    assert tuple(speed_log.columns) == SPEED_COLUMNS
    assert speed_log["step"].tolist() == train_log["step"].tolist()
    assert speed_log["mfu"].isna().all()  # no MFU on CPU
    assert (speed_log["tokens_per_s"] > 0).all()
    assert (speed_log["elapsed_s"] > 0).all() and speed_log["elapsed_s"].is_monotonic_increasing
    expected_lr = [lr_at(s - 1, schedule="cosine", lr=3e-3, min_lr=3e-4, warmup_steps=2,
                         max_steps=24, cooldown_fraction=0.2) for s in train_log["step"]]
    np.testing.assert_allclose(lr_log["lr"], expected_lr, rtol=1e-6)
    val_log = read_curve(tmp_path, VAL_LOSS).rename(columns={"loss": "val_loss"})
    assert val_log["step"].tolist() == [8, 16, 24]
    assert val_log["val_loss"].iloc[-1] < val_log["val_loss"].iloc[0] < np.log(VOCAB)
    # DVCLive's summary (dvc metrics show) and parameters (params.yaml) of the run
    summary = json.loads((tmp_path / LIVE_DIR / METRICS_FILE).read_text())
    assert summary["step"] == 24 and summary["val"]["loss"] == val_log["val_loss"].iloc[-1]
    assert summary["train"]["loss"] == train_log["loss"].iloc[-1]
    params = yaml.safe_load((tmp_path / LIVE_DIR / PARAMS_FILE).read_text())
    assert params["train"] == config.to_dict() and params["lineage"] == LINEAGE
    assert params["model"]["dim"] == MODEL.dim
    assert params["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert "threads" not in params["machine"]  # chosen by load; moves no bit of the result

    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000016", "step_00000024"]
    state = read_state(latest_checkpoint(tmp_path))
    assert state["step"] == 24 and state["micro_batch"] == 24
    assert state["lineage"] == LINEAGE
    assert "elapsed_s" not in state and "elapsed_s" not in state["meta"]  # wall clock

    assert trained.config == MODEL
    assert all(t.dtype == torch.float32 and t.device.type == "cpu"
               for t in trained.state_dict.values())
    meta = trained.meta
    assert meta["steps"] == 24 and meta["tokens_seen"] == 24 * 8 * 32
    assert meta["val_loss"] == pytest.approx(val_log["val_loss"].iloc[-1], abs=1e-6)
    assert meta["train_loss"] == pytest.approx(train_log["loss"].iloc[-1], abs=1e-6)
    assert meta["lineage"] == LINEAGE and meta["device"] == "cpu" and meta["dtype"] == "float32"
    assert meta["train_config"] == config.to_dict()
    assert "elapsed_s" not in meta


def test_schedule_is_checked_once_per_run_not_per_step(stores, tmp_path: Path,
                                                      monkeypatch) -> None:
    from backstory.lm import schedules
    from backstory.lm.training import loop

    calls = {"start": 0, "per_step": 0}

    def counted(key: str, check):
        def wrapper(**settings):
            calls[key] += 1
            return check(**settings)
        return wrapper

    monkeypatch.setattr(loop, "check_schedule", counted("start", schedules.check_schedule))
    # lr_at's own check, which the loop skips on its hot path
    monkeypatch.setattr(schedules, "check_schedule", counted("per_step", schedules.check_schedule))
    run(stores, tmp_path, small_config(max_steps=6))
    assert calls == {"start": 1, "per_step": 0}


def test_same_inputs_give_the_same_run_folder_bytes(stores, tmp_path: Path) -> None:
    """Everything in the run folder but the speed log is bit-identical between runs."""
    config = small_config(max_steps=8)
    for name in ("a", "b"):
        run(stores, tmp_path / name, config)

    def files(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes()
                for p in sorted(root.rglob("*")) if p.is_file() and p.name != SPEED_LOG}

    first, second = files(tmp_path / "a"), files(tmp_path / "b")
    assert {"live/plots/metrics/train/loss.tsv", "live/plots/metrics/val/loss.tsv",
            "live/metrics.json", "live/params.yaml", "checkpoints/latest"} <= set(first)
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []


def test_same_inputs_give_the_same_weights(stores, tmp_path: Path) -> None:
    config = small_config(max_steps=6, grad_accum=2, schedule="wsd")
    first = run(stores, tmp_path / "a", config)
    second = run(stores, tmp_path / "b", config)
    assert_same_weights(first.state_dict, second.state_dict)
    other_seed = run(stores, tmp_path / "c", replace(config, seed=7))
    assert not torch.equal(first.state_dict["norm.weight"], other_seed.state_dict["norm.weight"])


def test_backward_order_trains_on_reversed_windows(stores, tmp_path: Path) -> None:
    forward = run(stores, tmp_path / "fw", small_config(max_steps=4))
    backward = run(stores, tmp_path / "bw", small_config(max_steps=4, token_order="backward"))
    assert backward.meta["train_config"]["token_order"] == "backward"
    assert not torch.equal(forward.state_dict["norm.weight"], backward.state_dict["norm.weight"])


def test_finished_run_is_returned_without_training(stores, tmp_path: Path, monkeypatch) -> None:
    first = run(stores, tmp_path)
    log_before = deterministic_logs(tmp_path)

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run must not train again")

    monkeypatch.setattr(train_loop.Session, "start", no_training)
    again = run(stores, tmp_path)
    assert_same_weights(first.state_dict, again.state_dict)
    assert again.meta == first.meta
    assert deterministic_logs(tmp_path) == log_before


def test_a_changed_input_moves_the_old_run_aside_and_starts_afresh(
        stores, tmp_path: Path, caplog) -> None:
    run_dir = tmp_path / "run"
    first = run(stores, run_dir, small_config(max_steps=4))
    changed = small_config(max_steps=4, lr=1e-3)
    with caplog.at_level("WARNING", logger="backstory.lm.training.run"):
        moved = run(stores, run_dir, changed)
    assert_same_weights(moved.state_dict, run(stores, tmp_path / "clean", changed).state_dict)
    aside = tmp_path / "run.previous"
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(said) == 1 and str(run_dir) in said[0] and str(aside) in said[0]
    assert "['lr']" in said[0]  # what differed, so the user can tell a mistake
    kept = latest_checkpoint(aside)  # the earlier run is kept, not deleted
    assert_same_weights(first.state_dict, load_checkpoint(kept).model_state)
    # Other data (lineage) or another model shape: the same, replacing the older copy.
    run(stores, run_dir, changed, lineage={"corpus_fingerprint": "other"})
    assert read_state(latest_checkpoint(aside))["train_config"]["lr"] == 1e-3
    train(replace(MODEL, dim=64), changed, *stores, run_dir, lineage=LINEAGE, progress=False)
    assert read_state(latest_checkpoint(run_dir))["model_config"]["dim"] == 64
    # Logging and checkpoint cadence may change on resume: no new run.
    steps = read_state(latest_checkpoint(run_dir))["step"]
    train(replace(MODEL, dim=64), replace(changed, log_interval=1, checkpoint_interval=2),
          *stores, run_dir, lineage=LINEAGE, progress=False)
    assert read_state(latest_checkpoint(run_dir))["step"] == steps


def test_resume_false_starts_over(stores, tmp_path: Path) -> None:
    clean = run(stores, tmp_path / "clean", small_config(max_steps=6))
    run(stores, tmp_path / "run", small_config(max_steps=6, lr=1e-2))
    fresh = run(stores, tmp_path / "run", small_config(max_steps=6, resume=False))
    assert_same_weights(clean.state_dict, fresh.state_dict)
    logs = deterministic_logs(tmp_path / "run")
    assert yaml.safe_load(logs.pop(PARAMS_FILE))["train"]["resume"] is False  # its settings
    expected = deterministic_logs(tmp_path / "clean")
    expected.pop(PARAMS_FILE)
    assert logs == expected
    speed_steps = pd.read_csv(tmp_path / "run" / SPEED_LOG)["step"].tolist()
    assert speed_steps == read_curve(tmp_path / "run", TRAIN_LOSS)["step"].tolist()


KILLED_RUN = """
import sys, time
import torch
from pathlib import Path
from backstory.lm.model import ModelConfig
from backstory.data.token_store import TokenStore
from backstory.lm.training import TrainConfig, loop, train

torch.set_num_threads(1)
windows = loop.random_windows

def slow_windows(*args, **kwargs):
    # Slows the run down so that the test can kill it between two checkpoints.
    time.sleep(0.05)
    return windows(*args, **kwargs)

loop.random_windows = slow_windows
model, config, train_path, val_path, run_dir, lineage = __import__("json").loads(sys.argv[1])
train(ModelConfig.from_dict(model), TrainConfig.from_record(config), TokenStore(Path(train_path)),
      TokenStore(Path(val_path)), Path(run_dir), lineage=lineage, progress=False)
"""


def test_resume_after_sigkill_matches_an_uninterrupted_run(stores, tmp_path: Path) -> None:
    config = small_config(max_steps=40, checkpoint_interval=4, eval_interval=6, log_interval=3)
    run_dir = tmp_path / "killed"
    script = tmp_path / "killed_run.py"
    script.write_text(textwrap.dedent(KILLED_RUN))
    arguments = json.dumps([MODEL.to_dict(), config.to_dict(), str(stores[0].path),
                            str(stores[1].path), str(run_dir), LINEAGE])
    process = subprocess.Popen([sys.executable, str(script), arguments],
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        latest = run_dir / "checkpoints" / "latest"
        deadline = time.monotonic() + 120
        while not latest.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert latest.exists(), "the training subprocess never wrote a checkpoint"
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    interrupted_at = read_state(latest_checkpoint(run_dir))["step"]
    assert 4 <= interrupted_at < config.max_steps

    resumed = run(stores, run_dir, config)
    clean = run(stores, tmp_path / "clean", config)
    assert_same_weights(clean.state_dict, resumed.state_dict)
    assert resumed.meta["steps"] == config.max_steps
    assert deterministic_logs(run_dir) == deterministic_logs(tmp_path / "clean")
    # The speed log restarts at the resumed step and carries the earlier time forward.
    speed_log = pd.read_csv(run_dir / SPEED_LOG)
    assert speed_log["step"].tolist() == list(range(3, 40, 3)) + [40]
    assert speed_log["elapsed_s"].is_monotonic_increasing


def test_elapsed_before_comes_from_the_speed_log(tmp_path: Path, caplog) -> None:
    path = tmp_path / SPEED_LOG
    assert train_logs.elapsed_at(path, 6) == 0.0  # no log yet
    path.write_text("step,tokens_per_s,mfu,elapsed_s\n3,100.0,,1.500\n6,100.0,,3.250\n"
                    "9,100.0,,4.000\n")
    assert train_logs.elapsed_at(path, 2) == 0.0
    assert train_logs.elapsed_at(path, 8) == 3.25  # the last row at or before step 8
    assert train_logs.elapsed_at(path, 9) == 4.0
    path.write_text("step,loss,lr\n3,1.0,0.1\n")
    assert train_logs.elapsed_at(path, 9) == 0.0
    assert "does not have the columns" in caplog.text


def test_prefetcher_returns_what_direct_reads_return() -> None:
    reads: list[int] = []

    def read(index: int) -> torch.Tensor:
        reads.append(index)
        return torch.full((2, 3), index)

    loader = train_loop.Prefetcher(read, background=True)
    try:
        got = [int(loader.get(i)[0, 0]) for i in (0, 1, 2, 7, 8)]
    finally:
        loader.close()
    assert got == [0, 1, 2, 7, 8]
    # 3 was read ahead and skipped; 9 may have been read ahead before close cancelled it.
    assert {0, 1, 2, 7, 8} <= set(reads) <= {0, 1, 2, 3, 7, 8, 9}
    assert reads.count(1) == 1 and reads.count(8) == 1  # read ahead once, not read again


# --- damaged checkpoints and concurrent runs ---------------------------------------------


@pytest.fixture(scope="module")
def clean_run(stores, tmp_path_factory) -> tuple[TrainedModel, Path]:
    """The uninterrupted reference run of small_config() (12 steps, checkpoints every 4)."""
    run_dir = tmp_path_factory.mktemp("clean")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run(stores, run_dir), run_dir
    finally:
        torch.set_num_threads(before)


class _Crash(Exception):
    pass


def crash_after_checkpoint(stores, run_dir: Path, step: int, monkeypatch) -> None:
    """Train small_config() in run_dir until checkpoint ``step`` is written, then crash."""
    real = train_loop.save_checkpoint

    def save_then_crash(*args, **kwargs):
        path = real(*args, **kwargs)
        if kwargs["step"] == step:
            raise _Crash
        return path

    with monkeypatch.context() as patch:
        patch.setattr(train_loop, "save_checkpoint", save_then_crash)
        with pytest.raises(_Crash):
            run(stores, run_dir)


def backstory_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and r.name.startswith("backstory")]


@pytest.mark.parametrize("damage", [*DAMAGES, "newest folder deleted"])
def test_resume_past_a_damaged_checkpoint_matches_an_uninterrupted_run(
        stores, clean_run, tmp_path: Path, monkeypatch, caplog, damage: str) -> None:
    run_dir = tmp_path / "run"
    crash_after_checkpoint(stores, run_dir, 8, monkeypatch)
    newest = run_dir / "checkpoints" / "step_00000008"
    if damage == "newest folder deleted":
        shutil.rmtree(newest)
        named = f"{run_dir / 'checkpoints' / 'latest'} names step_00000008"
    else:
        name, spoil = DAMAGES[damage]
        spoil(newest / name)
        named = f"{newest / name} is damaged"
    resumed = run(stores, run_dir)
    (warning,) = backstory_warnings(caplog)
    assert named in warning and "step_00000004" in warning
    clean, clean_dir = clean_run
    assert_same_weights(clean.state_dict, resumed.state_dict)
    assert deterministic_logs(run_dir) == deterministic_logs(clean_dir)


def test_a_finished_run_with_damaged_weights_is_trained_again_from_the_intact_one(
        stores, clean_run, tmp_path: Path, caplog) -> None:
    run(stores, tmp_path)
    flip_one_bit(tmp_path / "checkpoints" / "step_00000012" / "model.safetensors")
    again = run(stores, tmp_path)  # not handed back as finished: retrained from step 8
    (warning,) = backstory_warnings(caplog)
    assert "step_00000012/model.safetensors is damaged" in warning
    assert_same_weights(clean_run[0].state_dict, again.state_dict)
    assert (tmp_path / "checkpoints" / "damaged-step_00000012").is_dir()


def test_a_second_run_on_the_same_folder_fails_at_once_naming_the_first(
        stores, tmp_path: Path, monkeypatch) -> None:
    config = small_config(max_steps=40, checkpoint_interval=4)
    run_dir = tmp_path / "run"
    script = tmp_path / "slow_run.py"
    script.write_text(textwrap.dedent(KILLED_RUN))
    arguments = json.dumps([MODEL.to_dict(), config.to_dict(), str(stores[0].path),
                            str(stores[1].path), str(run_dir), LINEAGE])
    first = subprocess.Popen([sys.executable, str(script), arguments],
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        latest = run_dir / "checkpoints" / "latest"
        deadline = time.monotonic() + 120
        while not latest.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert latest.exists(), "the first run never wrote a checkpoint"

        def no_training(*args, **kwargs):
            raise AssertionError("the second run must not touch the folder")

        with monkeypatch.context() as patch:
            patch.setattr(train_loop.Session, "start", no_training)
            with pytest.raises(LockedError, match=rf"{run_dir} is in use .*pid {first.pid}"):
                run(stores, run_dir, config)
        assert first.poll() is None  # refused while the first still runs: no waiting
    finally:
        first.kill()
        first.wait()
    # The lock died with its holder: the next run takes the folder and resumes it.
    resumed = run(stores, run_dir, config)
    assert resumed.meta["steps"] == config.max_steps
# --- optimizers and speed settings (issue 11) -----------------------------------------------


def fail_at(monkeypatch: pytest.MonkeyPatch, batch: int, error: Exception) -> None:
    """Make the training loop raise ``error`` when it asks for micro-batch ``batch``: a
    crash between two checkpoints, in this process."""
    windows = train_loop.random_windows

    def failing(store: TokenStore, *, batch_index: int, **kwargs: int) -> np.ndarray:
        if batch_index == batch:
            raise error
        return windows(store, batch_index=batch_index, **kwargs)

    monkeypatch.setattr(train_loop, "random_windows", failing)


def muon_config(**overrides: object) -> TrainConfig:
    return small_config(optimizer="muon", muon_lr=0.02, muon_weight_decay=0.01, **overrides)


def test_new_settings_at_their_defaults_leave_the_config_dict_unchanged() -> None:
    """Checkpoints and metas of runs that do not use them keep their bytes, and runs
    written before these settings existed still resume."""
    config = small_config()  # conf/base's values: the shipped runs keep their bytes
    later = {"optimizer", "muon_lr", "muon_momentum", "muon_weight_decay", "loss_chunk",
             "num_threads", "compile_mode"}
    assert later.isdisjoint(config.to_dict())
    muon = small_config(optimizer="muon", muon_lr=0.03)
    assert muon.to_dict()["optimizer"] == "muon" and muon.to_dict()["muon_lr"] == 0.03
    assert TrainConfig.from_record(muon.to_dict()) == muon
    assert TrainConfig.from_record(config.to_dict()) == config


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (dict(optimizer="sgd"), "train.optimizer"),
        (dict(muon_lr=0.0), "train.muon_lr"),
        (dict(muon_momentum=1.0), "train.muon_momentum"),
        (dict(muon_weight_decay=-0.1), "train.muon_weight_decay"),
        (dict(loss_chunk=-1), "train.loss_chunk"),
        (dict(num_threads=1.5), "train.num_threads"),
        (dict(compile_mode="fastest"), "train.compile_mode"),
    ],
)
def test_bad_speed_settings_name_their_key(overrides: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        small_config(**overrides)


def test_muon_settings_do_not_touch_an_adamw_run(stores, tmp_path: Path) -> None:
    plain = run(stores, tmp_path / "a", small_config(max_steps=6))
    other = run(stores, tmp_path / "b", small_config(max_steps=6, muon_lr=0.5,
                                                     muon_momentum=0.5, muon_weight_decay=1.0))
    assert_same_weights(plain.state_dict, other.state_dict)
    assert curves_and_metrics(tmp_path / "a") == curves_and_metrics(tmp_path / "b")


def test_muon_splits_hidden_matrices_from_the_rest() -> None:
    torch.manual_seed(0)
    model = Transformer(MODEL)
    optimizer = build_optimizer(model, name="muon", lr=1e-3, weight_decay=0.1,
                                betas=(0.9, 0.95), device_type="cpu", muon_lr=0.02,
                                muon_momentum=0.9, muon_weight_decay=0.01)
    assert isinstance(optimizer, MuonAdamW)
    muon_params = {id(p) for g in optimizer.muon.param_groups for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[i] for i in muon_params} == {
        f"layers.{layer}.{part}.weight" for layer in range(MODEL.n_layers)
        for part in ("attention.wq", "attention.wk", "attention.wv", "attention.wo",
                     "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")}
    counted = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    assert counted == model.num_parameters()  # every parameter once, the tied matrix too
    assert [scheduled_lr(g, 5e-4) for g in optimizer.param_groups] == pytest.approx(
        [0.01, 5e-4, 5e-4])  # Muon at muon_lr / lr times the schedule, AdamW at the schedule
    assert optimizer.muon.param_groups[0]["momentum"] == 0.9
    with pytest.raises(ValueError, match="Muon"):
        optimizer.load_state_dict(model.configure_optimizer(
            lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95), device_type="cpu").state_dict())


def test_muon_trains_and_checkpoints_its_momentum(stores, tmp_path: Path) -> None:
    config = muon_config(max_steps=24, eval_interval=8, checkpoint_interval=8)
    trained = run(stores, tmp_path, config)
    val_loss = read_curve(tmp_path, VAL_LOSS)["loss"]
    assert val_loss.iloc[-1] < val_loss.iloc[0] < np.log(VOCAB)
    assert trained.meta["train_config"]["optimizer"] == "muon"
    saved = torch.load(latest_checkpoint(tmp_path) / "optimizer.pt", weights_only=True)
    assert set(saved) == {"muon", "adamw"}
    buffers = [s["momentum_buffer"] for s in saved["muon"]["state"].values()]
    assert len(buffers) == 7 * MODEL.n_layers and all(b.abs().sum() > 0 for b in buffers)
    adamw_groups = saved["adamw"]["param_groups"]
    assert len(adamw_groups) == 2
    # the last step's rates: the schedule's, times muon_lr / lr for Muon
    last = lr_at(23, schedule="cosine", lr=3e-3, min_lr=3e-4, warmup_steps=2, max_steps=24,
                 cooldown_fraction=0.2)
    assert all(g["lr"] == pytest.approx(last) for g in adamw_groups)
    assert saved["muon"]["param_groups"][0]["lr"] == pytest.approx(last * 0.02 / 3e-3)


@pytest.mark.parametrize("make", [muon_config, small_config])
def test_resume_after_a_crash_equals_an_uninterrupted_run(stores, tmp_path: Path, make,
                                                          monkeypatch) -> None:
    config = make(max_steps=12, checkpoint_interval=4, eval_interval=4)
    clean = run(stores, tmp_path / "clean", config)
    with monkeypatch.context() as patch, pytest.raises(RuntimeError, match="simulated crash"):
        fail_at(patch, 9, RuntimeError("simulated crash"))  # after the checkpoint at step 8
        train(MODEL, config, stores[0], stores[1], tmp_path / "crashed", lineage=LINEAGE,
              progress=False)
    assert read_state(latest_checkpoint(tmp_path / "crashed"))["step"] == 8
    resumed = run(stores, tmp_path / "crashed", config)
    assert_same_weights(clean.state_dict, resumed.state_dict)
    assert deterministic_logs(tmp_path / "crashed") == deterministic_logs(tmp_path / "clean")


def test_an_optimizer_change_is_a_different_run(stores, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run(stores, run_dir, small_config(max_steps=4))
    tuned = run(stores, run_dir, muon_config(max_steps=4))  # not resumed from AdamW's state
    fresh = run(stores, tmp_path / "fresh", muon_config(max_steps=4))
    assert_same_weights(tuned.state_dict, fresh.state_dict)
    assert "optimizer" not in read_state(latest_checkpoint(tmp_path / "run.previous"))[
        "train_config"]


def test_model_levers_train_and_off_is_the_plain_run(stores, tmp_path: Path) -> None:
    plain = run(stores, tmp_path / "plain", small_config(max_steps=6))
    off = train(replace(MODEL, qk_norm=False, zero_init_out=False), small_config(max_steps=6),
                *stores, tmp_path / "off", lineage=LINEAGE, progress=False)
    assert_same_weights(plain.state_dict, off.state_dict)
    on = train(replace(MODEL, qk_norm=True, zero_init_out=True), small_config(max_steps=6),
               *stores, tmp_path / "on", lineage=LINEAGE, progress=False)
    assert "layers.0.attention.q_norm.weight" in on.state_dict
    assert on.meta["val_loss"] < np.log(VOCAB)
    assert not torch.equal(on.state_dict["norm.weight"], plain.state_dict["norm.weight"])


def test_loss_chunk_trains_like_the_plain_loss(stores, tmp_path: Path) -> None:
    plain = run(stores, tmp_path / "plain", small_config(max_steps=6))
    fused = run(stores, tmp_path / "fused", small_config(max_steps=6, loss_chunk=48))
    for name, weight in plain.state_dict.items():
        torch.testing.assert_close(fused.state_dict[name], weight, atol=1e-5, rtol=1e-4)
    assert fused.meta["val_loss"] == pytest.approx(plain.meta["val_loss"], abs=1e-5)


def test_num_threads_applies_during_training_and_is_restored(stores, tmp_path: Path,
                                                             monkeypatch) -> None:
    seen = []
    step = train_loop.Session._train_step

    def spy(self):
        seen.append(torch.get_num_threads())
        return step(self)

    monkeypatch.setattr(train_loop.Session, "_train_step", spy)
    run(stores, tmp_path, small_config(max_steps=2, num_threads=2))
    assert set(seen) == {2}
    assert torch.get_num_threads() == 1  # the fixture's setting is back


# --- CPU threads -----------------------------------------------------------------------


def test_thread_count_changes_speed_only_not_the_weights(stores, tmp_path: Path) -> None:
    """train.num_threads: 0 picks threads by the machine's idle cores, which is safe for
    reproducibility only because the count does not move a bit of the result."""
    one = run(stores, tmp_path / "one", small_config(max_steps=6, num_threads=1))
    two = run(stores, tmp_path / "two", small_config(max_steps=6, num_threads=2))
    assert_same_weights(one.state_dict, two.state_dict)
    assert curves_and_metrics(tmp_path / "one") == curves_and_metrics(tmp_path / "two")


def test_thread_choice(monkeypatch) -> None:
    from backstory.lm.training import host

    assert host.choose_threads(3) == 3  # an explicit setting wins
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert host.choose_threads(0, processes=1) == 1  # then the user's environment
    monkeypatch.delenv("OMP_NUM_THREADS")
    idle = host.idle_cores(0.05)
    assert idle is None or 0.0 <= idle <= (os.cpu_count() or 1) + 1e-9
    monkeypatch.setattr(host, "idle_cores", lambda *a: 1.6)
    assert host.choose_threads(0) == 2
    assert host.choose_threads(0, processes=2) == 1
    monkeypatch.setattr(host, "idle_cores", lambda *a: 0.2)  # every core busy: still one
    assert host.choose_threads(0) == 1


# --- extending a wsd run ---------------------------------------------------------------


def record_starts(monkeypatch) -> list[int]:
    """The step each training session starts at, in order, from now on."""
    started_at = []
    start = train_loop.Session.start

    def recording_start(*args, **kwargs):
        session = start(*args, **kwargs)
        started_at.append(session.step)
        return session

    monkeypatch.setattr(train_loop.Session, "start", recording_start)
    return started_at


def test_a_longer_wsd_run_continues_from_the_stable_checkpoint_and_equals_a_direct_run(
        stores, tmp_path: Path, monkeypatch) -> None:
    short = small_config(max_steps=12, schedule="wsd", cooldown_fraction=0.25)  # stable to 9
    long = replace(short, max_steps=24)  # stable to 18: steps 0-8 run at the same rates
    run_dir = tmp_path / "run"
    first = run(stores, run_dir, short)
    assert [p.name for p in (run_dir / "stable").iterdir()] == ["step_00000009"]
    started_at = record_starts(monkeypatch)
    extended = run(stores, run_dir, long)
    direct = run(stores, tmp_path / "direct", long)
    assert started_at == [9, 0]  # the extension trained steps 9-23 only
    assert_same_weights(extended.state_dict, direct.state_dict)
    assert deterministic_logs(run_dir) == deterministic_logs(tmp_path / "direct")
    # The finished short run is kept, and its final loss is the first of the cooldowns.
    kept = latest_checkpoint(tmp_path / "run.previous")
    assert_same_weights(first.state_dict, load_checkpoint(kept).model_state)
    assert [(c["steps"], c["val_loss"]) for c in extended.meta["cooldowns"]] == [
        (12, first.meta["val_loss"]), (24, direct.meta["val_loss"])]
    assert direct.meta["cooldowns"] == [extended.meta["cooldowns"][1]]
    assert [p.name for p in (run_dir / "stable").iterdir()] == ["step_00000018"]


def test_another_cooldown_continues_from_the_stable_checkpoint_and_restarts_the_cooldowns(
        stores, tmp_path: Path, monkeypatch) -> None:
    first = small_config(max_steps=12, schedule="wsd", cooldown_fraction=0.25)  # stable to 9
    to_zero = replace(first, min_lr=0.0)  # the same stable phase, another cooldown
    run_dir = tmp_path / "run"
    run(stores, run_dir, first)
    started_at = record_starts(monkeypatch)
    recooled = run(stores, run_dir, to_zero)
    direct = run(stores, tmp_path / "direct", to_zero)
    assert started_at == [9, 0]  # only the cooldown was trained again
    assert_same_weights(recooled.state_dict, direct.state_dict)
    # The first cooldown's loss is no length of this run: the cooldowns hold the new one only,
    # and the old file stays with the old run.
    assert recooled.meta["cooldowns"] == direct.meta["cooldowns"]
    assert [c["steps"] for c in recooled.meta["cooldowns"]] == [12]
    assert (tmp_path / "run.previous" / "cooldowns.json").exists()
    assert read_state(latest_checkpoint(tmp_path / "run.previous"))["train_config"]["min_lr"] \
        == first.min_lr
    # A later doubling under the new cooldown records its lengths again.
    doubled = run(stores, run_dir, replace(to_zero, max_steps=24))
    assert [c["steps"] for c in doubled.meta["cooldowns"]] == [12, 24]


def test_only_a_wsd_run_lengthened_past_its_stable_checkpoint_is_extended(
        stores, tmp_path: Path) -> None:
    wsd = small_config(max_steps=12, schedule="wsd", cooldown_fraction=0.25)
    run(stores, tmp_path / "shorter", wsd)
    # Shorter: the kept checkpoint (step 9) lies in the new run's cooldown (from step 6).
    shortened = run(stores, tmp_path / "shorter", replace(wsd, max_steps=8))
    assert (tmp_path / "shorter.previous").exists()
    assert_same_weights(shortened.state_dict,
                        run(stores, tmp_path / "direct8", replace(wsd, max_steps=8)).state_dict)
    # A cosine run's rates depend on its length everywhere: a longer one starts afresh.
    cosine = small_config(max_steps=8)
    run(stores, tmp_path / "cosine", cosine)
    assert not (tmp_path / "cosine" / "stable").exists()
    longer = run(stores, tmp_path / "cosine", replace(cosine, max_steps=12))
    assert (tmp_path / "cosine.previous").exists()
    assert "cooldowns" not in longer.meta
    # Another setting besides the length (here the peak rate) is another run, too.
    run(stores, tmp_path / "other", wsd)
    run(stores, tmp_path / "other", replace(wsd, max_steps=24, lr=1e-3))
    assert read_state(latest_checkpoint(tmp_path / "other.previous"))["step"] == 12
