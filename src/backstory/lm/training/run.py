"""`train()`: start, resume or return a finished run, in one process or several.

Launch: ``train(model_config, TrainConfig(...), train_store, val_store, run_dir)``.
With ``nproc_per_node > 1`` it starts that many worker processes itself (torch's elastic
launcher, rendezvous on 127.0.0.1); under ``torchrun`` (RANK / WORLD_SIZE set) each
process calls ``train`` and runs as its rank.

One run at a time per run folder: the process that owns the run (the caller, or rank 0
under torchrun; never the workers ``train`` launches itself) holds a ``FolderLock`` on
``run_dir`` from the first look at its checkpoints to the last, so a second run on the
same folder fails at once, naming the first.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

from backstory.core.errors import InputError
from backstory.core.files import write_json_atomically
from backstory.core.locks import LOCK_FILE, FolderLock
from backstory.data.token_store import TokenStore
from backstory.lm.checkpoint import (
    TrainedModel,
    latest_checkpoint,
    read_state,
    restore_checkpoint,
    resumable_checkpoint,
    stable_checkpoint,
    trained_at,
)
from backstory.lm.finetune import InitialModel, plain_state_dict
from backstory.lm.model import ModelConfig, Transformer
from backstory.lm.training.config import TrainConfig
from backstory.lm.training.job import (
    COOLDOWN_SHAPE,
    TrainJob,
    check_same_run,
    json_normal,
    run_differences,
)
from backstory.lm.training.launch import (
    Rank,
    check_launchable,
    env_world_size,
    join_group,
    resolve_device,
)
from backstory.lm.training.loop import Session

logger = logging.getLogger(__name__)

LOCKED_WHAT = "training checkpoints and logs"  # what the run folder's lock protects
COOLDOWNS_FILE = "cooldowns.json"  # wsd: validation loss at each length the run cooled down at
# Prefix of the rendezvous id of the workers `launch_workers` starts; torch's elastic
# agent hands it to them as TORCHELASTIC_RUN_ID.
RUN_ID_PREFIX = "backstory-"


def train(
    model_config: ModelConfig,
    config: TrainConfig,
    train_store: TokenStore,
    val_store: TokenStore,
    run_dir: Path,
    *,
    lineage: dict | None = None,
    progress: bool = True,
    init: InitialModel | None = None,
    on_eval: Callable[[int, Transformer], None] | None = None,
    live_dir: Path | None = None,
) -> TrainedModel:
    """Train (or resume, or return the finished run in ``run_dir``) and return the model.

    With ``init`` the run starts from that trained model instead of random weights
    (fully, or with LoRA adapters: ``backstory.lm.finetune``); the lineage records it
    under ``init``, and the returned model has plain (merged) weights either way.
    ``on_eval(step, model)`` runs on the main process after each validation loss
    (``Session.fit``); with ``nproc_per_node > 1`` it is pickled into the workers.
    DVCLive logs go to ``live_dir`` (default: ``live/`` in ``run_dir``).
    """
    run_dir = Path(run_dir)
    lineage = json_normal(lineage or {}, "lineage")
    _check_inputs(model_config, config, train_store, val_store)
    if init is not None:
        init.check_fits(model_config)
        lineage["init"] = json_normal(init.identity(), "initial model")
    job = TrainJob(model_config, config, train_store, val_store, run_dir, lineage, init)
    if env_world_size() > 1:
        with _rank_lock(run_dir):
            trained = _run_process(job, progress, on_eval, live_dir)
            owner = not launched_by_backstory() and int(os.environ["RANK"]) == 0
            return with_cooldowns(job, trained) if owner else trained
    with FolderLock(run_dir, LOCKED_WHAT):
        _set_aside_other_run(job)
        trained = _finished_run(job)
        if trained is None and config.nproc_per_node > 1:
            launch_workers(job, progress, on_eval, live_dir)
            trained = _trained_from_checkpoint(job)
        elif trained is None:
            trained = _run_process(job, progress, on_eval, live_dir)
        return with_cooldowns(job, trained)


def _rank_lock(run_dir: Path) -> contextlib.AbstractContextManager:
    """The run folder's lock for one process of a multi-process run.

    Workers that ``train`` launched run under their launcher's lock (taking it again
    would fail: a flock is held per process); under torchrun, rank 0 takes it.
    """
    if launched_by_backstory() or int(os.environ["RANK"]) != 0:
        return contextlib.nullcontext()
    return FolderLock(run_dir, LOCKED_WHAT)


def _check_inputs(model_config: ModelConfig, config: TrainConfig, train_store: TokenStore,
                  val_store: TokenStore) -> None:
    check_tokens_agree(model_config, train_store, val_store)
    if config.nproc_per_node > 1 and env_world_size() == 1:
        check_launchable(config)


def previous_run_dir(run_dir: Path) -> Path:
    """Where a run folder of other data or settings is moved when a new run starts."""
    return run_dir.with_name(run_dir.name + ".previous")


def _set_aside_other_run(job: TrainJob) -> None:
    """Move the run in ``run_dir`` aside when its checkpoint is of other data or settings.

    A changed input must recompute, never stop or mix: the old run's files go to
    ``<run_dir>.previous`` (replacing an older one there), so hours of training are not
    deleted by a mistaken change, and the new run starts from step 0. The folder itself
    stays, with the lock this process holds in it.

    A longer run of the same wsd settings is an extension instead (``_extend``): it
    continues from the old run's end-of-stable-phase checkpoint.
    """
    path = resumable_checkpoint(job.run_dir) if job.config.resume else None
    if path is None:
        return
    state = read_state(path)
    differences = run_differences(job, state)
    if not differences:
        return
    stable = stable_checkpoint(job.run_dir)
    if stable is not None and not run_differences(job, read_state(stable)):
        _extend(job, stable, state)
        return
    aside = previous_run_dir(job.run_dir)
    if aside.exists():
        shutil.rmtree(aside)
    aside.mkdir()
    for entry in job.run_dir.iterdir():
        if entry.name != LOCK_FILE:
            os.replace(entry, aside / entry.name)  # moved whole, not rewritten
    logger.warning("%s held a run of other data or settings (%s differ): moved it to %s and "
                   "starting afresh", job.run_dir, ", ".join(differences), aside)


def _extend(job: TrainJob, stable: Path, state: dict) -> None:
    """Continue the run in ``run_dir`` to a longer wsd length, or another cooldown, from its
    ``stable`` checkpoint.

    Every step before that checkpoint had the learning rate the new run gives it
    (``job.same_rates_until``), so training on from it repeats the new run trained from
    step 0, byte for byte, at the cost of the steps after it only. A copy of the old run
    stays in ``<run_dir>.previous``. Its final validation loss joins the run's cooldowns
    when it had finished with the same cooldown; under another cooldown (``min_lr`` or
    ``cooldown_fraction``) the earlier lengths' losses are not comparable with the new
    one's, so the cooldowns start again (the old file is in the copy).
    """
    old = state["train_config"]
    same_cooldown = all(old.get(k) == getattr(job.config, k) for k in COOLDOWN_SHAPE)
    if same_cooldown and state["step"] == old["max_steps"]:
        _record_cooldown(job.run_dir, state["meta"])
    aside = previous_run_dir(job.run_dir)
    if aside.exists():
        shutil.rmtree(aside)
    shutil.copytree(job.run_dir, aside, ignore=shutil.ignore_patterns(LOCK_FILE))
    if not same_cooldown:
        (job.run_dir / COOLDOWNS_FILE).unlink(missing_ok=True)
    restore_checkpoint(job.run_dir, stable)
    logger.info("Continuing %s from its end-of-stable-phase checkpoint %s to %d steps, min_lr "
                "%g, cooldown_fraction %g (it was %d steps, min_lr %g, cooldown_fraction %g; "
                "the run as it was is in %s)", job.run_dir, stable.name, job.config.max_steps,
                job.config.min_lr, job.config.cooldown_fraction, old["max_steps"],
                old["min_lr"], old["cooldown_fraction"], aside)


def _record_cooldown(run_dir: Path, meta: dict) -> dict:
    """Add a finished length's validation loss to the run's cooldowns file; return them."""
    file = run_dir / COOLDOWNS_FILE
    cooldowns = json.loads(file.read_text()) if file.exists() else {}
    cooldowns[str(meta["steps"])] = {"steps": meta["steps"], "tokens": meta["tokens_seen"],
                                     "val_loss": meta["val_loss"]}
    write_json_atomically(file, cooldowns)
    return cooldowns


def with_cooldowns(job: TrainJob, trained: TrainedModel) -> TrainedModel:
    """A wsd run's model with ``meta["cooldowns"]``: the validation loss (on the run's
    fixed validation windows) at every length it was trained to, shortest first, which
    the report's doubling test reads. Other schedules' models are returned as they are."""
    if job.config.schedule != "wsd":
        return trained
    cooldowns = _record_cooldown(job.run_dir, trained.meta)
    ordered = sorted(cooldowns.values(), key=lambda c: c["steps"])
    return TrainedModel(trained.config, trained.state_dict, {**trained.meta, "cooldowns": ordered})


def check_tokens_agree(model_config: ModelConfig, train_store: TokenStore,
                       val_store: TokenStore) -> None:
    """Refuse, before training, stores from different tokenizers or a model of another
    vocabulary: otherwise training runs and only evaluation (or an index error) fails."""
    both = f"training tokens {train_store.path} and validation tokens {val_store.path}"
    for key in ("tokenizer_sha256", "vocab_size"):
        ours, theirs = train_store.attrs.get(key), val_store.attrs.get(key)
        if ours != theirs:
            raise InputError(
                f"{both} were made with different tokenizers ({key} {ours!r} vs "
                f"{theirs!r}); export both splits again with the same tokenizer"
            )
    if model_config.vocab_size != int(train_store.vocab_size):
        raise InputError(
            f"model vocab_size is {model_config.vocab_size} but the {both} use a "
            f"vocabulary of {train_store.vocab_size} ids; set the model's vocab_size to it"
        )


def _finished_run(job: TrainJob, *, repair: bool = True) -> TrainedModel | None:
    """The model of a complete matching run in ``run_dir``, or None."""
    if not job.config.resume:
        return None
    path = resumable_checkpoint(job.run_dir, repair=repair)
    if path is None:
        return None
    state = read_state(path)
    check_same_run(job, state, path)
    if int(state["step"]) < job.config.max_steps:
        return None
    logger.info("Run in %s already finished at step %d; loading it", job.run_dir, state["step"])
    return _plain(job, trained_at(path, state))


def _plain(job: TrainJob, trained: TrainedModel) -> TrainedModel:
    """``trained`` with plain weights: a LoRA run's adapters merged into its layers."""
    if job.init is None:
        return trained
    weights = plain_state_dict(trained.config, trained.state_dict, job.init)
    return TrainedModel(trained.config, weights, trained.meta)


