"""The whole forward-vs-reversed experiment on one GPU, without Kedro.

GPU machines without the project's Kedro install can still run the real domain code the
pipeline nodes call: storyworld -> clean -> tokenizer -> H5 export -> train -> evaluate,
for the forward and reversed variants with identical settings. Prints training
tokens/s and MFU, and validation bits per byte of both variants with the asymmetry
delta = (bpb_reversed - bpb_forward) / (0.5 * (bpb_reversed + bpb_forward)).

    python benchmarks/bench_gpu_pipeline.py --stories 100000 --steps 1500
    python benchmarks/bench_gpu_pipeline.py --device cpu --stories 2000 --steps 60 \\
        --preset tiny --batch-size 8

Defaults are the llama2.c stories15M shape (preset stories15m in conf/base) with
a 4096-token vocabulary, bf16 autocast and torch.compile on CUDA.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import yaml
from corpus import PRESET_HELP, preset_model

from backstory import variants
from backstory.data.corpus import clean, storyworld
from backstory.data.documents import encode_documents
from backstory.data.token_store import TokenStore
from backstory.data.token_writer import write_token_store
from backstory.data.tokenizer import Tokenizer, TokenizerConfig
from backstory.evaluation.metrics import evaluate_loss, unigram_bpb
from backstory.experiment import project_defaults
from backstory.lm.checkpoint import build_model
from backstory.lm.training import SPEED_LOG, TrainConfig, train

REPO = Path(__file__).resolve().parents[1]  # conf/base holds the training defaults


def corpus(n_stories: int, seed: int, split: clean.SplitRule) -> tuple[list[dict], dict]:
    """Generate, validate and split storyworld records (as the ingest nodes do)."""
    records, rows = [], []
    for name, start, stop in storyworld.shard_plan(n_stories, 10_000):
        result = clean.clean_file(name, storyworld.shard_bytes(seed, start, stop),
                                  on_bad_record="raise", split=split)
        rows.append(result.summary())
        columns = clean.to_columns(result.records)
        records += pd.DataFrame(columns).to_dict("records")
    return records, clean.merge_reports(rows)


def export(records, tokenizer, variant, split, report, path: Path) -> TokenStore:
    chosen = [r for r in records if r["split"] == split]
    attrs = {"variant": variant, "split": split, "layout": variants.get(variant).layout,
             "vocab_size": tokenizer.vocab_size, "bos_id": tokenizer.bos_id,
             "eos_id": tokenizer.eos_id, "tokenizer_sha256": tokenizer.sha256,
             "corpus_fingerprint": report["corpus_fingerprint"]}
    text = yaml.safe_load((REPO / "conf/base/parameters_runs.yml").read_text())["text"]["defaults"]
    batches = encode_documents(chosen, tokenizer, variant=variant,
                               **{k: v for k, v in text.items() if k != "workers"})
    write_token_store(path, batches, attrs=attrs)
    return TokenStore(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stories", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--preset", default="stories15m", help=PRESET_HELP)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()

    t0 = time.perf_counter()
    ingest = yaml.safe_load((REPO / "conf/base/parameters_ingest.yml").read_text())
    records, report = corpus(args.stories, storyworld.DEFAULT_SEED,
                             clean.SplitRule.from_params(ingest["split"]))
    texts = (r["story"] for r in records if r["split"] == "train")
    tokenizer = Tokenizer.from_bytes(TokenizerConfig.from_params(
        ingest["tokenizer"] | {"vocab_size": args.vocab}).train(texts))
    print(f"corpus + tokenizer: {len(records):,} stories in {time.perf_counter() - t0:.1f} s")

    results = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in ("forward", "reversed"):
            t1 = time.perf_counter()
            stores = {split: export(records, tokenizer, variant, split, report,
                                    Path(tmp) / f"{variant}-{split}.h5")
                      for split in ("train", "val")}
            print(f"{variant}: export {time.perf_counter() - t1:.1f} s, "
                  f"{stores['train'].n_tokens:,} train tokens")
            model_config = preset_model(args.preset, tokenizer.vocab_size)
            config = TrainConfig(**project_defaults("train", REPO / "conf/base") | dict(
                batch_size=args.batch_size, max_steps=args.steps, lr=5e-4, min_lr=5e-5,
                warmup_steps=min(100, args.steps // 10), eval_interval=args.steps,
                eval_batches=20, log_interval=50, checkpoint_interval=args.steps,
                device=args.device, seed=1337, token_order="forward"))
            t2 = time.perf_counter()
            trained = train(model_config, config, stores["train"], stores["val"],
                            Path(tmp) / f"{variant}-run", lineage={"variant": variant},
                            progress=False)
            elapsed = time.perf_counter() - t2
            log = pd.read_csv(Path(tmp) / f"{variant}-run" / SPEED_LOG)
            steady = log.iloc[1:]
            device = "cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu"
            model = build_model(trained).to(device).eval()
            metrics = evaluate_loss(model, stores["val"], seq_len=256, batch_size=64)
            metrics["unigram_bpb"] = unigram_bpb(stores["train"], stores["val"])
            metrics.update(train_seconds=round(elapsed, 1),
                           tokens_per_s=float(steady["tokens_per_s"].median()),
                           mfu=float(pd.to_numeric(steady["mfu"], errors="coerce").median()))
            results[variant] = metrics
            print(f"{variant}: train {elapsed:.1f} s, {metrics['tokens_per_s']:,.0f} tok/s, "
                  f"MFU {metrics['mfu']:.1%}, val loss {metrics['val_loss']:.4f}, "
                  f"val bpb {metrics['val_bpb']:.4f} (unigram {metrics['unigram_bpb']:.4f})")
    fw, bw = results["forward"]["val_bpb"], results["reversed"]["val_bpb"]
    results["delta_bpb"] = (bw - fw) / (0.5 * (bw + fw))
    print(f"delta (reversed vs forward, bits per byte): {results['delta_bpb']:+.4f}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
