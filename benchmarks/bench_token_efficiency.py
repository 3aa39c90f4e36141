"""Token efficiency: tokens the fast recipe needs to reach the AdamW baseline's final bpb.

For each variant (forward, reversed) and seed, trains the baseline (the variant's
conf/base blocks as shipped, with ``--baseline`` overrides) and the fast recipe
(``recipes.FAST``, or ``--fast key=value ...``) on the default run's corpus (storyworld,
20,000 stories, built once by ``corpus.py``). Both are scored every ``--eval-every``
steps with the pipeline's own validation bits per byte (``evaluate_loss`` over the
first ``evaluate.n_stories`` validation stories, as every run). Prints val bpb
against tokens for every run, then per seed the tokens the fast recipe took to reach
the baseline's final bpb (interpolated between evaluations) over the baseline's tokens,
and their mean and range over seeds. Goal (issue 11): at most 0.60 for every variant.

Rerun (about 1 h on one core; one run at a time, 1 torch thread):

    python benchmarks/bench_token_efficiency.py
    python benchmarks/bench_token_efficiency.py --variants forward --seeds 1337 \\
        --fast optimizer=muon muon_lr=0.03 max_steps=150 --reuse   # a sweep point

``--reuse`` takes a run's curve from ``<cache>/curves`` when the same settings ran
before (sweeps share their baselines); leave it off for the published figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import statistics
import subprocess
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import yaml
from corpus import DEFAULT_CACHE, ROOT, default_stores
from machine import describe
from recipes import FAST, Point, settings, tokens_to_reach, train_curve

from backstory.lm.model import ModelConfig
from backstory.lm.training.config import TrainConfig

GOAL = 0.60


def parse_overrides(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"override {item!r} is not key=value")
        out[key] = yaml.safe_load(value)
    return out


def code_version() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def curve(stores, variant: str, overrides: dict, seed: int, eval_every: int, cache: Path,
          reuse: bool) -> tuple[list[Point], bool]:
    model, train = settings(variant, overrides)
    # Keyed by the effective settings (later settings at their defaults drop out).
    model = ModelConfig(vocab_size=stores[variant].train.vocab_size, **model).to_dict()
    train = TrainConfig.from_params(train).to_dict()
    key = json.dumps({"variant": variant, "model": model, "train": train, "seed": seed,
                      "eval_every": eval_every}, sort_keys=True)
    path = cache / "curves" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    if reuse and path.exists():
        return [Point(**p) for p in json.loads(path.read_text())["points"]], True
    with tempfile.TemporaryDirectory() as tmp:
        points = train_curve(stores[variant], variant, overrides, run_dir=Path(tmp),
                             eval_every=eval_every, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"settings": json.loads(key), "code": code_version(),
                                "points": [asdict(p) for p in points]}))
    return points, False


def show(label: str, points: list[Point], reused: bool) -> None:
    row = "  ".join(f"{p.tokens / 1e6:.2f}M:{p.val_bpb:.4f}" for p in points)
    print(f"  {label}{' (reused)' if reused else ''}: {row}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["forward", "reversed"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1337, 1338, 1339])
    parser.add_argument("--fast", nargs="*", default=None,
                        help="the fast recipe as train overrides key=value (model.<key> for "
                             "model settings); default: recipes.FAST")
    parser.add_argument("--baseline", nargs="*", default=[],
                        help="overrides of the baseline (default: conf/base as shipped)")
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="write every curve as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    fast = FAST if args.fast is None else parse_overrides(args.fast)
    baseline = parse_overrides(args.baseline)
    print(f"machine: {describe()}; torch {torch.__version__}, {args.threads} thread(s); "
          f"code {code_version()}")
    print(f"baseline: conf/base {baseline or ''}; fast: {fast}")
    stores, _ = default_stores(args.cache)
    started = time.perf_counter()
    results: dict[str, Any] = {"fast": fast, "baseline": baseline, "runs": {}}
    ratios: dict[str, list[float | None]] = {}
    for variant in args.variants:
        ratios[variant] = []
        print(f"{variant} (val bits per byte at tokens seen):")
        for seed in args.seeds:
            base, reused_b = curve(stores, variant, baseline, seed, args.eval_every, args.cache,
                                   args.reuse)
            show(f"seed {seed} baseline", base, reused_b)
            quick, reused_f = curve(stores, variant, fast, seed, args.eval_every, args.cache,
                                    args.reuse)
            show(f"seed {seed} fast    ", quick, reused_f)
            target, base_tokens = base[-1].val_bpb, base[-1].tokens
            reached = tokens_to_reach(quick, target)
            ratio = None if reached is None else reached / base_tokens
            ratios[variant].append(ratio)
            said = ("not reached" if ratio is None
                    else f"{reached / 1e6:.3f}M tokens, ratio {ratio:.3f}")
            print(f"  seed {seed}: baseline final {target:.4f} at {base_tokens / 1e6:.2f}M; "
                  f"fast final {quick[-1].val_bpb:.4f} at {quick[-1].tokens / 1e6:.2f}M; "
                  f"reaches {target:.4f} at {said}", flush=True)
            results["runs"][f"{variant}/{seed}"] = {
                "baseline": [asdict(p) for p in base], "fast": [asdict(p) for p in quick],
                "ratio": ratio}
    print("token ratio (fast tokens to reach the baseline's final bpb / baseline tokens):")
    for variant, values in ratios.items():
        got = [v for v in values if v is not None]
        if len(got) < len(values):
            print(f"  {variant}: not reached for {len(values) - len(got)} of {len(values)} seeds")
            continue
        spread = f", sd {statistics.stdev(got):.3f}" if len(got) > 1 else ""
        verdict = "meets" if max(got) <= GOAL else "misses"
        print(f"  {variant}: mean {statistics.mean(got):.3f}, range {min(got):.3f}-{max(got):.3f}"
              f"{spread} over {len(got)} seeds; {verdict} the goal <= {GOAL}")
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
