"""What checksummed checkpoints cost: writing SHA256SUMS and verifying it on resume.

Rerun: ``python benchmarks/bench_checkpoint.py`` (about half a minute on 2 CPU cores;
``--preset small --vocab 2048`` for the project's default CPU model).

Side by side in one run, on the llama2.c 15M shape by default (preset stories15m,
vocab 32000: 15.2M parameters, 61 MB of weights, 122 MB of AdamW state):

- write: the checkpoint's three files written and fsynced the way they were before
  checksums, against ``save_checkpoint`` (the same plus SHA256SUMS);
- resume: the weights and optimizer loaded without any check, against what a resume
  does now (``resumable_checkpoint`` verifies, ``load_checkpoint`` verifies and loads).

Prints the median of ``--repeats`` runs of each and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from corpus import PRESET_HELP, preset_model
from machine import describe
from safetensors.torch import load_file, save_file

from backstory.lm.checkpoint import (
    cpu_state_dict,
    load_checkpoint,
    resumable_checkpoint,
    save_checkpoint,
)
from backstory.lm.model import Transformer


def median_seconds(action: Callable[[int], object], repeats: int) -> float:
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        action(i)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def write_unchecked(folder: Path, weights: dict, optimizer: dict, state: dict) -> None:
    """The checkpoint files as written before SHA256SUMS existed (baseline)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(folder / "model.safetensors"))
    torch.save(optimizer, folder / "optimizer.pt")
    (folder / "state.json").write_text(json.dumps(state, sort_keys=True, indent=1))
    for name in ("model.safetensors", "optimizer.pt", "state.json"):
        with open(folder / name, "rb") as handle:
            os.fsync(handle.fileno())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="stories15m", help=PRESET_HELP)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(describe())

    config = preset_model(args.preset, args.vocab)
    torch.manual_seed(0)
    model = Transformer(config)
    optimizer = model.configure_optimizer(lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95),
                                          device_type="cpu")
    tokens = torch.randint(0, args.vocab, (2, 64))
    model(tokens, tokens)[1].backward()
    optimizer.step()
    weights, optimizer_state = cpu_state_dict(model), optimizer.state_dict()
    state = {"micro_batch": 1, "model_config": config.to_dict()}

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        plain = median_seconds(
            lambda i: write_unchecked(root / f"plain{i}", weights, optimizer_state, state),
            args.repeats)
        summed = median_seconds(
            lambda i: save_checkpoint(root / f"run{i}", step=1, model_state=weights,
                                      optimizer_state=optimizer_state, state=state),
            args.repeats)
        size = sum(f.stat().st_size for f in (root / "run0/checkpoints/step_00000001").iterdir())
        print(f"model: {model.num_parameters():,} parameters; checkpoint {size / 1e6:.1f} MB")
        print(f"write: unchecked {plain:.3f} s, with SHA256SUMS {summed:.3f} s "
              f"({summed / plain:.2f}x)")

        folder = root / "plain0"
        unchecked = median_seconds(
            lambda i: (load_file(str(folder / "model.safetensors")),
                       torch.load(folder / "optimizer.pt", weights_only=True)),
            args.repeats)
        verified = median_seconds(
            lambda i: load_checkpoint(resumable_checkpoint(root / "run0")), args.repeats)
        print(f"resume: unchecked load {unchecked:.3f} s, verify + load {verified:.3f} s "
              f"({verified / unchecked:.2f}x)")


if __name__ == "__main__":
    main()
