"""Faults found by attacking the export, import, training and evaluation surfaces (issue 21).

Each test reproduces one fault as a user met it: a model folder overwritten, a diverged
model scored, shared files rewritten under a live run, a traceback instead of a message.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from kedro.io import DatasetError

from backstory.core.errors import SettingError, user_error_in
from backstory.core.files import file_sha256
from backstory.core.locks import LockedError
from backstory.data.corpus.readers import read_json_shard
from backstory.data.corpus.schema import BadRecordError
from backstory.data.corpus.sources import CorpusConfig, plan_corpus
from backstory.data.token_store import TokenStore
from backstory.data.token_writer import DocBatch, TokenStream
from backstory.datasets.token_store_dataset import TokenStoreDataset
from backstory.datasets.tokenizer_dataset import SentencePieceDataset
from backstory.evaluation.evaluate import ScoreError, summarize_scores
from backstory.experiment import expand
from backstory.lm.checkpoint import save_model
from backstory.params import build
from backstory.tools.cli import main
from tests.project import TINY_INGEST, make_project, tiny_run_params, trained_tokenizer
from tests.tiny_models import REPO, peaked_model, project_models, tokenizer
from tests.tiny_models import stories as tiny_stories

RUN_MODEL = "data/06_models/forward/small/s1337/model"


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return project_models(make_project(tmp_path_factory.mktemp("project") / "p"))


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


# --- item 3: a run never replaces a shared file another live run reads -------------------

HOLD = """
import sys
import time
from backstory.core.locks import keep_artifact_locks
from backstory.datasets.{module} import {cls}
keep_artifact_locks(True)  # as inside a pipeline run
{cls}(sys.argv[1]).load()
print("loaded", flush=True)
sys.stdin.read()  # hold until the test closes stdin
"""


@contextmanager
def live_reader(module: str, cls: str, path: Path):
    """Another process that loaded ``path`` the way a pipeline run does, still running."""
    reader = subprocess.Popen([sys.executable, "-c", HOLD.format(module=module, cls=cls),
                               str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert reader.stdout.readline() == "loaded\n"
        yield reader
    finally:
        reader.stdin.close()
        reader.wait(timeout=60)


def test_a_tokenizer_another_run_reads_is_not_replaced(tmp_path):
    path = tmp_path / "tokenizer" / "tokenizer.model"
    dataset = SentencePieceDataset(str(path))
    dataset.save(tokenizer().model_bytes)
    other = tokenizer(vocab_size=400).model_bytes
    with live_reader("tokenizer_dataset", "SentencePieceDataset", path) as reader:
        with pytest.raises(DatasetError) as raised:  # Kedro's wrapper; kedro run unwraps it
            dataset.save(other)
        assert isinstance(user_error_in(raised.value), LockedError)
        assert f"in use by another run (pid {reader.pid} on " in str(raised.value)
        assert path.read_bytes() == tokenizer().model_bytes
        dataset.save(tokenizer().model_bytes)  # the same bytes: nothing to replace
    dataset.save(other)  # the reader has finished
    assert path.read_bytes() == other


def token_stream(n_docs: int) -> TokenStream:
    """``n_docs`` documents of 5 tokens each: enough to tell two stores apart."""
    lengths = np.full(n_docs, 5, dtype=np.int64)
    batch = DocBatch(tokens=np.arange(5 * n_docs) % 500, doc_lengths=lengths,
                     story_spans=np.tile([[1, 4]], (n_docs, 1)),
                     doc_bytes=np.full(n_docs, 12, dtype=np.int64))
    attrs = {"variant": "forward", "layout": "story", "vocab_size": 512, "bos_id": 1,
             "eos_id": 2, "tokenizer_sha256": "t", "corpus_fingerprint": "c"}
    return TokenStream(batches=[batch], attrs=attrs)


def test_a_token_store_another_run_reads_is_not_replaced(tmp_path):
    path = tmp_path / "forward" / "train.h5"
    dataset = TokenStoreDataset(str(path))
    dataset.save(token_stream(20))
    before = file_sha256(path)
    with live_reader("token_store_dataset", "TokenStoreDataset", path) as reader:
        with pytest.raises(DatasetError) as raised:
            dataset.save(token_stream(30))
        assert isinstance(user_error_in(raised.value), LockedError)
        assert f"in use by another run (pid {reader.pid} on " in str(raised.value)
        assert file_sha256(path) == before
    dataset.save(token_stream(30))
    assert TokenStore(path).n_docs == 30


def test_replacing_a_token_store_keeps_the_bytes_a_reader_mapped(tmp_path):
    path = tmp_path / "train.h5"
    TokenStoreDataset(str(path)).save(token_stream(20))
    mapped = TokenStore(path)
    old = np.array(mapped.tokens)
    TokenStoreDataset(str(path)).save(token_stream(30))
    assert np.array_equal(mapped.tokens, old)  # the old inode, still mapped
    assert TokenStore(path).n_docs == 30


@pytest.mark.slow
def test_a_second_kedro_run_stops_before_replacing_the_tokenizer_of_a_live_run(tmp_path):
    root = make_project(tmp_path / "p", {
        "parameters_ingest.yml": TINY_INGEST,
        "parameters_runs.yml": tiny_run_params(max_steps=1_000_000, checkpoint_interval=1000)
        | {"experiment": {"main": {"variants": ["forward"]}}}})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    kedro = Path(sys.executable).with_name("kedro")
    first = subprocess.Popen([str(kedro), "run", "--pipelines", "ingest,forward"], cwd=root,
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        run_lock = root / "data/06_models/forward/small/s1337/run/.lock"
        deadline = time.monotonic() + 300
        while not (run_lock.is_file() and run_lock.stat().st_size):  # training has begun
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.5)
        tokenizer_file = root / "data/06_models/tokenizer/tokenizer.model"
        before = file_sha256(tokenizer_file)
        second = kedro_run(root, "--pipelines", "ingest,forward",
                           "--params", "tokenizer.vocab_size=400")
        assert second.returncode == 2, second.stderr[-3000:]
        assert f"is in use by another run (pid {first.pid} on " in second.stderr
        assert file_sha256(tokenizer_file) == before
        assert first.poll() is None  # still training
    finally:
        first.kill()
        first.wait(timeout=60)


# --- item 4: import checks the config against the weights before writing -----------------


def edit_config(folder: Path, change) -> None:
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))


def test_import_of_an_hf_config_wider_than_its_weights_is_refused(project, tmp_path, capsys):
    hf = tmp_path / "hf"
    assert export(project, hf) == 0

    def widen(config):
        del config["backstory"]
        config.update(hidden_size=16384, head_dim=16384 // config["num_attention_heads"])

    edit_config(hf, widen)
    capsys.readouterr()
    out = tmp_path / "imported"
    assert main(["import", "--source", str(hf), "--variant", "forward", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "weights do not fit the model config" in err and "dim=16384" in err
    assert not out.exists()


def test_import_of_a_ckpt_whose_model_args_do_not_fit_is_refused(tmp_path, capsys):
    tok = tokenizer()
    trained = peaked_model(tok)
    cfg = trained.config
    torch.save({"model": trained.state_dict,
                "model_args": {"dim": 16384, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads,
                               "n_kv_heads": cfg.n_kv_heads, "vocab_size": cfg.vocab_size,
                               "multiple_of": cfg.multiple_of, "max_seq_len": cfg.max_seq_len}},
               tmp_path / "ckpt.pt")
    (tmp_path / "tokenizer.model").write_bytes(tok.model_bytes)
    out = tmp_path / "imported"
    assert main(["import", "--source", str(tmp_path / "ckpt.pt"), "--variant", "forward",
                 "--out", str(out)]) == 2
    assert "weights do not fit the model config" in capsys.readouterr().err
    assert not out.exists()


def test_hand_edited_hf_fields_that_contradict_the_backstory_record_are_refused(
        project, tmp_path, capsys):
    hf = tmp_path / "hf"
    assert export(project, hf) == 0
    edit_config(hf, lambda config: config.update(rope_theta=500000.0,
                                                 rope_parameters={"rope_type": "default",
                                                                  "rope_theta": 500000.0}))
    capsys.readouterr()
    assert main(["import", "--source", str(hf), "--out", str(tmp_path / "imported")]) == 2
    err = capsys.readouterr().err
    assert "contradicts itself" in err
    assert "rope_theta: 500000.0 in the Hugging Face fields, 10000.0 under 'backstory'" in err
    assert not (tmp_path / "imported").exists()


# --- items 5 and 6: bad settings and inputs end with one paragraph, exit 2 ---------------


@pytest.mark.parametrize("section,settings,message", [
    ("corpus", {"source": "local", "path": None}, "corpus.path is not set"),
    ("ingest", {"max_stories_per_file": 0}, "ingest.max_stories_per_file must be null or >= 1"),
    ("ingest", {"on_bad_record": "bogus"}, "ingest.on_bad_record must be one of"),
])
def test_bad_ingest_settings_are_refused_when_the_parameters_are_read(section, settings,
                                                                      message):
    parameters = load_conf_parameters()
    parameters[section] = {**parameters[section], **settings}
    with pytest.raises(SettingError, match=message):
        expand(parameters)


def load_conf_parameters() -> dict:
    from backstory.config_loader import ProjectConfigLoader
    from backstory.settings import CONFIG_LOADER_ARGS

    loader = ProjectConfigLoader(conf_source=str(REPO / "conf"), **CONFIG_LOADER_ARGS)
    return {k: v for k, v in dict(loader["parameters"]).items()}


def test_a_local_corpus_folder_that_does_not_exist_is_a_setting_error(tmp_path):
    config = build(CorpusConfig, {**load_conf_parameters()["corpus"], "source": "local",
                                  "path": str(tmp_path / "nowhere")}, "corpus")
    with pytest.raises(SettingError, match=r"corpus.path=.*nowhere' does not exist"):
        plan_corpus(config, workers=1)


def test_a_vocabulary_too_small_for_the_text_is_a_setting_error():
    with pytest.raises(SettingError, match="tokenizer.vocab_size=5 does not fit"):
        trained_tokenizer(list(tiny_stories()), vocab_size=5, model_type="bpe")


@pytest.mark.parametrize("damage", ["truncated", "header length"])
def test_import_of_a_damaged_safetensors_file_names_it(project, tmp_path, capsys, damage):
    hf = tmp_path / "hf"
    assert export(project, hf) == 0
    weights = hf / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:len(data) // 2] if damage == "truncated"
                        else (1 << 62).to_bytes(8, "little") + data[8:])
    capsys.readouterr()
    assert main(["import", "--source", str(hf), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{weights} cannot be read as safetensors weights" in err and "Traceback" not in err


def test_machine_checks_refuse_before_any_work(tmp_path):
    root = make_project(tmp_path / "p", {
        "parameters_ingest.yml": TINY_INGEST,
        "parameters_runs.yml": {"experiment": {"main": {"variants": ["forward"],
                                                        "contexts": [60000]}},
                                "run_defaults": {"train": {"batch_size": 256}}}})
    result = kedro_run(root, "--pipelines", "ingest,forward")
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.startswith("kedro run: error: run forward.small-c60000.s1337: "
                                    "training needs at least ")
    assert "max_seq_len=60,000" in result.stderr and result.stderr.count("\n") == 1
    assert not (root / "data/01_raw/corpus").exists()  # nothing ran, not even ingest
    if torch.cuda.is_available():
        return
    result = kedro_run(root, "--pipelines", "ingest,forward", "--params",
                       "experiment.main.contexts=null,run_defaults.train.device=cuda")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "train.device='cuda' but CUDA is not available" in result.stderr
    assert not (root / "data/01_raw/corpus").exists()


# --- item 7: messages that name the right thing -------------------------------------------


def test_a_llama2c_bin_cut_mid_float_names_the_file(project, tmp_path, capsys):
    out = tmp_path / "l2c"
    assert export(project, out, fmt="llama2c") == 0
    model = out / "model.bin"
    model.write_bytes(model.read_bytes()[:-3])
    capsys.readouterr()
    assert main(["import", "--source", str(model), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{model} holds" in err and "truncated or damaged" in err


def test_a_json_shard_that_is_not_json_is_called_a_syntax_error(tmp_path):
    with pytest.raises(BadRecordError) as raised:
        list(read_json_shard(b"{ this is not json", "data00.json"))
    assert "JSON object" not in str(raised.value) and "data00.json" in str(raised.value)
    with pytest.raises(BadRecordError, match="got a JSON object"):
        list(read_json_shard(b'{"story": "a real object"}', "data00.json"))


FULL_DISK_INGEST = """
import resource, signal, sys
from kedro.framework.cli import main
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.RLIM_INFINITY))
sys.argv = ["kedro", "run", "--pipelines", "ingest", "--params", sys.argv[2]]
main()
"""


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs POSIX file size limits")
def test_a_full_disk_during_ingest_names_the_file(tmp_path):
    root = make_project(tmp_path / "p", {"parameters_ingest.yml": TINY_INGEST})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    env.pop("BACKSTORY_TRACEBACK", None)
    # One process (workers=1): the limit is inherited by forks, its SIG_IGN is not always.
    assert kedro_run(root, "--pipelines", "ingest", "--params", "ingest.workers=1"
                     ).returncode == 0
    result = subprocess.run([sys.executable, "-c", FULL_DISK_INGEST, "3000",
                             "ingest.workers=1,split.val_fraction=0.2"], cwd=root, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "kedro run: error: cannot write " in result.stderr
    assert "data/02_intermediate/stories" in result.stderr and "Traceback" not in result.stderr


# --- item 9: an imported folder brings its own tokenizer ---------------------------------


def test_generate_with_an_imported_folder_outside_a_project(project, tmp_path, monkeypatch,
                                                            capsys):
    imported = tmp_path / "imported"
    assert export(project, tmp_path / "hf") == 0
    assert main(["import", "--source", str(tmp_path / "hf"), "--out", str(imported)]) == 0
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)  # no conf/ here: not a project
    args = ["generate", "--prompt", "Once upon a time", "--temperature", "0",
            "--max-new-tokens", "8"]
    assert main([*args, "--model-dir", str(imported)]) == 0
    story = capsys.readouterr().out
    assert story.startswith("Once upon a time")
    assert main([*args, "--model-dir", str(imported), "--tokenizer",
                 str(imported / "tokenizer.model")]) == 0
    assert capsys.readouterr().out == story


def test_a_reader_of_one_store_does_not_block_its_neighbour(tmp_path):
    """One lock per file: ParallelRunner exports train.h5 and val.h5 of one folder at once."""
    train, val = tmp_path / "forward" / "train.h5", tmp_path / "forward" / "val.h5"
    TokenStoreDataset(str(train)).save(token_stream(20))
    with live_reader("token_store_dataset", "TokenStoreDataset", train):
        TokenStoreDataset(str(val)).save(token_stream(10))
    assert TokenStore(val).n_docs == 10
