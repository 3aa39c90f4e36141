"""Worker processes: results in task order, errors raised, automatic worker counts."""

from __future__ import annotations

import os

import pytest

from backstory.data.parallel import resolve_workers, run_tasks, workers_for


def square_and_pid(value: int) -> tuple[int, int]:
    if value < 0:
        raise ValueError(f"task {value} fails")
    return value * value, os.getpid()


@pytest.mark.parametrize("workers", [1, 2])
def test_results_come_back_in_task_order(workers: int) -> None:
    results = list(run_tasks(square_and_pid, list(range(12)), workers=workers))
    assert [value for value, _ in results] == [v * v for v in range(12)]
    pids = {pid for _, pid in results}
    assert (pids == {os.getpid()}) == (workers == 1)


def test_a_failing_task_raises_its_error() -> None:
    with pytest.raises(ValueError, match="task -1 fails"):
        list(run_tasks(square_and_pid, [1, -1, 2], workers=2))


def test_worker_counts() -> None:
    assert resolve_workers(5, 2) == 2 and resolve_workers(1, 9) == 1
    assert resolve_workers(0, 100) >= 1
    with pytest.raises(ValueError, match="workers"):
        resolve_workers(-1, 3)
    assert workers_for(0, 10, 100) == 1 and workers_for(0, 500, 100) == 0
    assert workers_for(2, 10, 100) == 2
