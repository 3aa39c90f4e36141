"""Export to and import from Hugging Face, checked against transformers itself (offline)."""

from __future__ import annotations

import json

import pytest
import torch

from backstory.lm.checkpoint import build_model
from backstory.lm.interop import export_model, load_external
from backstory.lm.interop.hf import halves_to_interleaved, interleaved_to_halves
from tests.tiny_models import peaked_model, stories, tokenizer

transformers = pytest.importorskip(
    "transformers", reason="transformers is a dev extra: pip install -e '.[dev]'")

TEXT = "Once upon a time, there was a little boy named Kit. He lived in a cozy house."


def test_rotary_reordering_is_a_permutation_and_its_inverse():
    weight = torch.arange(4 * 8 * 3, dtype=torch.float32).reshape(4 * 8, 3)  # 4 heads of 8
    halves = interleaved_to_halves(weight, 4)
    assert torch.equal(halves_to_interleaved(halves, 4), weight)
    # Head 0: pairs (0,1), (2,3), ... become halves [0, 2, 4, 6 | 1, 3, 5, 7].
    assert halves[:8, 0].tolist() == [0, 6, 12, 18, 3, 9, 15, 21]


@pytest.fixture(scope="module")
def hf_export(tmp_path_factory):
    """A reversed model with grouped-query attention (4 query heads, 2 key/value heads)."""
    tok = tokenizer()
    trained = peaked_model(tok, "reversed", scale=1.0, n_heads=4, n_kv_heads=2)
    folder = tmp_path_factory.mktemp("hf")
    export_model(trained, tok, folder, fmt="hf")
    return trained, folder


def test_transformers_logits_equal_backstory_logits(hf_export):
    trained, folder = hf_export
    tok = tokenizer()
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.num_key_value_heads == 2 < model.config.num_attention_heads
    ids = torch.tensor([[tok.bos_id] + tok.encode_one(text)[:60] for text in stories()[:3]])
    with torch.no_grad():
        theirs = model.eval()(ids).logits
        ours = build_model(trained).eval()(ids)[0]
    assert (theirs - ours).abs().max() < 1e-4


def test_transformers_tokenizer_gives_backstory_ids(hf_export):
    _, folder = hf_export
    tok = tokenizer()
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    for text in [TEXT, *stories()[:20]]:
        ids = hf_tok(text).input_ids
        assert ids == [tok.bos_id] + tok.encode_one(text)
        assert hf_tok.decode(ids, skip_special_tokens=True) == tok.decode(ids)


def test_config_records_lineage_and_generation_ids(hf_export):
    _, folder = hf_export
    config = json.loads((folder / "config.json").read_text())
    lineage = config["backstory"]
    assert lineage["variant"] == "reversed" and lineage["word_order"] == "reversed"
    assert lineage["tokenizer_sha256"] == tokenizer().sha256
    assert "reverse-words" in lineage["how_to_prompt"]
    loaded = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    assert loaded.tie_word_embeddings and loaded.bos_token_id == 1 and loaded.eos_token_id == 2
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation == {"bos_token_id": 1, "eos_token_id": 2}


def test_export_then_import_gives_identical_logits(hf_export):
    trained, folder = hf_export
    imported, imported_tok = load_external(folder)
    assert imported.config == trained.config
    assert imported.meta["lineage"] == trained.meta["lineage"]
    assert imported_tok.sha256 == tokenizer().sha256
    tokens = torch.tensor([[1] + tokenizer().encode_one(TEXT)])
    with torch.no_grad():
        assert torch.equal(build_model(trained)(tokens)[0], build_model(imported)(tokens)[0])


def test_a_model_made_by_transformers_imports(tmp_path):
    """A folder written by transformers' save_pretrained, no backstory metadata in it."""
    tok = tokenizer()
    config = transformers.LlamaConfig(
        vocab_size=tok.vocab_size, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
        rms_norm_eps=1e-5, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(tok.model_bytes)
    imported, _ = load_external(tmp_path, variant="forward")
    assert imported.meta["lineage"]["variant"] == "forward"
    assert imported.config.kv_heads == 2 and imported.config.ffn_hidden_dim == 96
    ids = torch.tensor([[1] + tok.encode_one(TEXT)])
    with torch.no_grad():
        difference = model(ids).logits - build_model(imported)(ids)[0]
    assert difference.abs().max() < 1e-4


def test_untied_or_unsupported_hf_models_are_refused(tmp_path):
    tok = tokenizer()
    config = transformers.LlamaConfig(
        vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=32, tie_word_embeddings=False)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "untied")
    (tmp_path / "untied" / "tokenizer.model").write_bytes(tok.model_bytes)
    with pytest.raises(ValueError, match="lm_head differs"):
        load_external(tmp_path / "untied")
    config.attention_bias, config.tie_word_embeddings = True, True
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "bias")
    (tmp_path / "bias" / "tokenizer.model").write_bytes(tok.model_bytes)
    with pytest.raises(ValueError, match="attention_bias"):
        load_external(tmp_path / "bias")


def test_word_level_tokenizers_do_not_export_to_hf(tmp_path):
    tok = tokenizer("word")
    with pytest.raises(ValueError, match="converts sentencepiece BPE only"):
        export_model(peaked_model(tok), tok, tmp_path, fmt="hf")
