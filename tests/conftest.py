"""Test-wide settings: no telemetry, no analytics, deterministic CPU threads."""

import os

import pytest

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")


# ------------------------------------------------------------------------------------
# One tiny end-to-end run (ingest, all variants, compare), shared by the tests that read
# its outputs: a whole-project run is the expensive part of the suite.

TINY_COMPARE = {
    "compare": {"n_stories": 2, "n_boot": 200, "generate_batch_size": 2, "batch_size": 8},
}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The project root of one finished `kedro run` (all pipelines) on the tiny config."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from tests.project import TINY_INGEST, learning_run_params, make_project

    params = {"parameters_ingest.yml": TINY_INGEST, "parameters_runs.yml": learning_run_params(),
              "parameters_compare.yml": TINY_COMPARE}
    root = make_project(tmp_path_factory.mktemp("tiny_run") / "project", params)
    previous = os.getcwd()
    os.chdir(root)
    try:
        bootstrap_project(root)
        with KedroSession.create(project_path=root, env="base") as session:
            session.run()
    finally:
        os.chdir(previous)
    return root


@pytest.fixture
def server():
    """A loopback HTTP server (tests/loopback.py): its base URL and its state."""
    from tests.loopback import serving

    with serving() as served:
        yield served
