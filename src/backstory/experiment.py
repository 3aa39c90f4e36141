"""The experiment: which runs to train, and the one merge that gives each run its settings.

The declaration (conf/base/parameters_runs.yml) and the merge order are described in
docs/configuration.md. ``expand`` adds the merged blocks to the parameters under each
run's namespace (``<variant>.<preset>.s<seed>``) and each text variant's export
(``<variant>.text``), which is what the namespaced Kedro pipelines read.
``tracked_keys`` names the raw keys each merged block comes from, which is what
dvc.yaml tracks.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backstory import variants
from backstory.core.errors import SettingError
from backstory.data.corpus.sources import CorpusConfig
from backstory.data.corpus.story_table import IngestConfig
from backstory.data.documents import TextConfig
from backstory.data.tokenizer import TokenizerConfig
from backstory.evaluation.evaluate import EvaluateConfig
from backstory.lm.finetune import FinetuneConfig
from backstory.lm.model import ModelConfig
from backstory.lm.training.config import TrainConfig
from backstory.params import build, check_keys

EXPERIMENT, TEXT, RUN_DEFAULTS, PRESETS, VARIANT_SETTINGS, EXTERNAL = (
    "experiment", "text", "run_defaults", "presets", "variant_settings", "external")
REQUIRED_KEYS = (EXPERIMENT, TEXT, RUN_DEFAULTS, PRESETS, VARIANT_SETTINGS)
DECLARATION_KEYS = (*REQUIRED_KEYS, EXTERNAL)  # `external` may be left out: no imports
TEXT_DEFAULTS = "defaults"
GRID_KEYS = ("variants", "presets", "seeds", "contexts")
FINETUNE = "finetune"  # settings of runs that start from another run's model
RUN_SECTIONS = ("model", "train", "evaluate", FINETUNE)
EXTERNAL_KEYS = ("source", "tokenizer", "variant")
# Settings a run's identity or its variant fixes: never set in parameter files.
AXIS_SETTINGS = {("train", "seed"): "experiment seeds", ("train", "token_order"):
                 "the variant registry (backstory/variants.py)",
                 ("model", "vocab_size"): "the tokenizer"}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_PLACEHOLDER_VOCAB = 256  # model settings are checked before the tokenizer exists


@dataclass(frozen=True)
class RunSpec:
    """One run of the experiment."""

    variant: str
    preset: str
    seed: int
    context: int | None = None

    @property
    def size(self) -> str:
        """The preset, with the context length when the run sets one."""
        return self.preset if self.context is None else f"{self.preset}-c{self.context}"

    @property
    def namespace(self) -> str:
        """The Kedro namespace: ``<variant>.<size>.s<seed>``."""
        return f"{self.variant}.{self.size}.s{self.seed}"

    @property
    def key(self) -> str:
        """The run's name where dots are not allowed (DVC stage names, file names)."""
        return self.namespace.replace(".", "-")

    @property
    def token_source(self) -> str:
        """The variant whose token stores the run trains and is evaluated on."""
        return variants.get(self.variant).token_source

    @property
    def init_run(self) -> RunSpec | None:
        """The run whose model this one starts from (same preset, seed, context), if any."""
        source = variants.get(self.variant).init_from
        return None if source is None else RunSpec(source, self.preset, self.seed, self.context)

    def describe(self) -> dict[str, Any]:
        """The run's identity as plain data (recorded in its lineage and metrics)."""
        return {"run": self.namespace, "variant": self.variant, "preset": self.preset,
                "seed": self.seed, "context": self.context}


@dataclass(frozen=True)
class ExternalSpec:
    """An imported model, scored beside the runs (``external.<name>`` in parameters).

    ``source`` and ``tokenizer`` are the files as the user gave them; ``variant`` states
    the text layout the model reads (its documents are encoded in that variant's layout).
    """

    name: str
    source: str
    tokenizer: str
    variant: str

    @property
    def namespace(self) -> str:
        """The Kedro namespace of its pipeline and datasets: ``external.<name>``."""
        return f"{EXTERNAL}.{self.name}"

    @property
    def token_source(self) -> str:
        """The exporting variant whose documents (layout, text settings) it is scored on."""
        return variants.get(self.variant).token_source

    def describe(self) -> dict[str, Any]:
        """Its identity in the report: a run of the ``external`` group, no seed of ours."""
        return {"run": self.namespace, "variant": self.variant, "preset": EXTERNAL,
                "seed": 0, "context": None, "external": self.name, "source": self.source}


