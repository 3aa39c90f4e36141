"""Faults found by attacking the export, import, training and evaluation surfaces (issue 21).

Each test reproduces one fault as a user met it: a model folder overwritten, a diverged
model scored, shared files rewritten under a live run, a traceback instead of a message.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from backstory.data.files import file_sha256
from backstory.evaluation.evaluate import ScoreError, summarize_scores
from backstory.lm.checkpoint import save_model
from backstory.tools.cli import main
from tests.project import TINY_INGEST, make_project, tiny_run_params
from tests.tiny_models import peaked_model, tokenizer

RUN_MODEL = "data/06_models/forward/small/s1337/model"


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = make_project(tmp_path_factory.mktemp("project") / "p")
    tok = tokenizer()
    tokenizer_file = root / "data/06_models/tokenizer/tokenizer.model"
    tokenizer_file.parent.mkdir(parents=True)
    tokenizer_file.write_bytes(tok.model_bytes)
    save_model(root / RUN_MODEL, peaked_model(tok, "forward", scale=1.0))
    return root


def sums(folder: Path) -> dict[str, str]:
    return {p.name: file_sha256(p) for p in sorted(folder.iterdir()) if p.is_file()}


def export(project: Path, out: Path, *extra: str, fmt: str = "hf") -> int:
    return main(["export", "--variant", "forward", "--format", fmt, "--project-dir",
                 str(project), "--out", str(out), *extra])


# --- item 1: export and import never overwrite a model unasked ---------------------------


def test_export_onto_the_runs_own_model_folder_is_refused(project, capsys):
    model = project / RUN_MODEL
    before = sums(model)
    assert export(project, model) == 2
    err = capsys.readouterr().err
    assert str(model) in err and "--force" in err and "Traceback" not in err
    assert sums(model) == before


def test_export_inside_a_model_folder_is_refused(project, capsys):
    assert export(project, project / RUN_MODEL / "hf") == 2
    assert "inside the model or training run folder" in capsys.readouterr().err
    assert not (project / RUN_MODEL / "hf").exists()


def test_import_onto_its_own_source_is_refused(project, tmp_path, capsys):
    hf = tmp_path / "fwd-hf"
    assert export(project, hf) == 0
    before = sums(hf)
    capsys.readouterr()
    assert main(["import", "--source", str(hf), "--out", str(hf)]) == 2
    assert "is where the source" in capsys.readouterr().err
    assert sums(hf) == before


def test_files_of_the_same_name_are_replaced_only_with_force(project, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "tokenizer.model").write_bytes(b"mine")
    (out / "notes.txt").write_text("kept")
    assert export(project, out, fmt="llama2c") == 2
    assert "already holds tokenizer.model" in capsys.readouterr().err
    assert (out / "tokenizer.model").read_bytes() == b"mine"
    assert export(project, out, "--force", fmt="llama2c") == 0
    assert (out / "tokenizer.model").read_bytes() == tokenizer().model_bytes
    assert (out / "notes.txt").read_text() == "kept"


def test_out_naming_a_file_says_it_must_be_a_folder(project, tmp_path, capsys):
    file = tmp_path / "a-file"
    file.write_text("x")
    assert export(project, file, "--force") == 2
    assert "--out must be a folder" in capsys.readouterr().err


FULL_DISK = """
import resource, signal, sys
from backstory.tools.cli import main
# A real failed write, as on a full disk: no file may grow past 20 kB (EFBIG).
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.RLIM_INFINITY))
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs POSIX file size limits")
@pytest.mark.parametrize("fmt", ["hf", "llama2c", "import"])
def test_a_full_disk_leaves_no_half_folder_and_names_it(project, tmp_path, fmt):
    out = tmp_path / "out"
    if fmt == "import":
        source = tmp_path / "src"
        assert export(project, source) == 0
        args = ["import", "--source", str(source), "--out", str(out)]
    else:
        args = ["export", "--variant", "forward", "--format", fmt, "--project-dir",
                str(project), "--out", str(out)]
    result = subprocess.run([sys.executable, "-c", FULL_DISK, *args], capture_output=True,
                            text=True)
    assert result.returncode == 2, result.stderr
    assert f"cannot write {out}" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == (["src"] if fmt == "import" else [])


# --- item 8: safetensors files honour the umask ------------------------------------------


def test_weights_files_get_the_umask_mode_like_every_other_file(project, tmp_path):
    old = os.umask(0o022)
    try:
        assert export(project, tmp_path / "hf") == 0
        assert main(["import", "--source", str(tmp_path / "hf"), "--out",
                     str(tmp_path / "imported")]) == 0
        save_model(tmp_path / "saved", peaked_model(tokenizer(), "forward"))
    finally:
        os.umask(old)
    for file in (tmp_path / "hf/model.safetensors", tmp_path / "imported/model.safetensors",
                 tmp_path / "saved/model.safetensors", tmp_path / "hf/config.json"):
        assert stat.S_IMODE(file.stat().st_mode) == 0o644, file
    assert stat.S_IMODE((tmp_path / "hf").stat().st_mode) == 0o755


# --- item 2: a diverged model is stopped, never scored -----------------------------------


def test_summarize_scores_refuses_a_story_scored_nan():
    documents = pd.DataFrame({"nats": [2.0, np.nan, 3.0], "bits": [2.9, np.nan, 4.3],
                              "targets": [10, 10, 10], "story_tokens": [9, 9, 9],
                              "n_bytes": [40, 40, 40]})
    # The fault: pandas' sums skip NaN, so the other stories alone set the score.
    assert np.isfinite(documents["nats"].sum())
    with pytest.raises(ScoreError, match="1 of 3 evaluated stories score NaN"):
        summarize_scores(documents)
    assert summarize_scores(documents.dropna())["n_docs"] == 2


def kedro_run(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    env.pop("BACKSTORY_TRACEBACK", None)
    kedro = Path(sys.executable).with_name("kedro")
    return subprocess.run([str(kedro), "run", *args], cwd=root, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_a_diverging_run_stops_saves_no_model_and_drops_old_reports(tmp_path):
    root = make_project(tmp_path / "p", {
        "parameters_ingest.yml": TINY_INGEST,
        "parameters_runs.yml": tiny_run_params(lr=1e10, warmup_steps=1, max_steps=12,
                                               log_interval=2, checkpoint_interval=6,
                                               eval_interval=6)
        | {"experiment": {"main": {"variants": ["forward"]}}}})
    reports = root / "data/08_reporting/forward/small/s1337"
    reports.mkdir(parents=True)  # an older model's reports
    (reports / "metrics.json").write_text('{"val_bpb": 1.5}')
    (reports / "samples.md").write_text("old samples")
    result = kedro_run(root, "--pipelines", "ingest,forward")
    assert result.returncode == 2, result.stderr[-3000:]
    message = result.stderr[result.stderr.index("kedro run: error:"):]  # after progress bars
    assert message.startswith("kedro run: error: training diverged: the training loss is ")
    assert "at step 2 of" in message and "train.lr=1e+10" in message
    assert "Traceback" not in message
    run = root / "data/06_models/forward/small/s1337"
    assert not (run / "model").exists()
    assert not (run / "run/checkpoints").exists()
    assert sorted(p.name for p in reports.iterdir()) == []
