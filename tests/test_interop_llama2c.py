"""Export to and import from llama2.c, checked against llama2.c's own run.c.

run.c is compiled from ../shared/vendor/llama2c (a test oracle, never part of the
project) twice: the real `run` program, and tests/c/llama2c_driver.c, which calls run.c's
own encode / forward / argmax and prints token ids instead of text.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from backstory.data.text import reverse_words
from backstory.data.tokenizer import (
    check_llama2c_tokenizer_bin,
    llama2c_tokenizer_bin,
    read_llama2c_tokenizer_bin,
)
from backstory.evaluation.sampling import prompt_ids
from backstory.lm.checkpoint import TrainedModel, build_model
from backstory.lm.generate import generate
from backstory.lm.interop import export_model, load_external
from backstory.lm.interop.llama2c import read_llama2c_model
from tests.tiny_models import REAL_STORIES, REPO, RUN_C, peaked_model, tokenizer

STEPS = 60  # forward passes run.c makes, prompt included


@pytest.fixture(scope="module")
def runc(tmp_path_factory) -> dict[str, Path]:
    """The compiled `run` program and the id-printing driver."""
    if not RUN_C.is_file():
        pytest.skip(f"llama2.c's run.c is not at {RUN_C} (the shared test oracles are absent)")
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed; run.c cannot be compiled")
    out = tmp_path_factory.mktemp("runc")
    run = out / "run"
    driver = out / "driver"
    subprocess.run(["gcc", "-O2", "-o", str(run), str(RUN_C), "-lm"], check=True)
    subprocess.run(["gcc", "-O2", "-DTESTING", f"-I{RUN_C.parent}", "-o", str(driver),
                    str(REPO / "tests" / "c" / "llama2c_driver.c"), "-lm"], check=True)
    return {"run": run, "driver": driver}


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, tuple[TrainedModel, Path]]:
    """A forward and a reversed model (grouped-query attention), each exported for run.c."""
    tok = tokenizer()
    out = {}
    for variant, seed in (("forward", 0), ("reversed", 1)):
        trained = peaked_model(tok, variant, seed=seed)
        folder = tmp_path_factory.mktemp(variant)
        export_model(trained, tok, folder, fmt="llama2c")
        out[variant] = (trained, folder)
    return out


def driver_ids(runc: dict[str, Path], folder: Path, prompt: str, steps: int = STEPS
               ) -> tuple[list[int], list[int]]:
    """run.c's prompt ids and its greedy ids for ``prompt``."""
    result = subprocess.run([str(runc["driver"]), str(folder / "model.bin"),
                             str(folder / "tokenizer.bin"), str(steps), prompt],
                            capture_output=True, check=True)
    prompt_line, generated_line = result.stdout.decode().split("\n")[:2]
    return [int(x) for x in prompt_line.split()], [int(x) for x in generated_line.split()]


def runc_text(tok, ids: list[int]) -> bytes:
    """What run.c prints for the tokens after the first: its decode and safe_printf rules."""
    out = b""
    for prev, token in zip(ids, ids[1:], strict=False):
        piece = tok.piece(token)
        if tok.is_byte(token):
            value = int(piece[3:5], 16)
            if 0x20 <= value < 0x7F or 0x09 <= value <= 0x0D:  # C's isprint / isspace
                out += bytes([value])
            continue
        text = {1: "\n<s>\n", 2: "\n</s>\n"}.get(token, piece.replace("\u2581", " "))
        if prev == 1 and text.startswith(" "):
            text = text[1:]
        out += text.encode()
    return out + b"\n"


PROMPTS = {"forward": "Once upon a time, there was a little boy named Kit.",
           "reversed": "They were happy again."}


