"""Arrows of Time controls: the permuted token order, GRU/LSTM model families and the
own-tokenizer variant (issue 9, sections 3 and 4)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from backstory import experiment, variants
from backstory.core.errors import SettingError
from backstory.data.corpus.storyworld import generate_record
from backstory.data.text import reverse_words
from backstory.data.tokenizer import Tokenizer
from backstory.evaluation import report as reporting
from backstory.evaluation.metrics import document_bits, evaluate_loss
from backstory.evaluation.sampling import generate_story, samples_markdown
from backstory.lm import orders
from backstory.lm.beam import beam_search
from backstory.lm.checkpoint import load_trained
from backstory.lm.families import new_model
from backstory.lm.generate import generate
from backstory.lm.interop import export_model
from backstory.lm.recurrent import RecurrentLM
from backstory.lm.training import loop as train_loop
from backstory.lm.training import train
from backstory.pipelines.compare.nodes import lead_runs, measure_arrow_of_time
from backstory.pipelines.ingest.nodes import fit_tokenizer
from backstory.pipelines.run.export_nodes import fit_own_tokenizer
from tests.project import REPO, make_project, model_config, tiny_run_params, trained_tokenizer
from tests.test_train import (
    LINEAGE,
    VOCAB,
    assert_same_weights,
    small_config,
)
from tests.test_train import one_thread as one_thread  # noqa: F401
from tests.test_train import stores as stores  # noqa: F401  (the module fixture)

RECURRENT = {"gru": dict(dim=32, n_layers=2), "lstm": dict(dim=32, n_layers=2)}


# ----------------------------------------------------------------------- the permutation


def test_every_order_a_variant_names_is_defined_and_reads_its_prompts_back():
    """Each writing order feeds a prompt as its model reads text and reads the ids back
    in text order; an unknown order is refused by name."""
    assert {v.token_order for v in variants.REGISTRY.values()} <= set(orders.ORDERS)
    ids, bos = [5, 6, 7], 1
    for order in orders.ORDERS.values():
        if not order.writes:
            continue
        fed = order.prompt(bos, ids)
        assert fed[-1] == (ids[0] if order.reverses else ids[-1])  # generation continues it
        assert [t for t in order.read_back(fed + [9]) if t != bos] == (
            [9] + ids if order.reverses else ids + [9])
    with pytest.raises(ValueError, match="token_order must be one of"):
        orders.get("sideways")


def test_the_permutation_is_a_fixed_seeded_bijection_keeping_the_first_position():
    order = orders.window_order(257, 0)
    assert sorted(order.tolist()) == list(range(257)) and order[0] == 0
    assert np.array_equal(order, orders.window_order(257, 0))  # fixed: the seed alone
    assert not np.array_equal(order, orders.window_order(257, 1))
    assert not np.array_equal(order, np.arange(257))
    # A shorter window reads its positions in the same relative order.
    (short,) = orders.row_orders(np.array([100]), 257, 0)
    assert short[:100].tolist() == [p for p in order.tolist() if p < 100]
    assert short[100:].tolist() == list(range(100, 257))


def test_training_and_evaluation_read_a_window_in_the_same_permuted_order():
    windows = np.arange(2 * 9, dtype=np.int64).reshape(2, 9)
    order = orders.window_order(9, 7)
    host = train_loop.host_tensor(windows, "permuted", pin=False, permutation_seed=7)
    assert host.tolist() == windows[:, order].tolist()
    mask = np.ones((2, 8), dtype=bool)
    mask[1, 3] = False  # target at position 4 of row 1 is not story text
    permuted, permuted_mask = orders.permute_scored(windows, mask, 7)
    assert permuted.tolist() == host.tolist()
    # Each target keeps its own mask value wherever the permutation puts it.
    assert permuted_mask[1, list(order[1:]).index(4)] == np.False_
    assert permuted_mask.sum() == mask.sum()
    with pytest.raises(ValueError, match="permutation_seed"):
        train_loop.host_tensor(windows, "permuted", pin=False)


def test_permuted_evaluation_scores_every_token_once_in_the_permuted_order(stores):
    _, val = stores
    torch.manual_seed(0)
    model = new_model(model_config(vocab_size=VOCAB, dim=16, n_layers=1, n_heads=2,
                                  max_seq_len=16)).eval()
    forward = evaluate_loss(model, val, seq_len=16, batch_size=4, token_order="forward")
    permuted = evaluate_loss(model, val, seq_len=16, batch_size=4, token_order="permuted",
                             permutation_seed=3)
    for key in ("n_tokens", "n_story_tokens", "n_bytes", "n_docs"):
        assert permuted[key] == forward[key]
    # By hand: the store's sequential windows, permuted as in training, scored in full.
    total, count = 0.0, 0
    for windows, _ in val.sequential_windows(16, batch_size=4):  # noqa: B007
        rows = orders.row_orders((windows >= 0).sum(axis=1), 17, 3)
        w = torch.from_numpy(np.take_along_axis(windows, rows, 1))
        with torch.no_grad():
            logits, _ = model(w[:, :-1].clamp(min=0))
        losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), w[:, 1:],
                                                   ignore_index=-1, reduction="sum")
        total += float(losses)
        count += int((w[:, 1:] >= 0).sum())
    assert permuted["val_loss"] == pytest.approx(total / count, rel=1e-6)
    assert permuted["val_loss"] != pytest.approx(forward["val_loss"], rel=1e-6)
    bits = document_bits(model, val, seq_len=16, batch_size=4, token_order="permuted",
                         permutation_seed=3, docs=range(5))
    assert bits.shape == (5,) and np.all(bits > 0)
    with pytest.raises(ValueError, match="permutation_seed"):
        document_bits(model, val, seq_len=16, batch_size=4, token_order="permuted",
                      docs=range(2))


def test_a_permuted_run_trains_on_permuted_windows(stores, tmp_path: Path):
    config = small_config(max_steps=4, token_order="permuted", permutation_seed=5)
    model = model_config(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, max_seq_len=32)
    trained = train(model, config, *stores, tmp_path / "p", lineage=LINEAGE, progress=False)
    forward = train(model, small_config(max_steps=4), *stores, tmp_path / "f",
                    lineage=LINEAGE, progress=False)
    assert orders.permutation_seed_of(trained.meta) == 5
    assert not torch.equal(trained.state_dict["norm.weight"], forward.state_dict["norm.weight"])


def test_a_permuted_model_writes_no_samples_and_says_why(stores):
    spec = variants.get("permuted")
    assert not orders.get(spec.token_order).writes
    assert spec.tokens_from == "forward" and spec.delta == "token_order"
    tokenizer = _tokenizer()
    model = new_model(model_config(vocab_size=tokenizer.vocab_size, dim=16, n_layers=1,
                                  n_heads=2, max_seq_len=32))
    with pytest.raises(SettingError, match="permutation of its token positions"):
        generate_story(model, tokenizer, variant="permuted", prompt="Once upon a time",
                       max_new_tokens=4, temperature=0, top_k=None, top_p=None, seed=0)
    text = samples_markdown([], skipped=(3, "no reading order"))
    assert "3 samples skipped: no reading order" in text


# ------------------------------------------------------------------------ GRU and LSTM


@pytest.mark.parametrize("family", sorted(RECURRENT))
def test_recurrent_sizes_and_generation_with_its_state(family):
    config = model_config(vocab_size=2048, max_seq_len=256, family=family,
                         **({"dim": 192, "n_layers": 3} if family == "gru"
                            else {"dim": 192, "n_layers": 2}))
    torch.manual_seed(0)
    model = new_model(config).eval()
    assert isinstance(model, RecurrentLM)
    assert model.num_parameters() == config.num_parameters
    assert 0.9e6 < config.num_parameters < 1.1e6  # beside the 1.0M `small` transformer
    prompts = [[1, 5, 9, 4], [1, 7]]
    cached = generate(model, prompts, max_new_tokens=12, temperature=0.0)
    recomputed = generate(model, prompts, max_new_tokens=12, temperature=0.0, use_cache=False)
    assert cached == recomputed and all(len(row) == 12 for row in cached)
    (best,) = beam_search(model, [1, 5, 9], beam_width=3, max_new_tokens=6)
    assert len(best.tokens) == 6


def test_model_family_errors_name_the_setting():
    with pytest.raises(SettingError, match="family='transformer' is unknown; use one of "
                                           "llama, gru, lstm"):
        model_config(vocab_size=64, dim=32, n_layers=1, max_seq_len=8, family="transformer")
    # Attention shape rules do not apply to a recurrent model, which needs no heads.
    assert model_config(vocab_size=64, dim=30, n_layers=1, n_heads=4, max_seq_len=8,
                        family="gru").dim == 30
    assert model_config(vocab_size=64, dim=30, n_layers=1, max_seq_len=8,
                        family="gru").n_heads is None


@pytest.mark.parametrize("family", sorted(RECURRENT))
def test_recurrent_models_train_and_resume_exactly(stores, tmp_path: Path, monkeypatch, family):
    model = model_config(vocab_size=VOCAB, max_seq_len=32, family=family, **RECURRENT[family])
    config = small_config()

    def run(run_dir: Path):
        return train(model, config, *stores, run_dir, lineage=LINEAGE, progress=False)

    clean = run(tmp_path / "clean")
    assert clean.config.family == family and clean.meta["steps"] == config.max_steps
    real = train_loop.save_checkpoint

    class Crash(Exception):
        pass

    def save_then_crash(*args, **kwargs):
        path = real(*args, **kwargs)
        if kwargs["step"] == 8:
            raise Crash
        return path

    with monkeypatch.context() as patch:
        patch.setattr(train_loop, "save_checkpoint", save_then_crash)
        with pytest.raises(Crash):
            run(tmp_path / "resumed")
    resumed = run(tmp_path / "resumed")
    assert_same_weights(clean.state_dict, resumed.state_dict)
    # The safetensors model folder reads back as the same family.
    from backstory.lm.checkpoint import save_model
    save_model(tmp_path / "model", resumed)
    again = load_trained(tmp_path / "model")
    assert again.config.family == family
    assert_same_weights(again.state_dict, clean.state_dict)


def test_interop_exports_refuse_a_recurrent_model(stores, tmp_path: Path):
    tokenizer = _tokenizer()
    model = model_config(vocab_size=tokenizer.vocab_size, max_seq_len=32, family="gru", dim=16,
                        n_layers=1)
    from backstory.lm.checkpoint import TrainedModel
    torch.manual_seed(0)
    trained = TrainedModel(model, new_model(model).state_dict(), {})
    for fmt in ("llama2c", "hf"):
        with pytest.raises(SettingError, match="cannot export a gru model"):
            export_model(trained, tokenizer, tmp_path / fmt, fmt=fmt)


def test_recurrent_presets_get_their_family_and_the_default_is_llama():
    import yaml

    params = yaml.safe_load((REPO / "conf/base/parameters_runs.yml").read_text())
    for preset, family in (("small", "llama"), ("gru_small", "gru"), ("lstm_small", "lstm")):
        run = experiment.RunSpec("forward", preset, 1)
        merged = experiment.run_settings(params, run)
        assert merged["model"]["family"] == family
        config = model_config(vocab_size=2048, **merged["model"])
        assert 0.9e6 < config.num_parameters < 1.1e6, preset


def test_the_report_shows_recurrent_presets_deltas_beside_the_transformers():
    rng = np.random.default_rng(0)
    infos, tables = {}, {}
    for preset, slower in (("small", 1.1), ("gru_small", 1.3)):
        for variant, factor in (("forward", 1.0), ("reversed", slower), ("backward", 1.02),
                                ("permuted", 2.0)):
            run = {"run": f"{variant}.{preset}.s1", "variant": variant, "preset": preset,
                   "seed": 1, "context": None}
            metrics = {"n_params": 1000, "seq_len": 256, "steps": 10,
                       "eval_stories": {"sha256": "same"}}
            infos[run["run"]] = reporting.run_info(run, metrics)
            tables[run["run"]] = pd.DataFrame({
                "doc": np.arange(30), "story": [f"data00.json:{i}" for i in range(30)],
                "n_bytes": 100, "story_tokens": 40,
                "bits": rng.uniform(90, 110, 30) * factor})
    documents = reporting.document_table(infos, tables)
    arrow = measure_arrow_of_time(documents, infos, _compare_params())
    by_size = {s["size"]: s for s in arrow["sizes"]}
    assert set(by_size) == {"small", "gru_small"}
    for size in by_size.values():
        assert {(d["variant"], d["kind"]) for d in size["deltas"]} == {
            ("reversed", "word_order"), ("backward", "token_order"), ("permuted", "token_order")}
    gru_word = next(d for d in by_size["gru_small"]["deltas"] if d["variant"] == "reversed")
    assert gru_word["delta"] == pytest.approx(0.3 / 1.15, abs=0.05)
    assert "one seed" in gru_word["method"]


def test_the_story_comparison_leaves_out_permuted_and_own_tokenizer_models():
    runs = [{"run": f"{v}.small.s1", "variant": v, "preset": "small", "seed": 1,
             "context": None} for v in variants.NAMES]
    assert list(lead_runs(runs)) == [v for v in variants.NAMES
                                     if v not in ("permuted", "reversed_owntok")]


# ------------------------------------------------------------------- own tokenizer


def test_the_own_tokenizer_variant_is_registered_as_the_word_order_control():
    spec = variants.get("reversed_owntok")
    assert spec.own_tokenizer and spec.words == "reversed" and spec.tokens_from is None
    assert (spec.compares_with, spec.delta) == ("forward", "word_order")
    assert spec.tokenizer == "reversed_owntok" and variants.get("reversed").tokenizer == "shared"
    with pytest.raises(ValueError, match="own_tokenizer needs documents of its own"):
        variants.Variant("x", "x", own_tokenizer=True, tokens_from="forward")


def test_own_tokenizer_is_trained_on_the_reversed_training_text(tmp_path: Path):
    from backstory.data.corpus.story_table import iter_records

    table = _story_table(tmp_path)
    settings = {"vocab_size": 512, "model_type": "bpe", "max_sentences": 1000}
    own = fit_own_tokenizer(table, settings, words="reversed")
    texts = [reverse_words(r["story"]) for r in iter_records(table, "train")]
    assert own == trained_tokenizer(texts, vocab_size=512, model_type="bpe", max_sentences=1000)
    assert own != fit_tokenizer(table, settings)
    own_tok, shared = Tokenizer.from_bytes(own), Tokenizer.from_bytes(fit_tokenizer(table,
                                                                                   settings))
    assert own_tok.vocab_size == shared.vocab_size == 512
    # Its own tokenizer encodes reversed text in fewer tokens than the forward one does.
    own_count = sum(len(own_tok.encode_one(t)) for t in texts)
    assert own_count < sum(len(shared.encode_one(t)) for t in texts)


# ---------------------------------------------------------- experiment and pipelines


def test_every_variant_with_gru_and_lstm_presets_makes_a_valid_dvc_yaml(tmp_path: Path):
    from backstory.tools import dvc_stages

    params = tiny_run_params()
    params["experiment"] = {"main": {"variants": list(variants.NAMES),  # opt-in ones too
                                     "presets": ["small", "gru_small", "lstm_small"],
                                     "seeds": [1337]}}
    root = make_project(tmp_path / "project", {"parameters_runs.yml": params})
    stages, document = dvc_stages.build(root)
    names = {stage.name for stage in stages}
    assert {"tokenizer@reversed_owntok", "export_owntok@reversed_owntok",
            "train-permuted-gru_small-main@1337", "evaluate-reversed_owntok-lstm_small-main@1337",
            "export@forward"} <= names
    assert "export@permuted" not in names  # permuted reads forward's tokens
    own = "data/06_models/tokenizer/reversed_owntok/tokenizer.model"
    body = document["stages"]["evaluate-reversed_owntok-small-main"]["do"]
    assert own in body["deps"]  # its own tokenizer, not the shared one
    assert "data/06_models/tokenizer/tokenizer.model" not in body["deps"]
    merged = experiment.run_settings(
        __import__("yaml").safe_load((root / "conf/base/parameters_runs.yml").read_text()),
        experiment.RunSpec("permuted", "gru_small", 1337))
    assert merged["train"]["token_order"] == "permuted"
    assert merged["train"]["permutation_seed"] == 0


def test_token_order_and_permutation_seed_are_checked_by_name():
    with pytest.raises(SettingError, match="train.permutation_seed"):
        small_config(permutation_seed=-1)
    with pytest.raises(SettingError, match="token_order"):
        small_config(token_order="shuffled")


def test_controls_run_end_to_end_and_report_their_deltas(tmp_path: Path):
    """ingest, the own tokenizer, every variant on the llama and GRU presets, compare."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from tests.conftest import TINY_COMPARE
    from tests.project import TINY_INGEST

    params = tiny_run_params()
    params["presets"]["gru_small"] = {"model": {"family": "gru", "dim": 32, "n_layers": 1,
                                                "max_seq_len": 128}}
    params["experiment"] = {"main": {"variants": ["forward", "reversed", "backward",
                                                  "permuted", "reversed_owntok"],
                                     "presets": ["small", "gru_small"], "seeds": [1337]}}
    root = make_project(tmp_path / "project", {
        "parameters_ingest.yml": TINY_INGEST, "parameters_runs.yml": params,
        "parameters_compare.yml": TINY_COMPARE})
    previous = os.getcwd()
    os.chdir(root)
    try:
        bootstrap_project(root)
        with KedroSession.create(project_path=root, env="base") as session:
            session.run()
    finally:
        os.chdir(previous)
    import json
    report = json.loads((root / "data/08_reporting/compare/report.json").read_text())
    groups = {g["size"]: g for g in report["arrow_of_time"]["sizes"]}
    assert set(groups) == {"small", "gru_small"}
    for group in groups.values():
        pairs = {(d["variant"], d["unit"]) for d in group["deltas"]}
        assert pairs == {("reversed", "bits per byte"), ("reversed_owntok", "bits per byte"),
                         ("backward", "nats per token"), ("permuted", "nats per token")}
    own = root / "data/06_models/tokenizer/reversed_owntok/tokenizer.model"
    assert own.is_file() and own.read_bytes() != (
        root / "data/06_models/tokenizer/tokenizer.model").read_bytes()
    metrics = json.loads((root / "data/08_reporting/permuted/small/s1337/metrics.json")
                         .read_text())
    assert metrics["samples_skipped"] == 2 and "permutation" in metrics["samples_skipped_reason"]
    fwd = json.loads((root / "data/08_reporting/forward/small/s1337/metrics.json").read_text())
    assert metrics["n_tokens"] == fwd["n_tokens"]  # the very same tokens


# ----------------------------------------------------------------------------- helpers


def _tokenizer() -> Tokenizer:
    texts = [generate_record(1337, i)["story"] for i in range(40)]
    return Tokenizer.from_bytes(trained_tokenizer(texts, vocab_size=512, model_type="bpe",
                                                max_sentences=1000))


def _compare_params() -> dict:
    import yaml

    return yaml.safe_load((REPO / "conf/base/parameters_compare.yml").read_text())["compare"]


def _story_table(tmp_path: Path):
    """A small story table made by the ingest pipeline's own nodes (storyworld)."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from backstory.data.corpus.story_table import StoryTable
    from tests.project import TINY_INGEST

    root = make_project(tmp_path / "ingest", {"parameters_ingest.yml": TINY_INGEST})
    previous = os.getcwd()
    os.chdir(root)
    try:
        bootstrap_project(root)
        with KedroSession.create(project_path=root, env="base") as session:
            session.run(pipeline_name="ingest", node_names=["acquire_corpus", "clean_corpus"])
    finally:
        os.chdir(previous)
    return StoryTable(root / "data/02_intermediate/stories")