def _trained_from_checkpoint(job: TrainJob) -> TrainedModel:
    path = latest_checkpoint(job.run_dir)
    state = None if path is None else read_state(path)
    if state is None or int(state["step"]) != job.config.max_steps:
        raise RuntimeError(
            f"training workers exited without a final checkpoint in {job.run_dir} "
            f"(latest: {path})"
        )
    return _plain(job, trained_at(path, state))


def _run_process(job: TrainJob, progress: bool,
                 on_eval: Callable[[int, Transformer], None] | None = None,
                 live_dir: Path | None = None) -> TrainedModel:
    """Train as this process's rank (rank 0 of 1 without a launcher)."""
    world = env_world_size()
    rank_ = Rank()
    if world > 1:
        rank_ = Rank(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", 0)))
    device = resolve_device(job.config.device, rank_)
    if rank_.distributed:
        rank_ = join_group(rank_, device)
    try:
        if rank_.distributed:
            finished = _finished_run(job, repair=rank_.main)
            if finished is not None:
                return finished
        session = Session.start(job, rank_, device, live_dir)
        trained = session.fit(progress, on_eval=on_eval)
        if rank_.distributed:
            dist.barrier()  # rank 0's final checkpoint is on disk for everyone
            return _trained_from_checkpoint(job)
        return _plain(job, trained)
    finally:
        if rank_.owns_group:
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_workers(job: TrainJob, progress: bool, on_eval: Any = None,
                   live_dir: Path | None = None) -> None:
    """Run ``nproc_per_node`` copies of ``_worker`` and wait for all of them."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    n = job.config.nproc_per_node
    launch = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=n,
        run_id=f"{RUN_ID_PREFIX}{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{_free_port()}",
        max_restarts=0,  # a crash is reported, not retried: resume is the user's call
        monitor_interval=0.5,
        start_method="spawn",
    )
    logger.info("Launching %d training processes", n)
    elastic_launch(launch, _worker)(
        job.model_config.to_dict(), job.config.to_dict(), str(job.train_store.path),
        str(job.val_store.path), str(job.run_dir), job.lineage, progress, job.init,
        on_eval, None if live_dir is None else str(live_dir),
    )


@record
def _worker(model_config: dict, train_config: dict, train_path: str, val_path: str,
            run_dir: str, lineage: dict, progress: bool, init: InitialModel | None,
            on_eval: Any = None, live_dir: str | None = None) -> None:
    """One launched process: reopen the stores and train as the rank the launcher set."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if "OMP_NUM_THREADS" not in os.environ:
        # Processes share the cores; oversubscribed threads slow every one of them.
        local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    train(ModelConfig.from_dict(model_config), TrainConfig.from_record(train_config),
          TokenStore(Path(train_path)), TokenStore(Path(val_path)), Path(run_dir),
          lineage=lineage, progress=progress, init=init, on_eval=on_eval,
          live_dir=None if live_dir is None else Path(live_dir))


def launched_by_backstory() -> bool:
    """Whether this process is a worker `launch_workers` started (not torchrun's)."""
    return os.environ.get("TORCHELASTIC_RUN_ID", "").startswith(RUN_ID_PREFIX)
