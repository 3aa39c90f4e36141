"""Build a throw-away copy of the Kedro project (conf + pyproject) for pipeline tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def deep_update(target: dict, changes: dict) -> dict:
    """Merge `changes` into `target` key by key (nested dicts merge, values replace)."""
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            deep_update(target[key], value)
        else:
            target[key] = value
    return target


def make_project(root: Path, params: dict[str, dict] | None = None) -> Path:
    """Copy pyproject.toml, .telemetry and conf/ into `root`, with parameter changes.

    `params` maps a parameter file name (e.g. "parameters_ingest.yml") to nested changes.
    """
    root.mkdir(parents=True, exist_ok=True)
    for name in ("pyproject.toml", ".telemetry"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    (root / "conf" / "local").mkdir()
    (root / "src").mkdir()  # Kedro checks that it exists; the package itself is installed
    for file_name, changes in (params or {}).items():
        path = root / "conf" / "base" / file_name
        data = yaml.safe_load(path.read_text())
        path.write_text(yaml.safe_dump(deep_update(data, changes), sort_keys=False))
    return root


def tiny_run_params(**train) -> dict:
    """Parameter changes (parameters_runs.yml) that make every run train in seconds on CPU."""
    return {
        "presets": {"small": {"model": {"dim": 32, "n_layers": 2, "n_heads": 2,
                                        "n_kv_heads": 1, "max_seq_len": 128}}},
        "run_defaults": {
            "train": {"batch_size": 4, "max_steps": 6, "warmup_steps": 2, "eval_interval": 3,
                      "eval_batches": 2, "log_interval": 2, "checkpoint_interval": 3, **train},
            "evaluate": {"batch_size": 8, "n_samples": 2, "max_new_tokens": 16,
                         "n_stories": 12, "curve_stories": 6},
        },
    }


def default_variants() -> tuple[str, ...]:
    """The variants of conf/base's default experiment (the registered controls, permuted
    and reversed_owntok, are opt-in: conf/controls)."""
    from backstory.experiment import declared

    data = yaml.safe_load((REPO / "conf/base/parameters_runs.yml").read_text())
    return tuple(declared(data).variants)


def load_defaults(section: str) -> dict:
    """``run_defaults.<section>`` of the repository's conf/base (the one source of defaults)."""
    from backstory.experiment import project_defaults

    return project_defaults(section, REPO / "conf/base")


def learning_run_params() -> dict:
    """Like ``tiny_run_params`` but long enough to learn: about 0.85 of the unigram bits
    per byte after 150 steps on the tiny corpus (still well under a minute per run)."""
    params = tiny_run_params(batch_size=16, max_steps=150, lr=0.006, min_lr=0.0006,
                             warmup_steps=10, eval_interval=50, log_interval=10,
                             checkpoint_interval=50)
    params["presets"]["small"]["model"].update(dim=64, n_heads=4, n_kv_heads=2)
    return params


TINY_INGEST = {
    "corpus": {"n_stories": 300, "shard_size": 100},
    "tokenizer": {"vocab_size": 512},
}


# The shared test material beside the repository (../shared): real TinyStories excerpts
# and reference programs. Tests that need it skip, saying where it was looked for.
SHARED = REPO.parent / "shared"
REAL_DATA = SHARED / "data" / "tinystories-real"


def real_excerpt(name: str):
    """A real TinyStories excerpt (JSON) from ../shared, or skip the calling module."""
    import json

    import pytest

    path = REAL_DATA / name
    if not path.is_file():
        pytest.skip(f"real TinyStories excerpts are not at {REAL_DATA} (../shared is absent)",
                    allow_module_level=True)
    return json.loads(path.read_text())


def model_config(**shape):
    """A ``ModelConfig`` of ``shape``, its other settings from conf/base's run_defaults.model."""
    from backstory.lm.model import ModelConfig

    return ModelConfig(**{**load_defaults("model"), **shape})


def trained_tokenizer(texts, **settings) -> bytes:
    """``train_tokenizer`` with conf/base's tokenizer settings but for ``settings``."""
    from backstory.data.tokenizer import train_tokenizer

    conf = yaml.safe_load((REPO / "conf/base/parameters_ingest.yml").read_text())["tokenizer"]
    return train_tokenizer(texts, **{**conf, **settings})


def text_defaults() -> dict:
    """conf/base's ``text.defaults``, as ``encode_documents`` and ``StoryDocuments`` take
    them (``workers`` is the export's, not theirs)."""
    data = yaml.safe_load((REPO / "conf/base/parameters_runs.yml").read_text())
    return {k: v for k, v in data["text"]["defaults"].items() if k != "workers"}


def encoded(records, tokenizer, **settings):
    """``encode_documents`` with conf/base's text settings but for ``settings``."""
    from backstory.data.documents import encode_documents

    return encode_documents(records, tokenizer, **{**text_defaults(), **settings})


def story_documents(stories, split, tokenizer, **settings):
    """``StoryDocuments`` with conf/base's text settings but for ``settings``."""
    from backstory.data.documents import StoryDocuments

    return StoryDocuments(stories, split, tokenizer, **{**text_defaults(), **settings})
