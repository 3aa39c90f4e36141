"""Where a project keeps a run's files: the catalog's paths, for tools outside Kedro runs.

Paths live in conf/base/catalog.yml alone; the command line reads them from there (and
the runs from the experiment declaration) instead of spelling them out again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backstory import experiment
from backstory.experiment import Experiment, RunSpec

CONF = "conf"
PATH_KEYS = ("filepath", "path")


@dataclass
class Project:
    """A project folder's catalog and experiment, read as ``kedro run --env <env>`` would."""

    root: Path
    catalog: dict[str, Any]
    experiment: Experiment
    parameters: dict[str, Any]  # as Kedro reads them: each run's merged settings included

    @classmethod
    def load(cls, root: Path, env: str | None = None) -> Project:
        from backstory.config_loader import ProjectConfigLoader
        from backstory.settings import CONFIG_LOADER_ARGS

        conf = Path(root) / CONF
        if not (conf / "base").is_dir():
            raise ValueError(f"{root} is not a backstory project (no {CONF}/base/); run from "
                             "the project folder or pass --project-dir")
        loader = ProjectConfigLoader(conf_source=str(conf), env=env, **CONFIG_LOADER_ARGS)
        catalog = {k: v for k, v in loader["catalog"].items() if not k.startswith("_")}
        parameters = loader["parameters"]
        return cls(Path(root), catalog, experiment.declared(parameters), parameters)

    def path(self, dataset: str) -> Path:
        """The file or folder of a catalog dataset, under the project root."""
        from kedro.io.catalog_config_resolver import CatalogConfigResolver

        config = CatalogConfigResolver(config=self.catalog,
                                       default_runtime_patterns={}).resolve_pattern(dataset)
        for key in PATH_KEYS:
            if config and key in config:
                return self.root / str(config[key])
        raise ValueError(f"the catalog has no file for {dataset!r}")

    def evaluate_settings(self, run: RunSpec | None = None) -> dict[str, Any]:
        """The evaluate settings of ``run`` (merged), or ``run_defaults.evaluate``."""
        if run is None:
            return dict(self.parameters[experiment.RUN_DEFAULTS]["evaluate"])
        return dict(self.parameters[run.variant][run.size][f"s{run.seed}"]["evaluate"])

    def find_run(self, variant: str | None = None, run: str | None = None) -> RunSpec:
        """The run named ``run``, or the only run of ``variant``."""
        if run is not None:
            found = self.experiment.run(run)
            if variant is not None and found.variant != variant:
                raise ValueError(f"run {run} is of the {found.variant} variant, not {variant}")
            return found
        if variant is None:
            raise ValueError("name a --variant or a --run")
        runs = self.experiment.runs_of(variant)
        if not runs:
            raise ValueError(f"the experiment has no {variant} run (runs: "
                             f"{', '.join(r.namespace for r in self.experiment.runs)})")
        if len(runs) > 1:
            raise ValueError(f"the experiment has {len(runs)} {variant} runs "
                             f"({', '.join(r.namespace for r in runs)}); pick one with --run")
        return runs[0]
