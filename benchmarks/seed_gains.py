"""Where a seed that pulls ahead of the others gains: each run's loss on the validation
stories, split by kind of target, relative to the mean of its seeds.

A target *repeats* when the pair (previous token, target) occurred earlier in the same
story, in the order the model reads it: what copying from the context (an induction head)
can predict. Every other target is *other*. Each run is scored at the end of its stable
phase (its kept ``run/stable`` checkpoint) and at its end (its saved model), on the first
``--stories`` validation stories, each cut to the context length.

    python benchmarks/seed_gains.py --env aot_lr --preset tiny --variant forward

Prints per run the nats per token of each kind of target and the share above or below
the mean of the variant's seeds (docs/results.md, "What the cooldown does to the seeds").
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from backstory.data.token_store import TokenStore
from backstory.experiment import run_settings
from backstory.lm.checkpoint import (
    TrainedModel,
    build_model,
    load_checkpoint,
    load_trained,
    stable_checkpoint,
)
from backstory.lm.orders import order_windows
from backstory.tools.locate import Project
from backstory.variants import get as variant_of


def repeats(story: np.ndarray) -> np.ndarray:
    """Bool per target (positions 1..): its (previous, target) pair occurred before."""
    seen, out = set(), []
    for pair in zip(story[:-1].tolist(), story[1:].tolist(), strict=True):
        out.append(pair in seen)
        seen.add(pair)
    return np.array(out)


def target_losses(trained: TrainedModel, stories: list[np.ndarray]) -> np.ndarray:
    model = build_model(trained).eval()
    with torch.no_grad():
        return np.concatenate([
            F.cross_entropy(model(torch.from_numpy(s[None, :-1]))[0][0].float(),
                            torch.from_numpy(s[1:]), reduction="none").numpy()
            for s in stories])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project-dir", type=Path, default=Path("."))
    parser.add_argument("--env", required=True)
    parser.add_argument("--preset", required=True)
    parser.add_argument("--variant", required=True)
    parser.add_argument("--stories", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    project = Project.load(args.project_dir, args.env)
    runs = [r for r in project.experiment.runs_of(args.variant) if r.preset == args.preset]
    if not runs:
        raise SystemExit(f"{args.env} has no {args.variant} run of preset {args.preset}")
    variant = variant_of(args.variant)
    store = TokenStore(project.path(f"{variant.token_source}.val_tokens"))
    width = run_settings(project.parameters, runs[0])["model"]["max_seq_len"] + 1  # one preset
    stories = [np.ascontiguousarray(order_windows(  # backward: a reversed view
        store.document(i)[None, :width].astype(np.int64), variant.token_order)[0])
        for i in range(args.stories)]
    losses: dict[str, dict[int, np.ndarray]] = {"stable end": {}, "end": {}}
    for run in runs:
        final = load_trained(project.path(f"{run.namespace}.model"))
        run_dir = project.path(f"{run.namespace}.training_run")
        kept = stable_checkpoint(run_dir)
        if kept is None:
            raise SystemExit(f"{run_dir} keeps no end-of-stable-phase checkpoint (wsd runs do)")
        stable = load_checkpoint(kept)
        losses["stable end"][run.seed] = target_losses(
            TrainedModel(final.config, stable.model_state, {}), stories)
        losses["end"][run.seed] = target_losses(final, stories)
    kind = np.concatenate([repeats(s) for s in stories])
    print(f"{args.variant} {args.preset}: {len(stories)} stories, {kind.size} targets, "
          f"{kind.mean():.1%} repeat a pair seen earlier in the story")
    for point, by_seed in losses.items():
        table = {seed: [x[kind].mean(), x[~kind].mean(), x.mean()] for seed, x in by_seed.items()}
        mean = np.mean(list(table.values()), axis=0)
        print(f"\n{point}: seed | repeats | other | all (nats per token; vs the seeds' mean)")
        for seed, row in table.items():
            print(f"  s{seed} | " + " | ".join(f"{v:.3f} ({v / m - 1:+.1%})"
                                              for v, m in zip(row, mean, strict=True)))


if __name__ == "__main__":
    main()
