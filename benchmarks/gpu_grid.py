"""The converged arrow-of-time grid on a lent GPU: `--env aot_gpu` on two corpora.

    python benchmarks/gpu_grid.py --plan                # the runs, sizes and tokens; no training
    python benchmarks/gpu_grid.py                       # storyworld 100k, then TinyStories V2
    python benchmarks/gpu_grid.py --corpora storyworld  # one corpus

Each corpus trains in its own project copy under ``--workdir`` (conf/ and pyproject.toml
copied, its own data/), so the two corpora's stories, tokenizers and runs never mix:
storyworld with conf/aot_gpu as it is, TinyStories V2 with conf/tinystories_v2's ingest
settings in place of aot_gpu's. Each copy is run by ``rerun_results.py --jobs 1`` (one
GPU: one run at a time), which prints the machine, trains pass 0 (``backstory grid``),
doubles every run's tokens from its stable-phase checkpoint, and prints the deltas and the
convergence verdicts against training tokens. Killed, the same command continues where it
stopped.

TinyStories V2 is downloaded (2.2 GB) into the copy's data/01_raw/downloads unless it is
there already: on a machine without network, copy that folder in first.

Without a CUDA device it stops (exit 2) unless ``--allow-cpu``: CI never runs it; its
plan and configuration checks are tested on the CPU (tests/test_grid.py).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = "aot_gpu"
CORPORA = {"storyworld": None, "tinystories_v2": "conf/tinystories_v2/parameters_ingest.yml"}


def project_copy(root: Path, corpus: str) -> Path:
    """``root`` as a project for ``corpus``: this repository's conf and pyproject, its own data."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    if (REPO / ".telemetry").exists():
        shutil.copy(REPO / ".telemetry", root / ".telemetry")
    if (root / "conf").exists():
        shutil.rmtree(root / "conf")
    shutil.copytree(REPO / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    (root / "conf" / "local").mkdir()
    (root / "src").mkdir(exist_ok=True)  # Kedro checks that it exists; the package is installed
    if CORPORA[corpus] is not None:
        shutil.copy(REPO / CORPORA[corpus], root / "conf" / ENV / "parameters_ingest.yml")
    return root


def plan(root: Path, corpus: str) -> list[str]:
    """What the grid trains on ``corpus``: every run's settings built and checked (an
    unknown or bad setting raises here, naming it), and the tokens of each pass."""
    from backstory.experiment import run_settings
    from backstory.lm.model import ModelConfig, Transformer
    from backstory.lm.training import TrainConfig
    from backstory.tools.grid import preset_lengths
    from backstory.tools.locate import Project

    project = Project.load(root, ENV)
    parameters, experiment = project.parameters, project.experiment
    base = preset_lengths(project)
    vocab = parameters["tokenizer"]["vocab_size"]
    corpus_settings = parameters["corpus"]
    lines = [f"{corpus}: corpus {corpus_settings['source']}"
             + (f" {corpus_settings['dataset']}" if corpus_settings["source"] == "tinystories"
                else f", {corpus_settings['n_stories']:,} stories")
             + f", vocabulary {vocab:,}, {len(experiment.runs)} runs"]
    sizes: dict[str, list[str]] = {}
    for run in experiment.runs:
        settings = run_settings(parameters, run)
        train = TrainConfig.from_params({**settings["train"], "seed": run.seed,
                                         "token_order": "forward"})
        model = ModelConfig(vocab_size=vocab, **settings["model"])
        tokens = train.batch_size * train.grad_accum * model.max_seq_len
        if run.preset not in sizes:  # one model built per preset, not one per run
            sizes[run.preset] = [f"{Transformer(model).num_parameters():,} parameters",
                                 f"{tokens:,} tokens per step",
                                 f"pass 0 {base[run.preset]:,} steps "
                                 f"({base[run.preset] * tokens / 1e6:.0f}M tokens)",
                                 f"lr {train.lr} {train.schedule}"]
        sizes[run.preset].append(run.variant)
    for preset, facts in sizes.items():
        lines.append(f"  {preset}: {', '.join(facts[:4])}; runs "
                     + ", ".join(f"{v} x{facts[4:].count(v)}" for v in dict.fromkeys(facts[4:])))
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=REPO / "data" / "gpu_grid",
                        help="where the per-corpus project copies live")
    parser.add_argument("--corpora", default=",".join(CORPORA),
                        help=f"comma-separated, of {', '.join(CORPORA)}")
    parser.add_argument("--doublings", type=int, default=1, help="passes of doubled tokens")
    parser.add_argument("--plan", action="store_true", help="print the plan and stop")
    parser.add_argument("--allow-cpu", action="store_true", help="train without a GPU")
    args = parser.parse_args(argv)
    corpora = [c.strip() for c in args.corpora.split(",") if c.strip()]
    unknown = [c for c in corpora if c not in CORPORA]
    if unknown:
        print(f"--corpora: unknown {unknown}; use {', '.join(CORPORA)}", file=sys.stderr)
        return 2
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch
    from machine import describe

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    print(f"machine: {describe()}; GPU: {gpu or 'none'}", flush=True)
    roots = {c: project_copy(args.workdir.resolve() / c, c) for c in corpora}
    for corpus, root in roots.items():
        print("\n".join(plan(root, corpus)), flush=True)
    if args.plan:
        return 0
    if gpu is None and not args.allow_cpu:
        print("No CUDA device: this grid is sized for a GPU (65 runs per corpus up to 27M "
              "parameters). Run it where torch.cuda.is_available(), or pass --allow-cpu.",
              file=sys.stderr)
        return 2
    from rerun_results import main as rerun

    for corpus, root in roots.items():
        print(f"== {corpus} ({root})", flush=True)
        code = rerun(["--root", str(root), "--env", ENV, "--jobs", "1",
                      "--doublings", str(args.doublings), "--steps", "2"])
        if code:
            return code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
