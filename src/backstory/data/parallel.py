"""Run independent tasks in worker processes and hand their results back in task order.

Workers are started with ``spawn``, so they hold nothing of the parent (a Kedro session,
torch threads, open files) and a task's result depends on its arguments only: the same
tasks give the same results whatever the number of workers. ``workers=1`` runs the
tasks in this process, one after another.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def usable_cores() -> int:
    """Cores this process may run on (its affinity), not all the machine has."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # pragma: no cover - platforms without affinity


def resolve_workers(workers: int, n_tasks: int) -> int:
    """Processes to use: ``workers`` (0: every usable core), at most one per task."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an integer >= 0 (0: all cores), got {workers!r}")
    wanted = workers or usable_cores()
    return max(1, min(wanted, n_tasks))


def workers_for(workers: int, amount: int, worth_it: int) -> int:
    """``workers``, except that automatic (0) means 1 when ``amount`` < ``worth_it``.

    Starting a worker process costs a second or two (imports), which small jobs (tests,
    the built-in corpus) would spend for nothing; an explicit count is always honoured.
    """
    return 1 if workers == 0 and amount < worth_it else workers


def run_tasks(
    func: Callable[[T], R],
    tasks: Sequence[T],
    *,
    workers: int = 0,
    initializer: Callable[..., Any] | None = None,
    initargs: tuple = (),
    what: str = "tasks",
) -> Iterator[R]:
    """Yield ``func(task)`` for each task, in order, computed by up to ``workers`` processes.

    ``func`` and ``initializer`` must be module-level functions (or partials of them)
    and tasks picklable. The first failing task's exception is raised (with the
    remaining tasks cancelled); results of tasks that finished earlier were yielded.
    """
    n = resolve_workers(workers, len(tasks))
    if not tasks:
        return
    if n == 1:
        if initializer is not None:
            initializer(*initargs)
        for index, task in enumerate(tasks):
            yield func(task)
            logger.debug("%s: %d of %d done", what, index + 1, len(tasks))
        return
    logger.info("%s: %d in %d worker processes", what, len(tasks), n)
    context = multiprocessing.get_context("spawn")
    executor = ProcessPoolExecutor(n, mp_context=context, initializer=initializer,
                                   initargs=initargs)
    try:
        futures: list[Future] = [executor.submit(func, task) for task in tasks]
        for index, future in enumerate(futures):
            yield future.result()
            logger.debug("%s: %d of %d done", what, index + 1, len(tasks))
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