@dataclass(frozen=True)
class Experiment:
    """The declared runs, in a stable order (registry, then preset, context and seed), and
    the imported models scored beside them."""

    runs: tuple[RunSpec, ...]
    externals: tuple[ExternalSpec, ...] = ()

    @property
    def variants(self) -> list[str]:
        """Registered variants that have runs, in registry order."""
        present = {run.variant for run in self.runs}
        return [name for name in variants.NAMES if name in present]

    @property
    def token_sources(self) -> list[str]:
        """Variants whose documents must be exported for these runs."""
        return variants.token_sources(self.variants)

    def runs_of(self, variant: str) -> list[RunSpec]:
        return [run for run in self.runs if run.variant == variant]

    def run(self, namespace: str) -> RunSpec:
        for run in self.runs:
            if run.namespace == namespace:
                return run
        raise SettingError(f"no run {namespace!r} in the experiment; runs: "
                         f"{', '.join(r.namespace for r in self.runs)}")


# ------------------------------------------------------------------- the declaration


def declared(parameters: Mapping[str, Any]) -> Experiment:
    """The runs ``parameters`` declare; ValueError naming the key that is wrong."""
    for key in REQUIRED_KEYS:
        if not isinstance(parameters.get(key), Mapping):
            raise SettingError(f"parameters lack the {key!r} mapping "
                               "(conf/base/parameters_runs.yml)")
    presets = parameters[PRESETS]
    runs = {run for grid in grid_runs(parameters).values() for run in grid}
    order = {name: i for i, name in enumerate(variants.NAMES)}
    preset_order = {name: i for i, name in enumerate(presets)}
    ranked = sorted(runs, key=lambda r: (order[r.variant], preset_order[r.preset],
                                          r.context or 0, r.seed))
    _check_init_runs(ranked)
    experiment = Experiment(tuple(ranked))
    externals = _externals(parameters.get(EXTERNAL), experiment)
    return Experiment(experiment.runs, externals)


def grid_runs(parameters: Mapping[str, Any]) -> dict[str, list[RunSpec]]:
    """The runs each named grid of ``experiment`` declares (a run may start from a model
    that another grid declares)."""
    blocks = parameters[EXPERIMENT]
    if not blocks:
        raise SettingError("experiment declares no runs; give at least one grid")
    return {name: _grid(f"experiment.{name}", block, parameters[PRESETS])
            for name, block in blocks.items()}


def _check_init_runs(runs: list[RunSpec]) -> None:
    present = set(runs)
    for run in runs:
        init = run.init_run
        if init is not None and init not in present:
            raise SettingError(
                f"run {run.namespace} starts from the model of run {init.namespace}, which "
                f"the experiment does not hold; add {init.variant} to the grid that declares "
                f"{run.variant} (same presets, seeds and contexts)"
            )


