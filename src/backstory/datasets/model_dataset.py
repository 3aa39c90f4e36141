"""Kedro datasets for a trained model directory and for a training run's working folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from backstory.lm.checkpoint import (
    MODEL_META_FILE,
    WEIGHTS_FILE,
    TrainedModel,
    load_trained,
    save_model,
)


class ModelDataset(AbstractDataset[TrainedModel, TrainedModel]):
    """A trained model: ``model.safetensors`` + ``model.json`` in one directory.

    Example catalog entry::

        forward.model:
          type: backstory.datasets.model_dataset.ModelDataset
          filepath: data/06_models/forward/model
    """

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None) -> None:
        """``filepath``: the model directory; ``metadata``: free-form (kedro-viz), unused."""
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> TrainedModel:
        return load_trained(self._filepath)

    def save(self, data: TrainedModel) -> None:
        if not isinstance(data, TrainedModel):
            raise DatasetError(
                f"{self._filepath}: ModelDataset saves a TrainedModel, got {type(data).__name__}"
            )
        save_model(self._filepath, data)

    def _exists(self) -> bool:
        return all((self._filepath / name).is_file() for name in (WEIGHTS_FILE, MODEL_META_FILE))

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}


class RunDirDataset(AbstractDataset[None, Path]):
    """The folder a training run keeps its checkpoints and logs in; loading creates it.

    Example catalog entry::

        forward.training_run:
          type: backstory.datasets.model_dataset.RunDirDataset
          filepath: data/06_models/forward/run
    """

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None) -> None:
        """``filepath``: the run directory; ``metadata``: free-form (kedro-viz), unused."""
        self._filepath = Path(filepath)
        self.metadata = metadata

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

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}
