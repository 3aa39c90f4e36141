"""Which recipe reaches the lowest validation bpb per size for the same tokens?

Trains the ``--variant`` model (forward, reversed or backward) of each ``--presets``
size with the model and train settings that variant's runs of that preset get in
``--env`` (the converged grid's by default), under each ``--recipes`` entry, on the
default run's corpus, with a warmup-stable-decay schedule, and prints every run's
validation bits per byte (the pipeline's ``evaluate_loss``) at each ``--eval-every`` steps
and after the cooldown, with its CPU seconds. The recipe with the lowest bpb after the
cooldown at a given length converges fastest at that size: the converged grid's presets
take it (docs/results.md, "Which recipe per size").

A recipe is a label and train settings (``model.<key>`` for a model setting);
``min_lr`` follows ``lr`` at a tenth unless the recipe sets it:

    python benchmarks/recipe_sweep.py --presets micro tiny \\
        --recipes adamw2e-3:lr=0.002 adamw1e-2:lr=0.01 \\
        muon:optimizer=muon,muon_lr=0.05,lr=0.01,model.zero_init_out=true
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench_token_efficiency import parse_overrides
from corpus import DEFAULT_CACHE, ROOT, default_stores
from machine import start_one_thread
from recipes import train_curve

from backstory import experiment, variants
from backstory.tools.locate import Project


def preset_run(parameters: dict, variant: str, preset: str) -> dict:
    """The settings ``variant``'s runs of ``preset`` get in the environment."""
    return experiment.run_settings(parameters, experiment.RunSpec(variant, preset, 1))


def parse_recipe(text: str) -> tuple[str, dict]:
    label, _, settings = text.partition(":")
    overrides = parse_overrides([item for item in settings.split(",") if item])
    if "lr" in overrides and "min_lr" not in overrides:
        overrides["min_lr"] = overrides["lr"] / 10
    return label, overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["micro", "tiny", "small"])
    parser.add_argument("--env", default="aot_converged", help="conf env whose presets apply")
    parser.add_argument("--recipes", nargs="+", required=True, type=parse_recipe)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--variant", choices=["forward", "reversed", "backward"],
                        default="forward")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args()
    start_one_thread()
    stores, _ = default_stores(args.cache)
    parameters = Project.load(ROOT, args.env).parameters
    print("variant preset recipe step tokens val_bpb cpu_s")
    for preset in args.presets:
        for label, overrides in args.recipes:
            run = preset_run(parameters, args.variant, preset)
            model = {f"model.{key}": value for key, value in run["model"].items()}
            settings = {**model, **run["train"], "schedule": "wsd", "max_steps": args.steps,
                        "num_threads": 1, **overrides}
            with tempfile.TemporaryDirectory() as tmp:
                points = train_curve(stores[variants.get(args.variant).token_source],
                                     args.variant, settings, run_dir=Path(tmp),
                                     eval_every=args.eval_every, seed=args.seed)
            for point in points:
                print(f"{args.variant} {preset} {label} {point.step} {point.tokens} "
                      f"{point.val_bpb:.4f} {point.cpu_seconds:.0f}", flush=True)


if __name__ == "__main__":
    main()