@pytest.mark.parametrize("variant", ["forward", "reversed"])
def test_run_c_greedy_equals_backstory_greedy(runc, exports, variant):
    trained, folder = exports[variant]
    tok = tokenizer()
    # What the user types: a reversed model's prompt goes through the word reversal.
    typed = reverse_words(PROMPTS[variant]) if variant == "reversed" else PROMPTS[variant]
    ours = prompt_ids(tok, variant, PROMPTS[variant])
    theirs, generated = driver_ids(runc, folder, typed)
    assert theirs == ours  # run.c's " " + prompt and score-ordered merges = sentencepiece
    model = build_model(trained).eval()
    expected = generate(model, [ours], max_new_tokens=STEPS - len(ours) + 1, temperature=0,
                        stop_ids=(tok.bos_id,))[0]
    stopped = generated[-1:] == [tok.bos_id]
    assert (generated[:-1] if stopped else generated) == expected
    assert len(expected) >= 10
    # Greedy choices win by clear margins, so equality is not luck of rounding.
    with torch.no_grad():
        logits = model(torch.tensor([ours + expected]))[0][0, len(ours) - 1:-1]
    top2 = logits.topk(2, dim=-1).values
    assert float((top2[:, 0] - top2[:, 1]).min()) > 1e-3
    # The real `run` program prints the same tokens as text.
    result = subprocess.run([str(runc["run"]), str(folder / "model.bin"), "-z",
                             str(folder / "tokenizer.bin"), "-t", "0", "-n", str(STEPS),
                             "-i", typed], capture_output=True, check=True)
    assert result.stdout == runc_text(tok, ours + expected)


