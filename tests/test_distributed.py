"""DistributedDataParallel on CPU (gloo): two processes train like one with the same batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from backstory.lm.checkpoint import latest_checkpoint, load_checkpoint, read_state
from backstory.lm.training import LIVE_DIR, SPEED_LOG, TRAIN_LOSS, VAL_LOSS, curve_file, train
from tests.test_train import LINEAGE, MODEL, make_store, small_config


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dist-stores")
    return make_store(folder / "train.h5", seed=0), make_store(folder / "val.h5", seed=1)


@pytest.fixture(scope="module")
def single_process_run(stores, tmp_path_factory):
    """The reference: one process, the same global batch and micro-batches."""
    run_dir = tmp_path_factory.mktemp("single")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trained = train(MODEL, small_config(max_steps=6, grad_accum=2), *stores, run_dir,
                        lineage=LINEAGE, progress=False)
    finally:
        torch.set_num_threads(before)
    return trained, run_dir


def assert_close_runs(two, one) -> None:
    (trained, run_dir), (reference, reference_dir) = two, one
    assert trained.state_dict.keys() == reference.state_dict.keys()
    for name, tensor in reference.state_dict.items():
        torch.testing.assert_close(trained.state_dict[name], tensor, atol=1e-5, rtol=1e-4)
    for name in (TRAIN_LOSS, VAL_LOSS):  # DVCLive's curves, written by rank 0 alone
        got, expected = (pd.read_csv(curve_file(folder / LIVE_DIR, name), sep="\t")
                         for folder in (run_dir, reference_dir))
        assert got["step"].tolist() == expected["step"].tolist()  # none duplicated
        pd.testing.assert_series_equal(got["loss"], expected["loss"], atol=1e-4)
    # Rank 0 alone writes the speed log: one row per training-loss row.
    speed_steps = pd.read_csv(run_dir / SPEED_LOG)["step"].tolist()
    train_curve = pd.read_csv(curve_file(run_dir / LIVE_DIR, TRAIN_LOSS), sep="\t")
    assert speed_steps == train_curve["step"].tolist()


def test_two_processes_match_one(stores, single_process_run, tmp_path: Path) -> None:
    config = small_config(max_steps=6, grad_accum=2, nproc_per_node=2)
    trained = train(MODEL, config, *stores, tmp_path, lineage=LINEAGE, progress=False)
    assert trained.meta["world_size"] == 2
    state = read_state(latest_checkpoint(tmp_path))
    assert state["micro_batch"] == 12
    assert len(state["rng"]) == 2  # one RNG state per rank
    assert_close_runs((trained, tmp_path), single_process_run)


TORCHRUN_SCRIPT = """
import json, sys
from pathlib import Path
from backstory.lm.model import ModelConfig
from backstory.data.token_store import TokenStore
from backstory.lm.training import TrainConfig, train

model, config, train_path, val_path, run_dir, lineage = json.loads(sys.argv[1])
trained = train(ModelConfig.from_dict(model), TrainConfig.from_record(config),
                TokenStore(Path(train_path)), TokenStore(Path(val_path)), Path(run_dir),
                lineage=lineage, progress=False)
assert trained.meta["steps"] == config["max_steps"]
"""


@pytest.mark.slow
def test_external_torchrun_launch(stores, single_process_run, tmp_path: Path) -> None:
    script = tmp_path / "under_torchrun.py"
    script.write_text(textwrap.dedent(TORCHRUN_SCRIPT))
    # nproc_per_node stays 1 in the config: under torchrun the environment decides.
    config = small_config(max_steps=6, grad_accum=2)
    arguments = json.dumps([MODEL.to_dict(), config.to_dict(), str(stores[0].path),
                            str(stores[1].path), str(tmp_path / "run"), LINEAGE])
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0", "--monitor-interval", "0.5",
         str(script), arguments],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    state = read_state(latest_checkpoint(tmp_path / "run"))
    assert state["world_size"] == 2 and state["step"] == 6
    trained = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    reference, _ = single_process_run
    for name, tensor in reference.state_dict.items():
        torch.testing.assert_close(trained.model_state[name], tensor, atol=1e-5, rtol=1e-4)
