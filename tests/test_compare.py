"""The comparison: delta and bootstrap statistics, text scoring, instruction checks, report."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from backstory.data.corpus.storyworld import generate_record
from backstory.data.text import reverse_words
from backstory.data.token_store import TokenStore
from backstory.data.token_writer import write_token_store
from backstory.data.tokenizer import Tokenizer
from backstory.evaluation.compare import score_texts
from backstory.evaluation.instructions import (
    instruction_checks,
    instruction_shares,
    names_characters,
    summary_characters,
    uses_words,
    word_forms,
)
from backstory.evaluation.metrics import document_bits
from backstory.evaluation.stats import (
    DOCUMENTS_ONLY,
    StatsError,
    asymmetry_delta,
    bootstrap_delta,
)
from backstory.lm.generate import SamplingConfig
from backstory.lm.model import Transformer
from tests.project import REPO, encoded, load_defaults, model_config, trained_tokenizer

# ------------------------------------------------------------------------ the delta


def test_delta_on_hand_examples():
    # means 3 and 2: (3 - 2) / (0.5 * 5) = 0.4
    assert asymmetry_delta([2.0, 4.0], [1.0, 3.0]) == pytest.approx(0.4)
    assert asymmetry_delta([1.0, 1.0], [1.0, 1.0]) == 0.0
    # backward easier: negative
    assert asymmetry_delta([1.0], [3.0]) == pytest.approx(-1.0)


def test_delta_rejects_unpaired_or_empty_losses():
    with pytest.raises(StatsError, match="paired"):
        asymmetry_delta([1.0, 2.0], [1.0])
    with pytest.raises(StatsError, match="no documents"):
        asymmetry_delta([], [])
    with pytest.raises(StatsError, match="finite"):
        asymmetry_delta([1.0, float("nan")], [1.0, 1.0])


def test_bootstrap_interval_covers_the_true_delta_on_synthetic_documents():
    rng = np.random.default_rng(7)
    ratio = 1.05  # backward costs 5% more than forward, up to per-document noise
    true_delta = (ratio - 1) / (0.5 * (ratio + 1))  # E[bw - fw] / (0.5 E[bw + fw])
    hits = 0
    for trial in range(20):
        fw = rng.gamma(20.0, 50.0, size=300)  # bits per document
        bw = fw * ratio * rng.normal(1.0, 0.02, size=300)
        ci = bootstrap_delta(bw, fw, n_boot=400, confidence=0.95, seed=trial)
        assert ci["low"] <= ci["delta"] <= ci["high"]
        hits += ci["low"] <= true_delta <= ci["high"]
    assert hits >= 17  # a 95% interval misses about 1 time in 20


INTERVAL = {"n_boot": 300, "confidence": 0.95, "seed": 1}


def test_bootstrap_is_deterministic_and_narrows_with_more_documents():
    rng = np.random.default_rng(0)
    fw = rng.gamma(20.0, 50.0, size=2000)
    bw = fw * rng.normal(1.01, 0.05, size=2000)
    small = bootstrap_delta(bw[:100], fw[:100], **INTERVAL)
    assert small == bootstrap_delta(bw[:100], fw[:100], **INTERVAL)
    large = bootstrap_delta(bw, fw, **INTERVAL)
    assert large["high"] - large["low"] < small["high"] - small["low"]
    assert large["n_docs"] == 2000 and large["n_boot"] == 300


@pytest.mark.parametrize("kwargs, match", [
    ({"n_boot": 3}, "n_boot"), ({"confidence": 1.5}, "confidence"),
])
def test_bootstrap_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_delta([1.0, 2.0], [1.0, 2.0], **(INTERVAL | kwargs))


# --------------------------------------------------------------- instruction checks


def test_word_forms_cover_regular_inflections():
    assert {"fill", "fills", "filled", "filling"} <= word_forms("fill")
    assert {"dance", "danced", "dancing", "dances"} <= word_forms("dance")
    assert {"carry", "carries", "carried"} <= word_forms("carry")
    assert {"stop", "stopped", "stopping"} <= word_forms("stop")
    assert {"big", "bigger", "biggest"} <= word_forms("big")
    with pytest.raises(ValueError, match="single word"):
        word_forms("two words")


def test_uses_words_on_hand_written_stories():
    story = "Tom filled the red bucket. Then he was dancing by the boats."
    assert uses_words(story, ["fill", "bucket", "red"])
    assert uses_words(story, ["dance", "boat", "red"])
    assert not uses_words(story, ["fill", "bucket", "yellow"])
    assert not uses_words("The buckets were full.", ["fill"])  # full is not a form of fill


def test_summary_characters_skip_sentence_openers_unless_named_elsewhere():
    assert summary_characters("Shy Pete meets a kitten named Pepper.") == ["Pete", "Pepper"]
    summary = "Pete meets a new kitten named Pepper by the lake."
    assert summary_characters(summary) == ["Pepper"]
    story = "Once there was a boy named Pete. Pete had a kitten."
    assert summary_characters(summary, story) == ["Pete", "Pepper"]
    assert summary_characters("Grandpa takes Theo and Hank to the lake.",
                              "Theo lived with Grandpa.") == ["Grandpa", "Theo", "Hank"]
    assert summary_characters("The dog runs home.") == []


def test_names_characters_match_whole_words_only():
    assert names_characters("Pete's kitten, Pepper, said hi.", ["Pete", "Pepper"])
    assert not names_characters("Peter and Pepper played.", ["Pete", "Pepper"])
    assert names_characters("Anything.", [])


def test_instruction_shares_count_each_requirement():
    records = [
        {"words": ["fill", "bucket", "red"], "summary": "Tom finds a bucket with Sue.",
         "story": "Tom and Sue play."},
        {"words": ["jump", "ball", "big"], "summary": "Lily plays with Max.",
         "story": "Max barks at Lily."},
    ]
    stories = ["Tom filled a red bucket with Sue.", "Lily jumped on a big ball."]
    shares = instruction_shares(stories, records)
    assert shares == {"n": 2, "uses_words": 1.0, "names_characters": 0.5, "both": 0.5}
    assert instruction_checks(stories[1], records[1])["characters"] == ["Lily", "Max"]
    with pytest.raises(ValueError, match="1 stories but 2 records"):
        instruction_shares(stories[:1], records)


def test_storyworld_stories_meet_their_own_requirements():
    records = [generate_record(1337, i) for i in range(40)]
    stories = [r["story"] for r in records]
    checked = [{"words": r["instruction"]["words"], "summary": r["summary"], "story": r["story"]}
               for r in records]
    shares = instruction_shares(stories, checked)
    assert shares["uses_words"] == 1.0
    assert shares["names_characters"] >= 0.9


# --------------------------------------------------------------------- scoring texts


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    texts = [generate_record(1337, i)["story"] for i in range(60)]
    model_bytes = trained_tokenizer(texts, vocab_size=512, model_type="bpe", max_sentences=1000)
    return Tokenizer.from_bytes(model_bytes)


def _model(tokenizer: Tokenizer) -> Transformer:
    torch.manual_seed(0)
    config = model_config(vocab_size=tokenizer.vocab_size, dim=32, n_layers=1, n_heads=2,
                         n_kv_heads=1, max_seq_len=32, multiple_of=16)
    return Transformer(config).eval()


@pytest.mark.parametrize("form", ["forward", "reversed"])
def test_score_texts_matches_document_bits_of_the_variant_layout(tokenizer, tmp_path, form):
    texts = [generate_record(1337, i)["story"] for i in range(3)]  # longer than the context
    model = _model(tokenizer)
    bits, n_bytes = score_texts(model, tokenizer, texts, variant=form, batch_size=4)
    records = [{"story": t} for t in texts]
    attrs = {"variant": form, "layout": "x", "vocab_size": tokenizer.vocab_size,
             "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id,
             "tokenizer_sha256": tokenizer.sha256, "corpus_fingerprint": "test"}
    write_token_store(tmp_path / "s.h5", encoded(records, tokenizer, variant=form),
                      attrs=attrs)
    with TokenStore(tmp_path / "s.h5") as store:
        expected = document_bits(model, store, seq_len=32, batch_size=2)
    np.testing.assert_allclose(bits, expected, rtol=1e-9)
    assert list(n_bytes) == [len(t.encode()) for t in texts]
    assert (bits > 0).all()


def test_score_texts_reads_reversed_text_the_reversed_way(tokenizer):
    model = _model(tokenizer)
    text = "Tom had a red ball. He liked to play with it."
    bits_rev, _ = score_texts(model, tokenizer, [text], variant="reversed", batch_size=4)
    bits_fw, _ = score_texts(model, tokenizer, [reverse_words(text)], variant="forward",
                             batch_size=4)
    np.testing.assert_allclose(bits_rev, bits_fw, rtol=1e-9)


def test_score_texts_rejects_empty_texts_and_unknown_forms(tokenizer):
    model = _model(tokenizer)
    with pytest.raises(ValueError, match="text 1 is empty"):
        score_texts(model, tokenizer, ["A story.", "  "], variant="forward", batch_size=4)
    with pytest.raises(ValueError, match="carry an instruction"):
        score_texts(model, tokenizer, ["A story."], variant="instruct", batch_size=4)


@pytest.mark.parametrize("variant", ["forward", "reversed"])
def test_batched_generation_matches_one_story_at_a_time_when_greedy(tokenizer, variant):
    from backstory.evaluation.compare import generate_batched
    from backstory.evaluation.sampling import generate_story

    model = _model(tokenizer)
    prompts = ["Tom had a red ball.", "Once upon a time, there was a very little girl.", "Sue"]
    greedy = SamplingConfig(max_new_tokens=8, temperature=0.0, top_k=None, top_p=None)
    batched = generate_batched(model, tokenizer, prompts, variant=variant, batch_size=2,
                               sampling=greedy, seed=0)
    for prompt, sample in zip(prompts, batched, strict=True):
        one = generate_story(model, tokenizer, variant=variant, prompt=prompt,
                             **greedy.to_dict(), seed=0)
        assert sample["text"] == one["text"] and sample["prompt"] == prompt
    with pytest.raises(ValueError, match="generate_batch_size"):
        generate_batched(model, tokenizer, prompts, variant=variant, batch_size=0,
                         sampling=greedy, seed=0)


def test_the_report_samples_with_the_runs_sampling_settings(tokenizer):
    # The compare node reads run_defaults.evaluate: its top_p reaches batched sampling (a
    # nucleus this small keeps only the likeliest token, so temperature 1 is greedy).
    from backstory.evaluation.compare import generate_batched

    model = _model(tokenizer)
    prompts = ["Tom had a red ball.", "Sue"]
    evaluate = load_defaults("evaluate") | {"max_new_tokens": 8, "temperature": 1.0}

    def stories(**settings) -> list[str]:
        sampling = SamplingConfig.of(evaluate | settings)
        return [s["text"] for s in generate_batched(model, tokenizer, prompts, variant="forward",
                                                     batch_size=2, sampling=sampling, seed=3)]

    assert stories(top_p=1e-6) == stories(temperature=0.0)
    assert stories(top_p=None) != stories(temperature=0.0)


# ------------------------------------------------------------- the tiny project run


VARIANTS = ("forward", "reversed", "instruct", "backward")
RUN = "small.s1337"  # the tiny run's preset and seed (tests/project.py)


def test_compare_report_covers_every_run(tiny_run):
    folder = tiny_run / "data/08_reporting/compare"
    report = json.loads((folder / "report.json").read_text())
    arrow = report["arrow_of_time"]
    (size,) = arrow["sizes"]
    assert size["size"] == "small" and set(size["levels"]) == set(VARIANTS)
    assert set(report["models"]) == {f"{v}.{RUN}" for v in VARIANTS}
    table = pd.read_parquet(folder / "document_bits.parquet")
    assert len(table) == len(VARIANTS) * arrow["n_docs"] and arrow["n_docs"] > 0
    bits = {v: table[table["variant"] == v].sort_values("doc") for v in VARIANTS}
    for variant in VARIANTS:
        rows = bits[variant]
        level = size["levels"][variant]
        assert level["seeds"] == [1337]
        assert level["bpb"]["estimate"] == pytest.approx(
            rows["bits"].sum() / rows["n_bytes"].sum())
        # The report read each run's own scores: nothing was scored again.
        own = pd.read_parquet(tiny_run / f"data/08_reporting/{variant}/small/s1337/"
                              "document_bits.parquet")
        np.testing.assert_array_equal(rows["bits"].to_numpy(),
                                      own["bits"].to_numpy()[: arrow["n_docs"]])
        metrics = json.loads((tiny_run / f"data/08_reporting/{variant}/small/s1337/"
                              "metrics.json").read_text())
        assert metrics["val_bpb"] == pytest.approx(level["bpb"]["estimate"])
        assert metrics["eval_stories"]["first"] == rows["story"].iloc[0]
    word, token = size["deltas"]  # registry order: reversed, then backward
    assert (word["kind"], word["variant"], word["partner"]) == ("word_order", "reversed",
                                                                "forward")
    for delta in (word, token):
        assert delta["low"] <= delta["delta"] <= delta["high"]
        assert delta["method"] == DOCUMENTS_ONLY and delta["n_seeds"] == 1  # says so
    assert word["delta"] == pytest.approx(
        asymmetry_delta(bits["reversed"]["bits"], bits["forward"]["bits"]))
    # backward reads forward's tokens in reverse order: same stories, same tokens
    assert (token["kind"], token["variant"], token["partner"]) == ("token_order", "backward",
                                                                   "forward")
    assert token["delta"] == pytest.approx(
        asymmetry_delta(bits["backward"]["bits"], bits["forward"]["bits"]))
    assert {r["size"] for r in arrow["sweeps"]["by_params"]} == {"small"}
    # Training curves: every run scored the same stories at each evaluation step.
    training = report["training_curves"]
    (curve,) = training["sizes"]
    assert [p["step"] for p in curve["points"]] == [50, 100, 150]
    assert all({d["variant"] for d in p["deltas"]} == {"reversed", "backward"}
               for p in curve["points"])
    # Cosine runs have no cooldowns: the doubling test does not check them.
    assert set(report["convergence"]["runs"]) == {f"{v}.{RUN}" for v in VARIANTS}
    assert all(r["verdict"] is None for r in report["convergence"]["runs"].values())
    # Every lead-group model writes in its own mode; the plain-story readers score them.
    written = {"real", *VARIANTS, "forward_free"}
    assert report["coherence"]["readers"] == ["forward", "reversed", "backward"]
    sources = report["coherence"]["sources"]
    assert set(sources) == written
    assert all(row[f"{v}_bpb"] > 0 for row in sources.values()
               for v in ("forward", "reversed", "backward"))
    following = report["instruction_following"]
    assert following["instructed"] == ["instruct"]
    shares = following["shares"]
    assert shares["real"]["uses_words"]["share"] == 1.0
    assert all(row["both"]["low"] <= row["both"]["share"] <= row["both"]["high"]
               for row in shares.values())
    assert set(shares) == written
    (machine,) = report["machines"]
    assert machine["facts"]["torch"] == torch.__version__


def test_compare_writes_markdown_tables_and_plots(tiny_run):
    folder = tiny_run / "data/08_reporting/compare"
    markdown = (folder / "report.md").read_text()
    assert "## Arrow of time" in markdown and "| reversed vs forward |" in markdown
    assert "documents only, one seed" in markdown  # a one-seed interval says what it covers
    assert "## Training: the delta against training tokens" in markdown
    assert "## Sweeps" in markdown and "## Where these figures come from" in markdown
    for name in ("loss_curves.png", "bpb_scatter.png", "delta.png", "sweep.png",
                 "training_curves.png"):
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    scores = pd.read_csv(folder / "story_scores.csv")
    assert len(scores) == 2 * 6  # n_stories records x (real + five generated sources)
    assert (scores["forward_bpb"] > 0).all()


def test_default_pipeline_ends_with_compare_and_compare_runs_alone():
    from kedro.framework.project import pipelines
    from kedro.framework.startup import bootstrap_project

    from tests.project import REPO

    bootstrap_project(REPO)
    registered = dict(pipelines)
    compare_nodes = {n.name for n in registered["compare"].nodes}
    assert "compare.build_report" in compare_nodes
    assert compare_nodes <= {n.name for n in registered["__default__"].nodes}
    # compare alone only reads what the variants persisted: no training inside it
    assert not any(n.name.endswith("train_model") for n in registered["compare"].nodes)
    assert {f"{v}.small.s1337.model" for v in VARIANTS} <= registered["compare"].inputs()
    assert {f"{v}.small.s1337.document_bits" for v in VARIANTS} <= registered["compare"].inputs()
    assert not any(name.endswith("val_tokens") for name in registered["compare"].inputs())


def test_report_paths_lists_the_report_files_a_pipeline_writes(tiny_run):
    from kedro.framework.project import pipelines
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from backstory.hooks import report_paths

    bootstrap_project(tiny_run)
    with KedroSession.create(project_path=tiny_run, env="base") as session:
        catalog = session.load_context().catalog
        paths = report_paths(pipelines["compare"], catalog)
    names = {p.rsplit("/", 1)[-1] for p in paths}
    assert names == {"report.json", "report.md", "loss_curves.png", "bpb_scatter.png",
                     "delta.png"}
    assert all((tiny_run / "data/08_reporting/compare").samefile(p.rsplit("/", 1)[0])
               for p in paths)


def test_score_coherence_counts_empty_stories_instead_of_scoring_them(tokenizer):
    from backstory.lm.checkpoint import TrainedModel
    from backstory.pipelines.compare.nodes import score_coherence

    model = _model(tokenizer)
    trained = TrainedModel(model.config, {k: v.clone() for k, v in model.state_dict().items()},
                           {"train_config": {"token_order": "forward"}})
    generated = pd.DataFrame({
        "record": [0, 0, 1], "source": ["real", "instruct", "instruct"], "prompt": ["", "p", "p"],
        "text": ["Tom had a ball.", "", "Sue ran to the park."],
    })
    compare = load_compare() | {"batch_size": 4, "device": "cpu"}
    runs = [{"run": f"{v}.small.s0", "variant": v} for v in ("forward", "reversed")]
    summary, table = score_coherence(compare, tokenizer, generated, trained, trained, runs=runs)
    assert summary["sources"]["instruct"]["n"] == 2
    assert summary["sources"]["instruct"]["n_empty"] == 1
    assert np.isnan(table.loc[1, "forward_bpb"]) and table.loc[2, "forward_bpb"] > 0
    expected = table.loc[2, "reversed_bits"] / table.loc[2, "n_bytes"]
    assert summary["sources"]["instruct"]["reversed_bpb"] == pytest.approx(expected)


def load_compare() -> dict:
    import yaml

    return yaml.safe_load((REPO / "conf/base/parameters_compare.yml").read_text())["compare"]
