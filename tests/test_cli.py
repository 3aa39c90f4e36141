"""`backstory generate` on a tiny saved model: the happy path and every user error."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from backstory.data.tokenizer import Tokenizer
from backstory.lm.checkpoint import TrainedModel, save_model
from backstory.lm.model import Transformer
from backstory.tools.cli import main
from tests.project import REPO, make_project, model_config, trained_tokenizer

WORDS = ["Tom", "Lily", "ran", "jumped", "with", "the", "dog", "cat", "happy", "end"]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(12)) + "." for _ in range(100)]
    return Tokenizer(trained_tokenizer(texts, vocab_size=300))


def save_tiny_model(directory: Path, tokenizer: Tokenizer, variant: str,
                    tokenizer_sha256: str | None = None) -> None:
    torch.manual_seed(0)
    config = model_config(vocab_size=tokenizer.vocab_size, dim=16, n_layers=1, n_heads=2,
                         max_seq_len=48)
    model = Transformer(config)
    lineage = {"tokenizer_sha256": tokenizer_sha256 or tokenizer.sha256, "variant": variant}
    save_model(directory, TrainedModel(config, model.state_dict(), {"lineage": lineage}))


VARIANTS = ("forward", "reversed", "instruct", "backward")


@pytest.fixture(scope="module")
def project(tmp_path_factory, tokenizer: Tokenizer) -> Path:
    """A project folder laid out as the Kedro pipelines leave it (the shipped conf)."""
    root = make_project(tmp_path_factory.mktemp("project") / "p")
    tokenizer_file = root / "data/06_models/tokenizer/tokenizer.model"
    tokenizer_file.parent.mkdir(parents=True)
    tokenizer_file.write_bytes(tokenizer.model_bytes)
    for variant in VARIANTS:
        save_tiny_model(root / f"data/06_models/{variant}/small/s1337/model", tokenizer, variant)
    return root


def run(project: Path, *args: str) -> int:
    return main(["generate", "--project-dir", str(project), "--max-new-tokens", "8", *args])


@pytest.mark.parametrize("variant", VARIANTS)
def test_generate_prints_a_story(project, capsys, variant):
    prompt = "Tom ran with the dog." if variant != "instruct" else "Write a story about a dog."
    assert run(project, "--variant", variant, "--prompt", prompt, "--seed", "3") == 0
    out = capsys.readouterr().out
    assert out.strip()
    if variant == "forward":
        assert out.startswith(prompt)
    # Same arguments, same story.
    assert run(project, "--variant", variant, "--prompt", prompt, "--seed", "3") == 0
    assert capsys.readouterr().out == out


def test_several_samples_are_numbered_by_seed(project, capsys):
    code = run(project, "--variant", "forward", "--prompt", "Lily", "--num-samples", "2",
               "--seed", "4", "--temperature", "1.0", "--top-k", "20", "--top-p", "0.9")
    assert code == 0
    out = capsys.readouterr().out
    assert "--- sample 1 (seed 4) ---" in out and "--- sample 2 (seed 5) ---" in out


def test_sampling_settings_come_from_the_project(tmp_path, tokenizer, capsys):
    # top_p from the project's run_defaults.evaluate reaches generation: a nucleus this
    # small keeps only the likeliest token, so sampling at temperature 1 is greedy.
    root = make_project(tmp_path / "p", {"parameters_runs.yml": {"run_defaults": {
        "evaluate": {"temperature": 1.0, "top_p": 1e-6}}}})
    tokenizer_file = root / "data/06_models/tokenizer/tokenizer.model"
    tokenizer_file.parent.mkdir(parents=True)
    tokenizer_file.write_bytes(tokenizer.model_bytes)
    save_tiny_model(root / "data/06_models/forward/small/s1337/model", tokenizer, "forward")
    args = ["--variant", "forward", "--prompt", "Tom ran", "--num-samples", "4"]

    def stories(*more: str) -> list[str]:
        assert run(root, *args, *more) == 0
        return capsys.readouterr().out.split("---")[2::2]

    greedy = stories("--temperature", "0")
    assert stories() == greedy
    assert stories("--top-p", "1.0") != greedy  # a flag wins over the project's setting


def test_outside_a_project_the_sampling_settings_are_flags(tmp_path, project, capsys,
                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    model_dir = project / "data/06_models/forward/small/s1337/model"
    tokenizer_file = project / "data/06_models/tokenizer/tokenizer.model"
    args = ["generate", "--prompt", "Tom", "--model-dir", str(model_dir), "--tokenizer",
            str(tokenizer_file), "--max-new-tokens", "4"]
    assert main([*args, "--temperature", "1"]) == 2
    assert "is no backstory project to read the sampling settings from; pass --seed" in \
        capsys.readouterr().err
    assert main([*args, "--temperature", "1", "--seed", "3"]) == 0


def test_missing_model_names_the_command_that_makes_it(tmp_path, capsys):
    root = make_project(tmp_path / "p")
    code = main(["generate", "--variant", "reversed", "--prompt", "The end.",
                 "--project-dir", str(root)])
    assert code == 2
    err = capsys.readouterr().err
    assert "kedro run --pipelines reversed.small.s1337" in err and "Traceback" not in err
    assert str(root / "data/06_models/reversed/small/s1337/model") in err


def test_a_folder_without_conf_is_not_a_project(tmp_path, capsys):
    code = main(["generate", "--variant", "reversed", "--prompt", "The end.",
                 "--project-dir", str(tmp_path)])
    assert code == 2
    assert "is not a backstory project" in capsys.readouterr().err


def test_several_runs_of_a_variant_need_a_choice(tmp_path, tokenizer, capsys):
    root = make_project(tmp_path / "p", {"parameters_runs.yml": {"experiment": {
        "more_seeds": {"variants": ["forward"], "presets": ["small"], "seeds": [1, 2]}}}})
    tokenizer_file = root / "data/06_models/tokenizer/tokenizer.model"
    tokenizer_file.parent.mkdir(parents=True)
    tokenizer_file.write_bytes(tokenizer.model_bytes)
    save_tiny_model(root / "data/06_models/forward/small/s2/model", tokenizer, "forward")
    assert main(["generate", "--variant", "forward", "--prompt", "Tom",
                 "--project-dir", str(root)]) == 2
    err = capsys.readouterr().err
    assert "3 forward runs (forward.small.s1, forward.small.s2, forward.small.s1337)" in err
    assert main(["generate", "--run", "forward.small.s2", "--prompt", "Tom",
                 "--max-new-tokens", "4", "--project-dir", str(root)]) == 0
    assert capsys.readouterr().out.startswith("Tom")


def test_backward_model_is_not_sampled_forwards(project, capsys):
    model_dir = project / "data/06_models/backward/small/s1337/model"
    code = run(project, "--variant", "forward", "--prompt", "x", "--model-dir", str(model_dir))
    assert code == 2
    assert "trained for the 'backward' variant, not 'forward'" in capsys.readouterr().err
    # Without --variant, a model folder is sampled the way its own variant writes.
    assert run(project, "--prompt", "The dog was happy.", "--model-dir", str(model_dir)) == 0
    assert capsys.readouterr().out.rstrip().endswith("The dog was happy.")


def test_missing_tokenizer_is_a_clear_error(tmp_path, project, capsys):
    code = run(project, "--variant", "forward", "--prompt", "x",
               "--tokenizer", str(tmp_path / "none.model"))
    assert code == 2
    assert "no tokenizer at" in capsys.readouterr().err


def test_unknown_variant_is_a_usage_error(project, capsys):
    assert run(project, "--variant", "sideways", "--prompt", "x") == 2
    assert "invalid choice: 'sideways'" in capsys.readouterr().err


def test_tokenizer_of_another_training_names_both_hashes(tmp_path, project, tokenizer, capsys):
    model_dir = tmp_path / "model"
    save_tiny_model(model_dir, tokenizer, "forward", tokenizer_sha256="0" * 64)
    code = run(project, "--variant", "forward", "--prompt", "x", "--model-dir", str(model_dir))
    assert code == 2
    err = capsys.readouterr().err
    assert "0" * 64 in err and tokenizer.sha256 in err and "Traceback" not in err


def test_model_of_another_variant_is_refused(project, capsys):
    model_dir = project / "data/06_models/instruct/small/s1337/model"
    code = run(project, "--variant", "forward", "--prompt", "x", "--model-dir", str(model_dir))
    assert code == 2
    assert "trained for the 'instruct' variant, not 'forward'" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--temperature", "-1"], "temperature"),
    (["--top-p", "1.5"], "top_p"),
    (["--num-samples", "0"], "--num-samples"),
    (["--device", "nonsense"], "nonsense"),
])
def test_bad_settings_are_usage_errors(project, capsys, args, message):
    assert run(project, "--variant", "forward", "--prompt", "x", *args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_damaged_model_is_reported_not_raised(tmp_path, project, tokenizer, capsys):
    model_dir = tmp_path / "model"
    save_tiny_model(model_dir, tokenizer, "forward")
    (model_dir / "model.json").write_text("{not json")
    code = run(project, "--variant", "forward", "--prompt", "x", "--model-dir", str(model_dir))
    assert code == 2
    assert "not valid JSON" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--env", "aot", "--doublings", "2"], "need every run of aot on a wsd schedule"),
    (["--env", "aot_converged", "--presets", "huge"], "presets ['huge']: aot_converged declares"),
])
def test_a_grid_that_cannot_run_is_refused_before_it_trains(args, message, capsys):
    """The shipped conf, so nothing is trained: each refusal comes before the first pass."""
    assert main(["grid", "--project-dir", str(REPO), "--jobs", "1", *args]) == 2
    said = capsys.readouterr()
    assert message in said.err and "Traceback" not in said.err
    assert "kedro run" not in said.out


def test_a_grid_outside_a_project_names_the_folder(tmp_path, capsys):
    assert main(["grid", "--project-dir", str(tmp_path), "--env", "aot_converged"]) == 2
    assert f"{tmp_path} is not a backstory project" in capsys.readouterr().err
