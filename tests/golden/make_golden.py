"""Make the golden checkpoint of tests/test_golden.py (run once; its outputs are committed).

    python tests/golden/make_golden.py

Trains a tiny forward model (dim 64, 2 layers, 512-token vocabulary) for 200 steps on
400 storyworld stories, entirely on CPU in fp32, and writes the model folder and the
tokenizer next to this file. The test decodes it greedily and compares the text with a
fixed string, as llama2.c's tests do with stories260K: any change to the model's
arithmetic, the tokenizer or the decoding loop shows up there.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from backstory.data.corpus.storyworld import generate_records
from backstory.data.token_store import TokenStore
from backstory.data.token_writer import write_token_store
from backstory.data.tokenizer import Tokenizer
from backstory.lm.checkpoint import save_model
from backstory.lm.training import TrainConfig, train
from tests.project import encoded, model_config, trained_tokenizer

HERE = Path(__file__).parent
SETTINGS = dict(batch_size=16, grad_accum=1, max_steps=200, lr=3e-3, min_lr=3e-4,
                schedule="cosine", warmup_steps=20, cooldown_fraction=0.2, weight_decay=0.1,
                beta1=0.9, beta2=0.95, grad_clip=1.0, eval_interval=100, eval_batches=2,
                log_interval=50, checkpoint_interval=200, seed=1337, device="cpu",
                dtype="float32", compile=False, token_order="forward", nproc_per_node=1,
                resume=False)


def main() -> None:
    torch.set_num_threads(1)
    records = generate_records(1337, 0, 400)
    tokenizer = Tokenizer(trained_tokenizer((r["story"] for r in records), vocab_size=512))
    attrs = {"variant": "forward", "layout": "bos+story", "vocab_size": tokenizer.vocab_size,
             "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id,
             "tokenizer_sha256": tokenizer.sha256, "corpus_fingerprint": "golden"}
    with tempfile.TemporaryDirectory() as folder:
        stores = []
        for split, part in (("train", records[:360]), ("val", records[360:])):
            path = Path(folder) / f"{split}.h5"
            write_token_store(path, encoded(part, tokenizer, variant="forward"),
                              attrs=attrs | {"split": split})
            stores.append(TokenStore(path))
        config = model_config(vocab_size=tokenizer.vocab_size, dim=64, n_layers=2, n_heads=4,
                             n_kv_heads=2, max_seq_len=128)
        lineage = {"tokenizer_sha256": tokenizer.sha256, "variant": "forward"}
        trained = train(config, TrainConfig(**SETTINGS), *stores, Path(folder) / "run",
                        lineage=lineage, progress=False)
    save_model(HERE / "model", trained)
    (HERE / "tokenizer.model").write_bytes(tokenizer.model_bytes)
    print(f"wrote {HERE / 'model'} (val loss {trained.meta['val_loss']:.3f})")


if __name__ == "__main__":
    main()
