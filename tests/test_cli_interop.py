"""`backstory export`, `import`, `reverse-words` and the beam / constraint flags of `generate`."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from backstory.data.text import reverse_words
from backstory.lm.checkpoint import build_model, load_trained
from backstory.lm.constraints import pilish_violations, pilish_words
from backstory.tools.cli import main
from tests.project import make_project
from tests.tiny_models import project_models


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project folder laid out as the Kedro pipelines leave it (the shipped conf)."""
    return project_models(make_project(tmp_path_factory.mktemp("project") / "p"),
                          ("forward", "reversed", "backward"))


def test_export_llama2c_of_the_reversed_model(project, tmp_path, capsys):
    out = tmp_path / "reversed"
    code = main(["export", "--variant", "reversed", "--format", "llama2c",
                 "--project-dir", str(project), "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out.split()
    assert sorted(Path(p).name for p in printed) == [
        "model.bin", "model.lineage.json", "tokenizer.bin", "tokenizer.model"]
    sidecar = json.loads((out / "model.lineage.json").read_text())
    assert sidecar["variant"] == "reversed" and sidecar["word_order"] == "reversed"


def test_export_hf_with_explicit_paths(project, tmp_path, capsys):
    out = tmp_path / "hf"
    code = main(["export", "--format", "hf", "--model-dir",
                 str(project / "data/06_models/forward/small/s1337/model"), "--tokenizer",
                 str(project / "data/06_models/tokenizer/tokenizer.model"), "--out", str(out)])
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    assert config["backstory"]["variant"] == "forward"
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.model").is_file()


@pytest.mark.parametrize("args,message", [
    (["--variant", "instruct"], "kedro run --pipelines instruct.small.s1337"),
    (["--model-dir", "{project}/data/06_models/forward/small/s1337/model", "--variant", "reversed"],
     "trained for the 'forward' variant, not 'reversed'"),
    (["--variant", "forward", "--tokenizer", "{project}/nothing.model"], "no tokenizer at"),
    ([], "name a --variant or a --run"),
])
def test_export_errors_are_usage_errors(project, tmp_path, capsys, args, message):
    args = [a.format(project=project) for a in args]
    code = main(["export", "--format", "llama2c", "--project-dir", str(project),
                 "--out", str(tmp_path / "out"), *args])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_import_then_generate_with_the_imported_model(project, tmp_path, capsys):
    exported = tmp_path / "exported"
    assert main(["export", "--variant", "forward", "--format", "llama2c", "--project-dir",
                 str(project), "--out", str(exported)]) == 0
    imported = tmp_path / "imported"
    assert main(["import", "--source", str(exported / "model.bin"), "--out",
                 str(imported)]) == 0
    capsys.readouterr()
    original = load_trained(project / "data/06_models/forward/small/s1337/model")
    back = load_trained(imported)
    assert back.meta["lineage"] == original.meta["lineage"]
    tokens = torch.tensor([[1, 5, 9, 300]])
    with torch.no_grad():
        assert torch.equal(build_model(original)(tokens)[0], build_model(back)(tokens)[0])
    args = ["generate", "--variant", "forward", "--prompt", "Once upon a time",
            "--temperature", "0", "--max-new-tokens", "12"]
    assert main([*args, "--project-dir", str(project)]) == 0
    from_project = capsys.readouterr().out
    assert main([*args, "--model-dir", str(imported), "--tokenizer",
                 str(imported / "tokenizer.model")]) == 0
    assert capsys.readouterr().out == from_project


def test_import_of_a_missing_or_foreign_file_is_a_usage_error(tmp_path, capsys):
    assert main(["import", "--source", str(tmp_path / "none.bin"), "--out",
                 str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "model.onnx").write_bytes(b"\0")
    assert main(["import", "--source", str(tmp_path / "model.onnx"), "--out",
                 str(tmp_path / "o")]) == 2
    assert "cannot tell its format" in capsys.readouterr().err


def test_reverse_words_reads_stdin(monkeypatch, capsys):
    text = 'Tom said, "Look!" They were happy.\n'
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    assert main(["reverse-words"]) == 0
    out = capsys.readouterr().out
    assert out == reverse_words(text[:-1]) + "\n"
    assert out.startswith(".happy were They")
    monkeypatch.setattr("sys.stdin", io.StringIO(out))
    assert main(["reverse-words"]) == 0
    assert capsys.readouterr().out == text  # the reversal undoes itself


def run_generate(project: Path, *args: str) -> int:
    return main(["generate", "--project-dir", str(project), "--max-new-tokens", "40", *args])


def test_beam_search_from_the_command_line(project, capsys):
    args = ("--variant", "forward", "--prompt", "Once upon a time", "--beam-width", "3",
            "--length-penalty", "0.5")
    assert run_generate(project, *args) == 0
    first = capsys.readouterr().out
    assert first.startswith("Once upon a time")
    assert run_generate(project, *args, "--seed", "7", "--temperature", "1.5") == 0
    assert capsys.readouterr().out == first  # deterministic: sampling settings unused


@pytest.mark.parametrize("variant,prompt", [("forward", "Once upon a time"),
                                            ("reversed", "They were happy.")])
def test_pilish_from_the_command_line(project, capsys, variant, prompt):
    assert run_generate(project, "--variant", variant, "--prompt", prompt,
                        "--constraint", "pilish", "--seed", "3", "--max-new-tokens", "90") == 0
    story = capsys.readouterr().out.rstrip("\n")
    # Generated text comes after the prompt (forward) or before it (reversed, read forwards).
    if variant == "forward":
        generated = story[len(prompt):]
    else:
        generated = reverse_words(story[:len(story) - len(prompt)])
    assert story.startswith(prompt) if variant == "forward" else story.endswith(prompt)
    assert pilish_violations(generated) == []
    assert len(pilish_words(generated)) >= 5


@pytest.mark.parametrize("args,message", [
    (["--beam-width", "0"], "beam_width"),
    (["--beam-width", "2", "--num-samples", "2"], "--num-samples 1"),
    (["--length-penalty", "nan"], "length_penalty"),
    (["--constraint", "haiku"], "invalid choice: 'haiku'"),
])
def test_bad_generation_settings_are_usage_errors(project, capsys, args, message):
    assert run_generate(project, "--variant", "forward", "--prompt", "x", *args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_constraint_on_backward_token_order_is_refused(project, capsys):
    assert run_generate(project, "--variant", "backward", "--prompt", "The end.",
                        "--constraint", "pilish") == 2
    assert "writes tokens last first" in capsys.readouterr().err
