"""Kedro datasets for a trained model directory and for a training run's working folder."""

from __future__ import annotations

from pathlib import Path

from kedro.io import DatasetError

from backstory.datasets.base import PathDataset
from backstory.lm.checkpoint import (
    MODEL_META_FILE,
    WEIGHTS_FILE,
    TrainedModel,
    load_trained,
    save_model,
)


class ModelDataset(PathDataset[TrainedModel, TrainedModel]):
    """A trained model: ``model.safetensors`` + ``model.json`` in one directory."""

    saves, saves_what = (TrainedModel,), "a TrainedModel"

    def load(self) -> TrainedModel:
        return load_trained(self._filepath)

    def _write(self, data: TrainedModel) -> None:
        save_model(self._filepath, data)

    def _exists(self) -> bool:
        return all((self._filepath / name).is_file() for name in (WEIGHTS_FILE, MODEL_META_FILE))


class RunDirDataset(PathDataset[None, Path]):
    """The folder a training run keeps its checkpoints and logs in; loading creates it."""

    def load(self) -> Path:
        self._filepath.mkdir(parents=True, exist_ok=True)
        return self._filepath

    def save(self, data: None) -> None:
        raise DatasetError(
            f"{self._filepath}: RunDirDataset is an input only; training writes into the "
            "folder it loads, nothing is saved to it"
        )

    def _exists(self) -> bool:
        return self._filepath.is_dir()
