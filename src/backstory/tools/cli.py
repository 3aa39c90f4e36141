"""The `backstory` command: generate stories, export and import models, reverse words, train
an experiment's grid in doubling passes and read its answer against training tokens.

Usage and examples: docs/interop.md. A sampling setting not given is the run's evaluate
setting in the project's parameters (run_defaults.evaluate for a --model-dir), as its
samples and the compare report use; outside a project every one is given, an unset
--top-k or --top-p filtering nothing.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from backstory import variants
from backstory.core.errors import EXIT_USER_ERROR, UserError
from backstory.data.text import reverse_words
from backstory.data.tokenizer import Tokenizer
from backstory.evaluation.doublings import length_rows, length_table, pass_reports, seed_table
from backstory.evaluation.lineage import check_lineage, model_variant
from backstory.evaluation.sampling import generate_story, mode
from backstory.lm.beam import check_beam
from backstory.lm.checkpoint import MODEL_META_FILE, WEIGHTS_FILE, load_model, load_trained
from backstory.lm.constraints import CONSTRAINTS
from backstory.lm.generate import SamplingConfig
from backstory.lm.interop import FORMATS, export_model, load_external, save_imported
from backstory.lm.interop.external import TOKENIZER_MODEL_FILE
from backstory.pipelines.run.pipeline import tokenizer_dataset
from backstory.tools import grid
from backstory.tools.locate import CONF, Project

logger = logging.getLogger(__name__)

EXIT_USAGE = EXIT_USER_ERROR  # argparse's code for bad usage; we use it for every user error


class UsageError(Exception):
    """A problem the user can fix: printed without a traceback, exit code 2."""

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="backstory", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    _generate_parser(commands)
    _export_parser(commands)
    _import_parser(commands)
    commands.add_parser(
        "reverse-words", help="reverse the word order of stdin (Mahurin's reversal; undoes "
        "itself): the text a reversed model reads and writes")
    train = commands.add_parser(
        "grid", help="train an experiment's runs side by side (kedro run --runner "
        "ParallelRunner), in passes of doubling length; killed, the same command continues")
    train.add_argument("--env", required=True, help="the Kedro environment, e.g. aot_converged")
    train.add_argument("--project-dir", type=Path, default=Path("."),
                       help="the Kedro project (default: .)")
    train.add_argument("--doublings", type=int, default=None,
                       help="passes of doubled length after the first (default: 1 for a wsd "
                            "schedule, 0 otherwise)")
    train.add_argument("--jobs", type=int, default=0,
                       help="runs trained at once (default 0: the cores idle at the start)")
    train.add_argument("--presets", nargs="+", default=None,
                       help="train only these presets' runs, through every pass, and write no "
                            "report (a later run without --presets reuses them)")
    lengths = commands.add_parser(
        "doublings", help="the deltas, excess over the floor and convergence of a grid "
        "trained in doubling passes, one row per size and length (a markdown table)")
    lengths.add_argument("folders", nargs="+", type=Path,
                         help="folders holding pass<k>/report.json, e.g. "
                              "data/08_reporting/compare")
    lengths.add_argument("--per-seed", action="store_true",
                         help="each seed's deltas at every length instead, a table per size")
    return parser


def _add_model_paths(command: argparse.ArgumentParser) -> None:
    command.add_argument("--variant", choices=variants.NAMES, default=None,
                         help="; ".join(f"{v.name}: {v.description} (prompt: {mode(v.name)})"
                                        for v in variants.REGISTRY.values()))
    command.add_argument("--run", default=None,
                         help="the run, e.g. reversed.small.s1337 (default: the only run of "
                              "--variant)")
    command.add_argument("--project-dir", type=Path, default=Path("."),
                         help="the Kedro project whose data/ holds the model (default: .)")
    command.add_argument("--env", default=None,
                         help="the Kedro environment whose experiment lists the runs")
    command.add_argument("--model-dir", type=Path, default=None,
                         help="a model folder instead of the run's (its variant is read from "
                              "it unless --variant is given)")
    command.add_argument("--tokenizer", type=Path, default=None,
                         help="a sentencepiece model instead of the project's (default with "
                              "--model-dir: its tokenizer.model, when it has one)")


def _generate_parser(commands: argparse._SubParsersAction) -> None:
    gen = commands.add_parser("generate", help="generate stories with a trained model")
    gen.add_argument("--prompt", required=True, help="text in normal reading order")
    _add_model_paths(gen)
    gen.add_argument("--max-new-tokens", type=int,
                     help="most tokens to generate (capped by the model's context)")
    gen.add_argument("--temperature", type=float, help="0 = greedy")
    gen.add_argument("--top-k", type=int, help="sample among the k likeliest")
    gen.add_argument("--top-p", type=float, help="nucleus sampling mass")
    gen.add_argument("--seed", type=int, help="sample i uses seed + i")
    gen.add_argument("--num-samples", type=int, default=1, help="how many stories")
    gen.add_argument("--beam-width", type=int, default=1,
                     help="> 1: beam search instead of sampling (deterministic)")
    gen.add_argument("--length-penalty", type=float, default=1.0,
                     help="beam score = log-probability / length ** penalty (0: total, "
                          "1: per token; larger favours longer stories)")
    gen.add_argument("--constraint", choices=CONSTRAINTS, default=None,
                     help="pilish: the i-th generated word has as many letters as the i-th "
                          "digit of pi (0 = 10 letters)")
    gen.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")


def _export_parser(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser(
        "export", help="write a trained model for llama2.c's run.c or Hugging Face transformers")
    export.add_argument("--format", required=True, choices=FORMATS, dest="fmt",
                        help="llama2c: model.bin + tokenizer.bin for run.c; hf: a folder for "
                             "AutoModelForCausalLM / AutoTokenizer")
    _add_model_paths(export)
    export.add_argument("--out", type=Path, required=True, help="folder to write into")
    _add_force(export)


def _add_force(command: argparse.ArgumentParser) -> None:
    command.add_argument("--force", action="store_true",
                         help="write even where --out is the source, lies in a model or run "
                              "folder, or holds model files (files of the same name are "
                              "replaced, others left)")


def _import_parser(commands: argparse._SubParsersAction) -> None:
    imp = commands.add_parser(
        "import", help="turn a llama2.c .bin / ckpt.pt or a Hugging Face Llama folder into a "
                       "backstory model folder")
    imp.add_argument("--source", type=Path, required=True,
                     help="a run.c .bin, a llama2.c ckpt.pt or a Hugging Face model folder")
    imp.add_argument("--tokenizer", type=Path, default=None,
                     help="its sentencepiece .model (default: tokenizer.model next to it)")
    imp.add_argument("--tokenizer-bin", type=Path, default=None,
                     help="run.c's tokenizer.bin to check against --tokenizer (default: "
                          "tokenizer.bin next to a .bin, when present)")
    imp.add_argument("--variant", choices=variants.NAMES, default=None,
                     help="the text layout the model was trained on, when it records none")
    imp.add_argument("--out", type=Path, required=True,
                     help="folder for model.safetensors, model.json and tokenizer.model")
    _add_force(imp)


def _paths(args: argparse.Namespace, *, settings_wanted: bool = False
           ) -> tuple[str | None, Path, Path, dict[str, Any] | None]:
    """(variant or None, model folder, tokenizer file, evaluate settings) the arguments
    point at; the settings are the run's, run_defaults.evaluate for a --model-dir, or None
    outside a project (or when not ``settings_wanted``)."""
    variant, model_dir, tokenizer, make = args.variant, args.model_dir, args.tokenizer, None
    settings = None
    if tokenizer is None and model_dir is not None and (model_dir / TOKENIZER_MODEL_FILE).is_file():
        tokenizer = model_dir / TOKENIZER_MODEL_FILE  # an import keeps its own tokenizer
    needed = model_dir is None or tokenizer is None
    if needed or settings_wanted and (args.project_dir / CONF / "base").is_dir():
        try:
            project = Project.load(args.project_dir, args.env)
            settings = project.evaluate_settings()
            if model_dir is None:
                run = project.find_run(args.variant, args.run)
                settings = project.evaluate_settings(run)
                variant, model_dir = run.variant, project.path(f"{run.namespace}.model")
                make = f"kedro run --pipelines {run.namespace}"
            if tokenizer is None:  # the variant's own tokenizer, or the shared one
                tokenizer = project.path(tokenizer_dataset(variant) if variant else "tokenizer")
        except ValueError as err:
            raise UsageError(str(err)) from err
    for name in (WEIGHTS_FILE, MODEL_META_FILE):
        if not (model_dir / name).is_file():
            hint = f"; make it with `{make}` in the project folder" if make else ""
            raise UsageError(f"no trained model at {model_dir} (missing {name}){hint}")
    if not tokenizer.is_file():
        raise UsageError(
            f"no tokenizer at {tokenizer}; make it with `kedro run --pipelines ingest` "
            "(or pass --tokenizer)"
        )
    return variant, model_dir, tokenizer, settings


def _sampling(args: argparse.Namespace, settings: dict[str, Any] | None
              ) -> tuple[SamplingConfig, int]:
    """The sampling settings and seed: each given flag, else the project's ``settings``."""
    flags = {f.name: getattr(args, f.name) for f in fields(SamplingConfig)} | {"seed": args.seed}
    if settings is None:  # outside a project: the flags alone; an unset top-k/top-p: no filter
        settings = {"top_k": None, "top_p": None}
        if args.temperature == 0 or args.beam_width > 1:
            settings["seed"] = 0  # greedy and beam search draw nothing: the seed is unused
        missing = ["--" + k.replace("_", "-") for k, v in flags.items()
                   if v is None and k not in settings]
        if missing:
            raise UsageError(f"{args.project_dir.resolve()} is no backstory project to read "
                             f"the sampling settings from; pass {', '.join(missing)}")
    chosen = {k: settings[k] if v is None else v for k, v in flags.items()}
    seed = chosen.pop("seed")
    try:
        return SamplingConfig.of(chosen), seed
    except ValueError as err:
        raise UsageError(str(err)) from err


