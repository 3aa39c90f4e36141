"""Fine-tuning from another run's model, full and LoRA: settings, merging, exact resume,
lineage, and what counts as a changed input."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from backstory.core.errors import InputError, SettingError
from backstory.data.token_store import TokenStore
from backstory.lm.checkpoint import (
    build_model,
    latest_checkpoint,
    load_checkpoint,
    read_state,
    save_model,
)
from backstory.lm.finetune import (
    LORA_TARGETS,
    FinetuneConfig,
    InitialModel,
    plain_state_dict,
    training_model,
    weights_sha256,
)
from backstory.lm.model import Transformer
from backstory.lm.training import train
from tests.project import REPO
from tests.test_train import (
    LINEAGE,
    MODEL,
    assert_same_weights,
    deterministic_logs,
    fail_at,
    make_store,
    small_config,
)


def finetune_defaults() -> dict:
    import yaml

    data = yaml.safe_load((REPO / "conf/base/parameters_runs.yml").read_text())
    return dict(data["run_defaults"]["finetune"])


def finetune_config(**overrides) -> FinetuneConfig:
    return FinetuneConfig.from_params({**finetune_defaults(), **overrides})


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> tuple[TokenStore, TokenStore]:
    folder = tmp_path_factory.mktemp("stores")
    return make_store(folder / "train.h5", seed=0), make_store(folder / "val.h5", seed=1)


@pytest.fixture(scope="module")
def pretrained(stores, tmp_path_factory):
    """A model trained from scratch: the initial model of the fine-tuning runs."""
    torch.set_num_threads(1)
    return train(MODEL, small_config(max_steps=12), *stores,
                 tmp_path_factory.mktemp("pretrain"), lineage=LINEAGE, progress=False)


def initial(pretrained, **settings) -> InitialModel:
    return InitialModel("forward.small.s1337", pretrained, finetune_config(**settings))


def tune(stores, run_dir: Path, init: InitialModel, config=None):
    return train(MODEL, config or small_config(lr=1e-3), stores[0], stores[1], run_dir,
                 lineage=LINEAGE, progress=False, init=init)


# --- settings ------------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "key"), [
    (dict(method="adapter"), "finetune.method"),
    (dict(lora_rank=0), "finetune.lora_rank"),
    (dict(lora_rank=2.5), "finetune.lora_rank"),
    (dict(lora_alpha=0), "finetune.lora_alpha"),
    (dict(lora_alpha=True), "finetune.lora_alpha"),
    (dict(lora_dropout=1.0), "finetune.lora_dropout"),
])
def test_bad_finetune_settings_name_their_key(overrides, key):
    with pytest.raises(SettingError, match=key.replace(".", r"\.")):
        finetune_config(**overrides)


def test_finetune_settings_refuse_unknown_and_missing_keys():
    settings = finetune_defaults()
    assert FinetuneConfig.from_params(settings).to_dict() == settings
    with pytest.raises(SettingError, match="unknown finetune key rank; known keys"):
        FinetuneConfig.from_params({**settings, "rank": 4})
    del settings["method"]
    with pytest.raises(SettingError, match="finetune lacks method"):
        FinetuneConfig.from_params(settings)


def test_weights_sha256_is_the_sha256_model_json_records(pretrained, tmp_path):
    save_model(tmp_path, pretrained)
    import json

    recorded = json.loads((tmp_path / "model.json").read_text())["weights_sha256"]
    assert weights_sha256(pretrained.state_dict) == recorded


def test_an_initial_model_of_another_shape_is_refused(pretrained, stores, tmp_path):
    init = initial(pretrained)
    with pytest.raises(InputError, match=r"run forward\.small\.s1337.*dim 32 vs 64"):
        train(replace(MODEL, dim=64), small_config(), *stores, tmp_path, progress=False,
              init=init)
    assert not (tmp_path / "checkpoints").exists()


# --- the model a run starts from -------------------------------------------------------


def test_lora_starts_as_the_initial_model_and_trains_only_adapters(pretrained):
    init = initial(pretrained, method="lora", lora_rank=4)
    torch.manual_seed(0)
    model = training_model(MODEL, init)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    adapted = {n.split(".")[-4] for n in trainable}
    assert adapted == set(LORA_TARGETS)
    tokens = torch.randint(0, MODEL.vocab_size, (2, 16))
    plain = build_model(pretrained).eval()
    with torch.no_grad():
        assert torch.equal(model.eval()(tokens)[0], plain(tokens)[0])  # B = 0 at the start


def test_merged_lora_weights_compute_what_the_adapted_model_computes(pretrained):
    init = initial(pretrained, method="lora", lora_rank=4, lora_alpha=8)
    torch.manual_seed(0)
    model = training_model(MODEL, init)
    with torch.no_grad():  # adapters that do something: B away from zero
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.normal_(std=0.05)
    merged = plain_state_dict(MODEL, model.state_dict(), init)
    assert merged.keys() == Transformer(MODEL).state_dict().keys()
    embedding = "tok_embeddings.weight"
    assert torch.equal(merged[embedding], pretrained.state_dict[embedding])
    tokens = torch.randint(0, MODEL.vocab_size, (2, 16))
    with torch.no_grad():
        adapted = model.eval()(tokens)[0]
        plain = build_model(replace(pretrained, state_dict=merged)).eval()(tokens)[0]
    assert not torch.allclose(adapted, build_model(pretrained).eval()(tokens)[0], atol=1e-3)
    torch.testing.assert_close(plain, adapted, rtol=0, atol=1e-5)


# --- runs ------------------------------------------------------------------------------


def test_full_finetuning_starts_from_the_initial_model_and_records_it(pretrained, stores,
                                                                      tmp_path):
    init = initial(pretrained)
    tuned = tune(stores, tmp_path / "ft", init)
    scratch = train(MODEL, small_config(lr=1e-3), *stores, tmp_path / "scratch",
                    lineage=LINEAGE, progress=False)
    identity = {"run": "forward.small.s1337", "weights_sha256": weights_sha256(
        pretrained.state_dict), "finetune": finetune_defaults()}
    assert tuned.meta["lineage"] == {**LINEAGE, "init": identity}
    assert read_state(latest_checkpoint(tmp_path / "ft"))["lineage"]["init"] == identity
    # Fine-tuning continues from the trained model: better than twelve steps from scratch.
    assert tuned.meta["val_loss"] < scratch.meta["val_loss"]
    assert not torch.equal(tuned.state_dict["tok_embeddings.weight"],
                           pretrained.state_dict["tok_embeddings.weight"])
    again = tune(stores, tmp_path / "ft2", init)
    assert_same_weights(tuned.state_dict, again.state_dict)  # same inputs, same bytes


def test_lora_run_saves_adapters_in_checkpoints_and_returns_merged_weights(pretrained, stores,
                                                                          tmp_path):
    init = initial(pretrained, method="lora", lora_rank=4)
    tuned = tune(stores, tmp_path, init, small_config(lr=1e-2))
    state = load_checkpoint(latest_checkpoint(tmp_path)).model_state
    assert any(".lora_A." in name for name in state)
    frozen = "layers.0.attention.wq.base_layer.weight"
    assert torch.equal(state[frozen], pretrained.state_dict["layers.0.attention.wq.weight"])
    assert tuned.state_dict.keys() == pretrained.state_dict.keys()  # plain names, no adapters
    assert torch.equal(tuned.state_dict["norm.weight"], pretrained.state_dict["norm.weight"])
    assert not torch.equal(tuned.state_dict["layers.0.attention.wq.weight"],
                           pretrained.state_dict["layers.0.attention.wq.weight"])
    build_model(tuned)  # fits a plain model exactly
    # A finished run is handed back merged, equal to what training returned.
    assert_same_weights(tune(stores, tmp_path, init, small_config(lr=1e-2)).state_dict,
                        tuned.state_dict)


class _Interrupted(Exception):
    pass


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_interrupted_lora_run_resumes_exactly(pretrained, stores, tmp_path, dropout,
                                              monkeypatch):
    init = initial(pretrained, method="lora", lora_rank=4, lora_dropout=dropout)
    config = small_config(lr=1e-2, max_steps=12, checkpoint_interval=4)
    with monkeypatch.context() as patch, pytest.raises(_Interrupted):
        fail_at(patch, 9, _Interrupted())  # the run dies mid-way
        tune(stores, tmp_path / "run", init, config)
    assert read_state(latest_checkpoint(tmp_path / "run"))["step"] == 8
    resumed = tune(stores, tmp_path / "run", init, config)
    clean = tune(stores, tmp_path / "clean", init, config)
    assert_same_weights(clean.state_dict, resumed.state_dict)
    assert deterministic_logs(tmp_path / "run") == deterministic_logs(tmp_path / "clean")


def test_a_changed_initial_model_or_method_starts_the_run_afresh(pretrained, stores, tmp_path,
                                                                 caplog):
    run_dir = tmp_path / "run"
    init = initial(pretrained, method="lora", lora_rank=4)
    tune(stores, run_dir, init)
    other_weights = {k: v + 0.01 if k == "norm.weight" else v
                     for k, v in pretrained.state_dict.items()}
    other = InitialModel(init.run, replace(pretrained, state_dict=other_weights), init.finetune)
    with caplog.at_level(logging.WARNING, logger="backstory.lm.training.run"):
        moved = tune(stores, run_dir, other)
    (said,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "initial model" in said and "run.previous" in said
    assert_same_weights(moved.state_dict, tune(stores, tmp_path / "clean", other).state_dict)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="backstory.lm.training.run"):
        tune(stores, run_dir, initial(pretrained, method="lora", lora_rank=2))
    assert any("initial model" in r.getMessage() for r in caplog.records)
    assert read_state(latest_checkpoint(run_dir))["lineage"]["init"]["finetune"][
        "lora_rank"] == 2


def test_two_processes_fine_tune_with_lora_like_one(pretrained, stores, tmp_path):
    """DistributedDataParallel (gloo): the initial model travels to the workers, only the
    adapters are synchronised, and the merged result matches one process."""
    init = initial(pretrained, method="lora", lora_rank=4)
    one = tune(stores, tmp_path / "one", init,
               small_config(lr=1e-2, max_steps=6, grad_accum=2))
    two = tune(stores, tmp_path / "two", init,
               small_config(lr=1e-2, max_steps=6, grad_accum=2, nproc_per_node=2))
    assert two.meta["world_size"] == 2
    assert two.meta["lineage"]["init"] == one.meta["lineage"]["init"]
    assert two.state_dict.keys() == pretrained.state_dict.keys()
    for name, tensor in one.state_dict.items():
        torch.testing.assert_close(two.state_dict[name], tensor, atol=1e-5, rtol=1e-4)