def test_mahurins_recipe_on_an_exported_reversed_model(runc, exports):
    """`run model.bin -i "$(echo ... | backstory reverse-words)" | backstory reverse-words`."""
    _, folder = exports["reversed"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    reverse = [sys.executable, "-m", "backstory.tools.cli", "reverse-words"]
    ending = "They were happy again."
    typed = subprocess.run(reverse, input=ending + "\n", capture_output=True, text=True,
                           env=env, check=True).stdout.strip()
    assert typed == ".again happy were They"
    printed = subprocess.run([str(runc["run"]), str(folder / "model.bin"), "-z",
                              str(folder / "tokenizer.bin"), "-t", "0", "-n", str(STEPS),
                              "-i", typed], capture_output=True, check=True).stdout
    story = subprocess.run(reverse, input=printed, capture_output=True, env=env,
                           check=True).stdout.decode()
    assert story.rstrip("\n").endswith(ending)
    assert len(story) > len(ending) + 20


def test_run_c_encodes_real_stories_like_sentencepiece(runc, exports):
    """run.c rebuilds sentencepiece's BPE from tokenizer.bin's scores: same ids.

    The one known exception is text holding U+2581 itself, sentencepiece's space mark.
    """
    files = sorted(REAL_STORIES.glob("stories_*.json"))
    if not files:
        pytest.skip(f"no real TinyStories excerpts in {REAL_STORIES}")
    texts = [t for f in files for t in json.loads(f.read_text())]
    texts += ["two  spaces", " leading", "trailing ", "a\n\n b\tc", "42 cats", "don't",
              "café 日本 “quoted”"]
    tok = tokenizer()
    _, folder = exports["forward"]
    for text in texts:
        assert driver_ids(runc, folder, text, steps=1)[0] == [tok.bos_id] + tok.encode_one(text)
    assert driver_ids(runc, folder, "a\u2581b", steps=1)[0] != [1] + tok.encode_one("a\u2581b")


# --- the files themselves (no C compiler needed) --------------------------------------------


def test_bin_layout_and_round_trip(tmp_path):
    tok = tokenizer()
    trained = peaked_model(tok, "forward")
    export_model(trained, tok, tmp_path, fmt="llama2c")
    data = (tmp_path / "model.bin").read_bytes()
    cfg = trained.config
    assert struct.unpack_from("<7i", data) == (cfg.dim, cfg.ffn_hidden_dim, cfg.n_layers,
                                               cfg.n_heads, 2, cfg.vocab_size, cfg.max_seq_len)
    n_floats = sum(t.numel() for name, t in trained.state_dict.items() if name != "output.weight")
    n_floats += cfg.max_seq_len * cfg.head_dim  # RoPE cos and sin tables
    assert len(data) == 28 + 4 * n_floats
    back = read_llama2c_model(tmp_path / "model.bin")
    assert set(back.state_dict) == set(trained.state_dict)
    assert all(torch.equal(back.state_dict[k], v) for k, v in trained.state_dict.items())
    imported, imported_tok = load_external(tmp_path / "model.bin")
    assert imported.config == trained.config
    assert imported_tok.sha256 == tok.sha256
    assert imported.meta["lineage"] == trained.meta["lineage"]
    tokens = torch.tensor([[1] + tok.encode_one(PROMPTS["forward"])])
    with torch.no_grad():
        assert torch.equal(build_model(trained)(tokens)[0], build_model(imported)(tokens)[0])


def test_sidecar_says_how_to_prompt_a_reversed_model(tmp_path):
    tok = tokenizer()
    export_model(peaked_model(tok, "reversed"), tok, tmp_path, fmt="llama2c")
    sidecar = json.loads((tmp_path / "model.lineage.json").read_text())
    assert sidecar["variant"] == "reversed" and sidecar["word_order"] == "reversed"
    assert sidecar["token_order"] == "forward"
    assert sidecar["tokenizer_sha256"] == tok.sha256
    assert sidecar["corpus_fingerprint"] == "storyworld-test"
    assert "backstory reverse-words" in sidecar["how_to_prompt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "model.bin", "model.lineage.json", "tokenizer.bin", "tokenizer.model"]


def test_tokenizer_bin_spells_every_piece_with_its_score():
    tok = tokenizer()
    entries = read_llama2c_tokenizer_bin(llama2c_tokenizer_bin(tok), tok.vocab_size)
    assert entries[1][0] == b"\n<s>\n" and entries[2][0] == b"\n</s>\n"
    for i in (3, 100, 300, tok.vocab_size - 1):
        assert entries[i] == (tok.piece(i).replace("\u2581", " ").encode(), tok.score(i))
    assert entries[tok.piece_id("\u2581")][0] == b" "  # run.c's dummy prefix


def test_tokenizer_bin_of_another_model_is_refused():
    tok = tokenizer()
    data = bytearray(llama2c_tokenizer_bin(tok))
    check_llama2c_tokenizer_bin(tok, bytes(data))
    other = tokenizer("bpe", 600)
    with pytest.raises(ValueError, match="ends at entry|bytes after|does not belong"):
        check_llama2c_tokenizer_bin(other, bytes(data))
    flipped = bytes(data).replace(b" the", b" thx", 1)
    with pytest.raises(ValueError, match="does not belong to this sentencepiece model: id"):
        check_llama2c_tokenizer_bin(tok, flipped)


def test_word_level_tokenizers_do_not_export_for_run_c(tmp_path):
    tok = tokenizer("word")
    with pytest.raises(ValueError, match="word model.*only reproduces BPE"):
        export_model(peaked_model(tok, "forward"), tok, tmp_path, fmt="llama2c")
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_settings_run_c_hard_codes_are_checked(tmp_path):
    tok = tokenizer()
    trained = peaked_model(tok)
    trained.config.rope_theta = 500000.0
    with pytest.raises(ValueError, match="RoPE theta 10000"):
        export_model(trained, tok, tmp_path, fmt="llama2c")


def test_bad_bin_files_are_named(tmp_path):
    tok = tokenizer()
    export_model(peaked_model(tok), tok, tmp_path, fmt="llama2c")
    good = (tmp_path / "model.bin").read_bytes()
    cases = {
        "short.bin": good[:10],
        "truncated.bin": good[:-8],
        "versioned.bin": struct.pack("<Ii", 0x616B3432, 2) + good[8:],
    }
    messages = {"short.bin": "too short", "truncated.bin": "needs",
                "versioned.bin": "version-0 layout"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=messages[name]) as err:
            read_llama2c_model(tmp_path / name)
        assert name in str(err.value)
    untied = bytearray(good)
    struct.pack_into("<i", untied, 20, -tok.vocab_size)  # output matrix of its own follows
    emb = build_model(peaked_model(tok)).tok_embeddings.weight.detach()
    (tmp_path / "untied.bin").write_bytes(bytes(untied) + (emb + 1).numpy().tobytes())
    with pytest.raises(ValueError, match="output matrix of its own"):
        read_llama2c_model(tmp_path / "untied.bin")
    (tmp_path / "tied.bin").write_bytes(bytes(untied) + emb.numpy().tobytes())
    assert read_llama2c_model(tmp_path / "tied.bin").config.vocab_size == tok.vocab_size


def test_tokenizer_is_needed_for_a_bin_without_its_model(tmp_path):
    tok = tokenizer()
    export_model(peaked_model(tok), tok, tmp_path, fmt="llama2c")
    (tmp_path / "tokenizer.model").unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer.bin alone is not enough"):
        load_external(tmp_path / "model.bin")
    other = tmp_path / "other.model"
    other.write_bytes(tokenizer("bpe", 600).model_bytes)
    with pytest.raises(ValueError, match="600"):
        load_external(tmp_path / "model.bin", tokenizer=other)


# --- llama2.c train.py checkpoints -----------------------------------------------------------


def llama2c_checkpoint(trained: TrainedModel) -> dict:
    """What llama2.c's train.py saves (the model compiled, hence the key prefix)."""
    cfg = trained.config
    return {
        "model": {f"_orig_mod.{k}": v for k, v in trained.state_dict.items()},
        "optimizer": {"state": {}, "param_groups": [{"lr": 5e-4, "params": [0, 1]}]},
        "model_args": {"dim": cfg.dim, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads,
                       "n_kv_heads": cfg.n_kv_heads, "vocab_size": cfg.vocab_size,
                       "multiple_of": cfg.multiple_of, "max_seq_len": cfg.max_seq_len,
                       "dropout": 0.0},
        "iter_num": 2000,
        "best_val_loss": torch.tensor(1.25),
        "config": {"batch_size": 128, "vocab_source": "custom", "compile": True,
                   "learning_rate": 5e-4},
    }


def test_llama2c_checkpoint_imports_with_identical_logits(tmp_path):
    tok = tokenizer()
    trained = peaked_model(tok)
    path = tmp_path / "ckpt.pt"
    torch.save(llama2c_checkpoint(trained), path)
    (tmp_path / "tokenizer.model").write_bytes(tok.model_bytes)
    imported, _ = load_external(path, variant="forward")
    assert imported.meta["steps"] == 2000
    assert imported.meta["lineage"]["variant"] == "forward"
    assert imported.meta["imported_from"]["format"] == "llama2c-checkpoint"
    tokens = torch.tensor([[1] + tok.encode_one(PROMPTS["forward"])])
    with torch.no_grad():
        assert torch.equal(build_model(trained)(tokens)[0], build_model(imported)(tokens)[0])


class Payload:
    """Stands for anything a pickle would need code to rebuild."""


def test_checkpoint_that_needs_code_is_refused(tmp_path):
    tok = tokenizer()
    checkpoint = llama2c_checkpoint(peaked_model(tok))
    checkpoint["config"]["hook"] = Payload()
    path = tmp_path / "ckpt.pt"
    torch.save(checkpoint, path)
    (tmp_path / "tokenizer.model").write_bytes(tok.model_bytes)
    with pytest.raises(ValueError, match="needs unpickling code"):
        load_external(path)


def test_checkpoint_without_model_args_is_refused(tmp_path):
    tok = tokenizer()
    path = tmp_path / "ckpt.pt"
    torch.save({"model": peaked_model(tok).state_dict}, path)
    (tmp_path / "tokenizer.model").write_bytes(tok.model_bytes)
    with pytest.raises(ValueError, match="model_args"):
        load_external(path)