def _checked_variant(variant: str | None, meta: dict[str, Any], model_dir: Path) -> str:
    """The variant to sample or export as: the one asked for, which must be the model's."""
    trained_for = model_variant(meta)
    variant = variant or trained_for
    if variant is None:
        raise UsageError(f"the model at {model_dir} records no variant; pass --variant")
    if trained_for is not None and trained_for != variant:
        raise UsageError(
            f"the model at {model_dir} was trained for the {trained_for!r} variant, not "
            f"{variant!r}; pass --variant {trained_for} or the right --model-dir"
        )
    return variant


def _check_args(args: argparse.Namespace) -> None:
    if args.num_samples < 1:
        raise UsageError(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.seed is not None and args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    if args.beam_width > 1 and args.num_samples > 1:
        raise UsageError("beam search is deterministic: use --num-samples 1 with --beam-width")
    try:
        check_beam(args.beam_width, args.length_penalty)
        device = torch.device(args.device)
    except (ValueError, RuntimeError) as err:  # torch rejects unknown device strings
        raise UsageError(str(err)) from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: CUDA is not available on this machine")


def _generate(args: argparse.Namespace) -> tuple[list[str], int]:
    """The stories the arguments ask for, and the first one's seed; UsageError for
    anything the user can fix."""
    _check_args(args)
    variant, model_dir, tokenizer_path, settings = _paths(args, settings_wanted=True)
    sampling, seed = _sampling(args, settings)
    try:
        tokenizer = Tokenizer.from_file(tokenizer_path)
        model, meta = load_model(model_dir, device=args.device)
        check_lineage(meta, tokenizer.sha256, model_path=str(model_dir),
                      tokenizer_path=str(tokenizer_path))
        variant = _checked_variant(variant, meta, model_dir)
        return [
            generate_story(model, tokenizer, variant=variant, prompt=args.prompt,
                           **sampling.to_dict(), seed=seed + i, beam_width=args.beam_width,
                           length_penalty=args.length_penalty, constraint=args.constraint)["text"]
            for i in range(args.num_samples)
        ], seed
    except (UserError, ValueError, OSError) as err:
        # Unreadable or mismatched files and bad settings (CheckpointError and
        # LineageError are ValueErrors) are the user's to fix, not crashes.
        raise UsageError(str(err)) from err


def _export(args: argparse.Namespace) -> list[Path]:
    """Export the model the arguments name; the files written."""
    variant, model_dir, tokenizer_path, _ = _paths(args)
    try:
        tokenizer = Tokenizer.from_file(tokenizer_path)
        trained = load_trained(model_dir)
        check_lineage(trained.meta, tokenizer.sha256, model_path=str(model_dir),
                      tokenizer_path=str(tokenizer_path))
        _checked_variant(variant, trained.meta, model_dir)
        return export_model(trained, tokenizer, args.out, fmt=args.fmt, source=model_dir,
                            force=args.force)
    except (UserError, ValueError, OSError) as err:
        raise UsageError(str(err)) from err


def _import(args: argparse.Namespace) -> list[Path]:
    """Import the model the arguments name into a backstory model folder; the files."""
    try:
        trained, tokenizer = load_external(args.source, tokenizer=args.tokenizer,
                                           tokenizer_bin=args.tokenizer_bin,
                                           variant=args.variant)
        return save_imported(trained, tokenizer, args.out, source=args.source,
                             force=args.force)
    except (UserError, ValueError, OSError) as err:
        raise UsageError(str(err)) from err


def _reverse_words() -> str:
    """stdin with its word order reversed; a final newline stays at the end."""
    text = sys.stdin.read()
    body = text[:-1] if text.endswith("\n") else text
    return reverse_words(body) + ("\n" if text.endswith("\n") else "")


def _grid(args: argparse.Namespace) -> None:
    """Train the grid's remaining passes, then print its answer against training tokens."""
    try:
        project = Project.load(args.project_dir.resolve(), args.env)
        doublings = grid.doublings_for(project, args.env, args.doublings)
        jobs = args.jobs or grid.idle_jobs()
        print(f"{args.env}: {len(project.experiment.runs)} runs, {doublings} doubling(s), "
              f"{jobs} at once", flush=True)
        report = grid.train_grid(project, args.env, doublings, jobs, args.presets)
        if report is None:
            print(f"{', '.join(args.presets)} trained through pass {doublings}; run again "
                  "without --presets for the report")
            return
        print(f"report: {report}; against training tokens (backstory doublings "
              f"{report.parent}):")
        print("\n".join(length_table(length_rows(pass_reports(report.parent)))))
    except (UserError, ValueError) as err:
        raise UsageError(str(err)) from err


def _print_stories(stories: list[str], seed: int) -> None:
    if len(stories) == 1:
        print(stories[0])
        return
    for i, story in enumerate(stories):
        print(f"--- sample {i + 1} (seed {seed + i}) ---")
        print(story, end="\n\n" if i + 1 < len(stories) else "\n")


def _run(args: argparse.Namespace) -> None:
    if args.command == "generate":
        _print_stories(*_generate(args))
    elif args.command == "export":
        for path in _export(args):
            print(path)
    elif args.command == "import":
        for path in _import(args):
            print(path)
    elif args.command == "grid":
        _grid(args)
    elif args.command == "doublings":
        try:
            rows = [row for folder in args.folders for row in length_rows(pass_reports(folder))]
        except UserError as err:
            raise UsageError(str(err)) from err
        print("\n".join(seed_table(rows) if args.per_seed else length_table(rows)))
    else:
        sys.stdout.write(_reverse_words())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `backstory` console script; returns the exit code."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:  # argparse has printed usage and the error
        return int(exit_.code or 0)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        _run(args)
    except UsageError as err:
        print(f"backstory {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
