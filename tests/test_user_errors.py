"""User errors end `kedro run` with their one-paragraph message, bugs keep their traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from kedro.io import DatasetError

from backstory import cli as project_cli
from backstory.core.errors import EXIT_USER_ERROR, SettingError, UserError, user_error_in
from backstory.core.locks import LockedError
from backstory.experiment import expand
from backstory.lm.checkpoint import CheckpointError
from backstory.lm.training import TrainConfig
from backstory.params import build
from tests.project import REPO, TINY_INGEST, load_defaults, make_project, tiny_run_params


def test_user_errors_keep_their_builtin_kind() -> None:
    assert issubclass(CheckpointError, UserError) and issubclass(CheckpointError, ValueError)
    assert issubclass(LockedError, UserError) and issubclass(LockedError, RuntimeError)
    settings = load_defaults("train") | {"seed": 1, "token_order": "forward"}
    with pytest.raises(SettingError, match=r"train\.lr=-1"):
        TrainConfig(**settings | {"lr": -1})  # raised by schedules.check_schedule
    with pytest.raises(SettingError, match="unknown train key learning_rate"):
        TrainConfig.from_params(settings | {"learning_rate": 1})
    with pytest.raises(SettingError, match="unknown train key typo"):
        build(TrainConfig, {"typo": 1}, "train")
    with pytest.raises(SettingError, match=r"train\.batch_size=0"):
        build(TrainConfig, settings | {"batch_size": 0}, "train")


def test_a_preset_without_a_shape_key_is_refused_naming_it() -> None:
    parameters: dict = {}
    for path in sorted((REPO / "conf/base").glob("parameters*.yml")):
        parameters |= yaml.safe_load(path.read_text())
    del parameters["presets"]["small"]["model"]["dim"]
    with pytest.raises(SettingError, match=r"run \w+\.small\.s1337: model lacks dim \(conf/base"):
        expand(parameters)


def test_user_error_in_follows_explicit_causes_only() -> None:
    damaged = CheckpointError("step_8/model.safetensors is damaged")
    try:
        raise DatasetError("Failed while loading data from dataset ModelDataset") from damaged
    except DatasetError as wrapped:
        assert user_error_in(wrapped) is damaged
    try:
        try:
            raise damaged
        except CheckpointError:
            raise KeyError("a bug while handling it") from None
    except KeyError as bug:
        assert user_error_in(bug) is None
    try:
        try:
            raise damaged
        except CheckpointError:
            raise KeyError("a bug while handling it")  # noqa: B904 - implicit context
    except KeyError as bug:
        assert user_error_in(bug) is None
    assert user_error_in(RuntimeError("no cause")) is None


@pytest.fixture
def failing_run(monkeypatch):
    """Point backstory's `run` at a Kedro run that raises the given exception."""

    def fail_with(error: BaseException) -> None:
        def kedro_run(**options):
            raise error

        monkeypatch.setattr(project_cli.kedro_run, "callback", kedro_run)

    return fail_with


def wrapped(user_error: Exception) -> DatasetError:
    try:
        raise DatasetError("Failed while loading data from dataset X") from user_error
    except DatasetError as error:
        return error


def test_run_prints_a_user_error_without_traceback(failing_run, monkeypatch) -> None:
    monkeypatch.delenv(project_cli.TRACEBACK_ENV, raising=False)
    failing_run(wrapped(CheckpointError("/runs/step_8/optimizer.pt is damaged")))
    result = CliRunner().invoke(project_cli.run, [])
    assert result.exit_code == EXIT_USER_ERROR
    assert result.stderr == "kedro run: error: /runs/step_8/optimizer.pt is damaged\n"


def test_run_keeps_the_traceback_of_a_bug_and_on_request(failing_run, monkeypatch) -> None:
    failing_run(ZeroDivisionError("a bug"))
    result = CliRunner().invoke(project_cli.run, [])
    assert isinstance(result.exception, ZeroDivisionError) and result.exit_code == 1
    monkeypatch.setenv(project_cli.TRACEBACK_ENV, "1")
    failing_run(wrapped(CheckpointError("damaged")))
    result = CliRunner().invoke(project_cli.run, [])
    assert isinstance(result.exception, DatasetError)


def test_kedro_run_with_a_bad_parameter_exits_with_one_paragraph(tmp_path: Path) -> None:
    params = {"parameters_ingest.yml": TINY_INGEST,
              "parameters_runs.yml": tiny_run_params() | {
                  "experiment": {"main": {"variants": ["forward"]}}}}
    root = make_project(tmp_path / "project", params)
    # Progress bars (stderr too) are no part of the error; tqdm reads TQDM_DISABLE.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    env.pop(project_cli.TRACEBACK_ENV, None)
    kedro = Path(sys.executable).with_name("kedro")
    result = subprocess.run(
        [str(kedro), "run", "--pipelines", "ingest,forward",
         "--params", "presets.small.model.max_seq_len=1000000000"],
        cwd=root, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == EXIT_USER_ERROR, result.stderr[-3000:]
    assert result.stderr == (
        "kedro run: error: run forward.small.s1337: model config max_seq_len=1,000,000,000 "
        "is above the limit of 65,536; is it a typo?\n"
    )
    # Refused while reading the parameters: nothing ran, not even ingest.
    assert not (root / "data" / "01_raw" / "corpus").exists()