def _externals(block: Any, experiment: Experiment) -> tuple[ExternalSpec, ...]:
    """The imported models declared under ``external`` (none when it is absent or empty)."""
    if block is None:
        return ()
    if not isinstance(block, Mapping):
        raise SettingError(f"{EXTERNAL} must be a mapping of name: {{source, tokenizer, "
                           f"variant}}, got {block!r}")
    if block and any(run.preset == EXTERNAL for run in experiment.runs):
        raise SettingError(f"preset name {EXTERNAL!r} is taken by the imported models in the "
                           "report; rename the preset")
    found: list[ExternalSpec] = []
    for name, entry in block.items():
        where = f"{EXTERNAL}.{name}"
        if not isinstance(name, str) or not _NAME.match(name):
            raise SettingError(f"{where}: a name is lower-case letters, digits and _, starting "
                               "with a letter")
        if not isinstance(entry, Mapping):
            raise SettingError(f"{where} must be a mapping with keys {', '.join(EXTERNAL_KEYS)}")
        check_keys(where, entry, EXTERNAL_KEYS)
        for key in EXTERNAL_KEYS:
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise SettingError(f"{where}.{key} must be given, as a string "
                                   f"(got {entry.get(key)!r})")
        try:
            variants.get(entry["variant"])
        except ValueError as err:
            raise SettingError(f"{where}.variant: {err}") from None
        spec = ExternalSpec(name, entry["source"], entry["tokenizer"], entry["variant"])
        if spec.token_source not in experiment.token_sources:
            raise SettingError(
                f"{where}: variant {spec.variant} reads {spec.token_source}'s documents, which "
                f"no run of the experiment trains on; external models are scored on the same "
                f"stories as the runs, so add a {spec.token_source} run or state another variant"
            )
        twin = next((other for other in found if other.variant == spec.variant), None)
        if twin is not None:
            raise SettingError(
                f"{where} and {twin.namespace} both state variant {spec.variant}; the report "
                "lists imported models by variant (one each), so declare one of them at a time"
            )
        found.append(spec)
    by_variant = {spec.variant: spec for spec in found}
    for spec in found:
        own = variants.get(spec.variant)
        partner = by_variant.get(own.compares_with) if own.delta == "token_order" else None
        if partner is not None and partner.tokenizer != spec.tokenizer:
            raise SettingError(
                f"{spec.namespace} ({spec.variant}) and {partner.namespace} "
                f"({partner.variant}) are compared in token order, which needs the very same "
                "tokens: give them one tokenizer file"
            )
    return tuple(found)


def _grid(where: str, block: Any, presets: Mapping[str, Any]) -> list[RunSpec]:
    if not isinstance(block, Mapping):
        raise SettingError(f"{where} must be a mapping with keys {', '.join(GRID_KEYS)}")
    check_keys(where, block, GRID_KEYS)
    for key in ("variants", "presets", "seeds"):
        if key not in block:
            raise SettingError(f"{where} lacks {key!r}")
    names = _variant_names(where, block["variants"])
    chosen = _list(f"{where}.presets", block["presets"], str)
    for preset in chosen:
        if preset not in presets:
            raise SettingError(f"{where}.presets names {preset!r}, which is not in presets "
                             f"(known: {', '.join(presets)})")
    seeds = _list(f"{where}.seeds", block["seeds"], int)
    if any(seed < 0 for seed in seeds):
        raise SettingError(f"{where}.seeds must be integers >= 0, got {seeds}")
    contexts = block.get("contexts")
    contexts = [None] if contexts is None else _list(f"{where}.contexts", contexts, int)
    if any(c is not None and c < 2 for c in contexts):
        raise SettingError(f"{where}.contexts must be integers >= 2, got {contexts}")
    return [RunSpec(v, p, s, c) for v in names for p in chosen for c in contexts for s in seeds]


def _variant_names(where: str, value: Any) -> list[str]:
    if value == "all":
        return list(variants.ALL)
    names = _list(f"{where}.variants", value, str)
    for name in names:
        try:
            variants.get(name)
        except ValueError as err:
            raise SettingError(f"{where}.variants: {err}") from None
    return names


def _list(where: str, value: Any, kind: type) -> list[Any]:
    if not isinstance(value, list | tuple) or not value:
        raise SettingError(f"{where} must be a non-empty list, got {value!r}")
    bad = [v for v in value if not isinstance(v, kind) or isinstance(v, bool)]
    if bad:
        raise SettingError(f"{where} must hold {kind.__name__}s, got {bad}")
    if len(set(value)) != len(value):
        raise SettingError(f"{where} lists a value twice: {value}")
    return list(value)


# --------------------------------------------------------------------------- merging


