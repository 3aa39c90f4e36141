"""Project hooks: keep the registered pipelines in step with the session's experiment,
give each run of a parallel grid one torch thread, and say where the reports of a run are
once it has finished."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl

from backstory import experiment
from backstory.core.locks import keep_artifact_locks
from backstory.experiment import Experiment
from backstory.lm.checkpoint import MODEL_META_FILE
from backstory.lm.model import ModelConfig
from backstory.lm.training.config import TrainConfig
from backstory.lm.training.launch import check_machine

logger = logging.getLogger(__name__)

# Outputs a reader opens first after a run (matched on the name after the namespace).
REPORT_NAMES = frozenset({"ingest_report", "metrics", "samples_report", "report",
                          "report_markdown", "loss_curves", "bpb_scatter", "delta_plot"})
REGISTRY_MODULE = "backstory.pipeline_registry"

_active: Experiment | None = None


def active_experiment() -> Experiment:
    """The experiment the pipelines are built from.

    Inside a Kedro session it is the session environment's (set by ExperimentHooks);
    elsewhere (``kedro registry list``, a notebook before a session) it is read from the
    project in the working directory, environment $KEDRO_ENV or the default.
    """
    if _active is not None:
        return _active
    return experiment.declared(_load_parameters(Path.cwd(), os.environ.get("KEDRO_ENV")))


def _load_parameters(project: Path, env: str | None) -> dict[str, Any]:
    from kedro.framework.project import settings

    conf = project / settings.CONF_SOURCE
    if not conf.is_dir():
        raise ValueError(f"{project} holds no {settings.CONF_SOURCE}/ folder: run from the "
                         "project root, where the experiment is declared")
    loader = settings.CONFIG_LOADER_CLASS(conf_source=str(conf), env=env,
                                          **settings.CONFIG_LOADER_ARGS)
    return loader["parameters"]


class ExperimentHooks:
    """Build the registry from the session's experiment (its env and --params).

    The session's experiment holds from its context's creation to the end of its run;
    after that, pipelines read outside a session come from the working directory again.
    """

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        _activate(experiment.declared(context.config_loader["parameters"]))

    @hook_impl
    def after_pipeline_run(self) -> None:
        _activate(None)

    on_pipeline_error = after_pipeline_run  # a failed run ends too


class ParallelGridHooks:
    """One torch thread per training process under Kedro's ``ParallelRunner``.

    ``train.num_threads: 0`` takes one thread per idle core, which each of the runner's
    worker processes would measure at the same moment and all take; several runs then
    share every core and wait on each other's threads at every operation
    (``backstory.lm.training.host``). Before the runner starts its workers, this sets
    ``OMP_NUM_THREADS=1`` in the environment they inherit, which ``num_threads: 0`` obeys
    (a value the user set is kept) and removes it after the run. Threads change speed
    only, never a result.
    """

    def __init__(self) -> None:
        self._set = False

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any]) -> None:
        # Kedro records the runner as its repr: "<kedro.runner.ParallelRunner object ...>".
        if "ParallelRunner" in str(run_params.get("runner")) \
                and "OMP_NUM_THREADS" not in os.environ:
            os.environ["OMP_NUM_THREADS"] = "1"
            self._set = True
            logger.info("ParallelRunner: one torch thread per worker process (OMP_NUM_THREADS=1)")

    @hook_impl
    def after_pipeline_run(self) -> None:
        if self._set:
            del os.environ["OMP_NUM_THREADS"]
            self._set = False

    on_pipeline_error = after_pipeline_run


def _activate(declared: Experiment | None) -> None:
    global _active
    if declared != _active:
        from kedro.framework.project import pipelines

        _active = declared
        pipelines.configure(REGISTRY_MODULE)  # the next access registers afresh


def report_paths(pipeline: Any, catalog: Any) -> list[str]:
    """The files of the report datasets ``pipeline`` writes, sorted."""
    paths = []
    for name in sorted(pipeline.all_outputs()):
        if name.rsplit(".", 1)[-1] not in REPORT_NAMES:
            continue
        path = _filepath(catalog, name)
        if path:
            paths.append(str(path))
    return paths


def _filepath(catalog: Any, name: str) -> Any:
    """The ``filepath`` of catalog dataset ``name``, if it has one."""
    dataset = catalog.get(name)
    return (dataset._describe() if dataset is not None else {}).get("filepath")


MODEL_NAME = "model"  # a run's or an external's trained model: <namespace>.model


def stale_paths(node: Any, catalog: Any, registered: Any) -> list[Path]:
    """The files derived from the model ``node`` is about to replace, that exist.

    They are the outputs of what follows ``<namespace>.model`` in the namespace's
    registered pipeline (metrics, scores, samples): once a new model is being made they
    describe a model that is going away.
    """
    paths = []
    for output in node.outputs:
        namespace, _, name = output.rpartition(".")
        pipeline = registered.get(namespace) if name == MODEL_NAME else None
        if pipeline is None:
            continue
        for derived in sorted(pipeline.from_inputs(output).all_outputs() - set(node.outputs)):
            path = _filepath(catalog, derived)
            if path and Path(path).is_file():
                paths.append(Path(path))
    return paths


class StaleReportHooks:
    """Reports (metrics, scores, samples) describe the model beside them, or are removed.

    They go when a node that makes a model starts while no model is there (a run that
    fails must not leave reports of no model), and when the saved model differs from the
    one before (its weights' sha256 in model.json): a finished run returned as it is keeps
    its reports, and a run that fails keeps the old model and the old model's reports.
    """

    def __init__(self) -> None:
        self._catalog: Any = None
        self._before: dict[str, str | None] = {}

    @hook_impl
    def before_node_run(self, node: Any, catalog: Any) -> None:
        self._catalog = catalog
        for output in node.outputs:
            if output.rpartition(".")[2] == MODEL_NAME and _weights_sha(catalog, output) is None:
                self._remove(node)

    @hook_impl
    def before_dataset_saved(self, dataset_name: str, node: Any) -> None:
        if dataset_name.rpartition(".")[2] == MODEL_NAME and self._catalog is not None:
            self._before[dataset_name] = _weights_sha(self._catalog, dataset_name)

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, node: Any) -> None:
        if dataset_name in self._before and \
                self._before.pop(dataset_name) != _weights_sha(self._catalog, dataset_name):
            self._remove(node)

    def _remove(self, node: Any) -> None:
        from kedro.framework.project import pipelines

        for path in stale_paths(node, self._catalog, pipelines):
            logger.info("Removing %s: it reports on a model %s replaces", path, node.name)
            path.unlink()


def _weights_sha(catalog: Any, model: str) -> str | None:
    """The weights' sha256 a saved model records (model.json), or None when there is none."""
    folder = _filepath(catalog, model)
    meta = Path(folder) / MODEL_META_FILE if folder else None
    if meta is None or not meta.is_file():
        return None
    try:
        return json.loads(meta.read_text()).get("weights_sha256")
    except (OSError, ValueError):
        return None


TRAIN_NODE = "train_model"
_PLACEHOLDER_VOCAB = 256  # when no tokenizer settings say more


class MachineCheckHooks:
    """Before any node runs, refuse runs of the pipeline this machine cannot train (a
    missing ``train.device``, a context too long for its memory), instead of after ingest
    and export have run."""

    @hook_impl
    def before_pipeline_run(self, pipeline: Any, catalog: Any) -> None:
        tokenizer = catalog.load("params:tokenizer") if "params:tokenizer" in catalog else {}
        vocab_size = tokenizer.get("vocab_size", _PLACEHOLDER_VOCAB)
        for node in pipeline.nodes:
            namespace, _, name = node.name.rpartition(".")
            if name != TRAIN_NODE:
                continue
            model = ModelConfig.from_dict({**catalog.load(f"params:{namespace}.model"),
                                           "vocab_size": vocab_size})
            train = TrainConfig.from_params(catalog.load(f"params:{namespace}.train"))
            check_machine(model, train, where=f"run {namespace}")


class ArtifactLockHooks:
    """Shared artifacts a pipeline run loads or writes stay locked until it ends
    (``backstory.core.locks.use_artifact``), so no other run replaces them under it."""

    @hook_impl
    def before_pipeline_run(self) -> None:
        keep_artifact_locks(True)

    @hook_impl
    def after_pipeline_run(self) -> None:
        keep_artifact_locks(False)

    on_pipeline_error = after_pipeline_run


class ReportLocationHooks:
    """After a run, log where its reports are (the last lines a user sees)."""

    @hook_impl
    def after_pipeline_run(self, pipeline: Any, catalog: Any) -> None:
        paths = report_paths(pipeline, catalog)
        if not paths:
            return
        folders = sorted({str(Path(p).parent) for p in paths})
        logger.info("Reports are in %s", ", ".join(folders))
        for path in paths:
            logger.info("  %s", path)
