"""Per-story bits during training (the on_eval hook) and DVCLive logs across a resume."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from backstory.evaluation.curve import EVAL_CURVE, EvalCurve
from backstory.evaluation.metrics import document_bits
from backstory.lm.checkpoint import build_model, checkpoints_dir, list_checkpoints
from backstory.lm.model import Transformer
from tests.test_train import deterministic_logs, make_store, run, small_config

N_STORIES = 5


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    folder = tmp_path_factory.mktemp("curve-stores")
    return make_store(folder / "train.h5", seed=0), make_store(folder / "val.h5", seed=1)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def curve_for(stores, run_dir: Path, token_order: str = "forward") -> EvalCurve:
    run_dir.mkdir(parents=True, exist_ok=True)
    return EvalCurve(str(stores[1].path), N_STORIES, 4, token_order, str(run_dir / EVAL_CURVE))


def test_on_eval_runs_after_each_validation_with_the_live_model(stores, tmp_path):
    seen = []

    def on_eval(step: int, model: Transformer) -> None:
        seen.append((step, isinstance(model, Transformer), model.training))

    run(stores, tmp_path, small_config(max_steps=10, eval_interval=4), on_eval=on_eval)
    assert seen == [(4, True, True), (8, True, True), (10, True, True)]  # and the last step


@pytest.mark.parametrize("token_order", ["forward", "backward"])
def test_the_curve_scores_the_same_stories_at_every_step(stores, tmp_path, token_order):
    config = small_config(max_steps=12, eval_interval=4, token_order=token_order)
    trained = run(stores, tmp_path, config, on_eval=curve_for(stores, tmp_path, token_order))
    curve = pd.read_csv(tmp_path / EVAL_CURVE)
    assert list(curve.columns) == ["step", "doc", "bits"]
    assert curve.groupby("step")["doc"].apply(list).to_dict() == {
        s: list(range(N_STORIES)) for s in (4, 8, 12)}
    # The last point is the final model's bits, exactly as its evaluation scores them.
    model = build_model(trained).eval()
    final = document_bits(model, stores[1], seq_len=model.config.max_seq_len, batch_size=4,
                          token_order=token_order, docs=range(N_STORIES))
    np.testing.assert_array_equal(curve[curve["step"] == 12]["bits"].to_numpy(), final)
    by_step = curve.groupby("step")["bits"].sum()
    assert by_step[12] < by_step[4]  # it learned


def test_a_resumed_run_ends_with_the_same_curve_and_dvclive_files(stores, tmp_path):
    config = small_config(max_steps=12, eval_interval=4, checkpoint_interval=4)
    run(stores, tmp_path / "clean", config, on_eval=curve_for(stores, tmp_path / "clean"))
    folder = tmp_path / "resumed"
    run(stores, folder, config, on_eval=curve_for(stores, folder))
    # As if killed after the last evaluation was logged but before its checkpoint was named.
    names = [p.name for p in list_checkpoints(folder)]
    assert names == ["step_00000008", "step_00000012"]
    shutil.rmtree(checkpoints_dir(folder) / names[-1])
    (checkpoints_dir(folder) / "latest").write_text(names[0])
    run(stores, folder, config, on_eval=curve_for(stores, folder))
    assert (folder / EVAL_CURVE).read_bytes() == (tmp_path / "clean" / EVAL_CURVE).read_bytes()
    assert deterministic_logs(folder) == deterministic_logs(tmp_path / "clean")


def test_the_curve_callback_pickles_for_worker_processes(stores, tmp_path):
    curve = curve_for(stores, tmp_path)
    assert pickle.loads(pickle.dumps(curve)) == curve