def _merged(*layers: Any) -> dict[str, Any]:
    """Deep merge of mappings, later layers winning; lists and scalars are replaced."""
    result: dict[str, Any] = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
                result[key] = _merged(result[key], value)
            else:
                result[key] = copy.deepcopy(value)
    return result


def _section(source: Mapping[str, Any], where: str, section: str) -> dict[str, Any]:
    value = source.get(section) or {}
    if not isinstance(value, Mapping):
        raise SettingError(f"{where}.{section} must be a mapping, got {value!r}")
    for (sec, key), owner in AXIS_SETTINGS.items():
        if sec == section and key in value:
            raise SettingError(f"{where}.{section}.{key} is set by {owner}, not in parameters")
    return dict(value)


def _entry(block: Mapping[str, Any], where: str, name: str, sections: tuple[str, ...]
           ) -> Mapping[str, Any]:
    """``block[name]``: a variant's changes (none when it has no entry)."""
    own = block.get(name) or {}
    if not isinstance(own, Mapping):
        raise SettingError(f"{where}.{name} must be a mapping, got {own!r}")
    check_keys(f"{where}.{name}", own, sections)
    return own


def _run_layers(parameters: Mapping[str, Any], variant: str, preset: str
                ) -> tuple[Mapping[str, Any], Mapping[str, Any], Mapping[str, Any]]:
    defaults = parameters[RUN_DEFAULTS]
    check_keys(RUN_DEFAULTS, defaults, RUN_SECTIONS)
    settings = parameters[VARIANT_SETTINGS]
    check_keys(VARIANT_SETTINGS, settings, variants.NAMES)
    own = _entry(settings, VARIANT_SETTINGS, variant, RUN_SECTIONS)
    if FINETUNE in own and variants.get(variant).init_from is None:
        raise SettingError(f"{VARIANT_SETTINGS}.{variant}.{FINETUNE}: {variant} runs train "
                           "from scratch (no init_from in backstory/variants.py), so they have "
                           "no fine-tuning settings")
    preset_block = parameters[PRESETS].get(preset)
    if not isinstance(preset_block, Mapping):
        raise SettingError(f"presets.{preset} must be a mapping with model settings")
    check_keys(f"presets.{preset}", preset_block, RUN_SECTIONS)
    return defaults, preset_block, own


def run_sections(run: RunSpec) -> tuple[str, ...]:
    """The settings sections ``run`` has: ``finetune`` only when it starts from a model."""
    return RUN_SECTIONS if run.init_run is not None else tuple(
        s for s in RUN_SECTIONS if s != FINETUNE)


def run_settings(parameters: Mapping[str, Any], run: RunSpec) -> dict[str, dict[str, Any]]:
    """The merged, validated model, train and evaluate (and finetune) settings of ``run``."""
    defaults, preset, own = _run_layers(parameters, run.variant, run.preset)
    override = (parameters.get(run.variant, {}) or {}).get(run.size, {}) or {}
    override = override.get(f"s{run.seed}", {}) or {}
    merged = {}
    for section in run_sections(run):
        layers = [_section(defaults, RUN_DEFAULTS, section),
                  _section(preset, f"presets.{run.preset}", section),
                  _section(own, f"variant_settings.{run.variant}", section)]
        merged[section] = _merged(*layers, override.get(section))
    merged["train"].update(seed=run.seed, token_order=variants.get(run.variant).token_order)
    if run.context is not None:
        merged["model"]["max_seq_len"] = run.context
    _validate_run(run, merged)
    return merged


def text_settings(parameters: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The merged, validated text (export) settings of the exporting variant ``source``."""
    block = parameters[TEXT]
    exporting = [v for v in variants.NAMES if variants.get(v).tokens_from is None]
    check_keys(TEXT, block, (TEXT_DEFAULTS, *exporting))
    _entry(block, TEXT, source, tuple(TextConfig.__dataclass_fields__))
    override = (parameters.get(source, {}) or {}).get("text")
    merged = _merged(block.get(TEXT_DEFAULTS), block.get(source), override)
    try:
        TextConfig.from_params(merged)
    except ValueError as err:
        raise SettingError(f"text of {source}: {err}") from err
    return merged


def _validate_run(run: RunSpec, merged: dict[str, dict[str, Any]]) -> None:
    where = f"run {run.namespace}"
    try:
        if "vocab_size" in merged["model"]:
            raise SettingError("model.vocab_size comes from the tokenizer; do not set it")
        ModelConfig.from_dict({**merged["model"], "vocab_size": _PLACEHOLDER_VOCAB})
        TrainConfig.from_params(merged["train"])
        EvaluateConfig.from_params(merged["evaluate"])
        if FINETUNE in merged:
            FinetuneConfig.from_params(merged[FINETUNE])
    except (TypeError, ValueError) as err:
        raise SettingError(f"{where}: {err}") from err


def expand(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """``parameters`` plus each export's text block and each run's merged settings."""
    experiment = declared(parameters)
    _check_ingest_settings(parameters)
    expanded = dict(parameters)
    for name in variants.NAMES:
        extra = parameters.get(name)
        if extra is not None and name not in experiment.variants \
                and name not in experiment.token_sources:
            raise SettingError(f"parameters set {name!r}, which has no run in the experiment")
    for source in experiment.token_sources:
        expanded[source] = {"text": text_settings(parameters, source)}
    for run in experiment.runs:
        block = expanded.setdefault(run.variant, {})
        block.setdefault(run.size, {})[f"s{run.seed}"] = run_settings(parameters, run)
    for run in experiment.runs:
        init = run.init_run
        if init is None:
            continue
        ours = expanded[run.variant][run.size][f"s{run.seed}"]["model"]
        theirs = expanded[init.variant][init.size][f"s{init.seed}"]["model"]
        if ours != theirs:
            raise SettingError(
                f"run {run.namespace} fine-tunes the model of run {init.namespace}, so their "
                f"model settings must agree: {ours} vs {theirs}"
            )
    return expanded


def _check_ingest_settings(parameters: Mapping[str, Any]) -> None:
    """Refuse bad ingest settings when the parameters are read, not after work has run."""
    for section, check in (("corpus", lambda p: build(CorpusConfig, p, "corpus")),
                           ("ingest", lambda p: build(IngestConfig, p, "ingest")),
                           ("tokenizer", TokenizerConfig.from_params)):
        if section in parameters:
            check(parameters[section])


def tracked_keys(parameters: Mapping[str, Any], section: str, *, variant: str,
                 preset: str | None = None) -> list[str]:
    """The raw parameter keys a merged ``section`` of a run (or of an export, ``text``)
    is made from: the variant's own entry only where ``parameters`` has one."""
    if section == TEXT:
        keys, own = [f"{TEXT}.{TEXT_DEFAULTS}"], TEXT
    else:
        keys, own = [f"{RUN_DEFAULTS}.{section}"], VARIANT_SETTINGS
        if preset is not None:
            keys.append(f"{PRESETS}.{preset}")
    if variant in (parameters.get(own) or {}):
        keys.append(f"{own}.{variant}")
    return keys


def project_defaults(section: str, conf: Path | str = Path("conf/base")) -> dict[str, Any]:
    """``run_defaults.<section>`` as a project's conf/base declares it.

    For library use outside Kedro (benchmarks, tests, scripts): the settings classes
    have no defaults of their own, and this reads the one place that holds them.
    """
    return _declared_block(conf, RUN_DEFAULTS, section)


def project_preset(name: str, conf: Path | str = Path("conf/base")) -> dict[str, Any]:
    """``presets.<name>`` (e.g. its ``model`` shape) as a project's conf/base declares it."""
    return _declared_block(conf, "presets", name)


def _declared_block(conf: Path | str, *keys: str) -> dict[str, Any]:
    import yaml

    path = Path(conf) / "parameters_runs.yml"
    block = yaml.safe_load(path.read_text())
    try:
        for key in keys:
            block = block[key]
        return dict(block)
    except (KeyError, TypeError):
        raise SettingError(f"{path} has no {'.'.join(keys)}") from None
