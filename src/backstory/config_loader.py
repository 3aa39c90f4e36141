"""Kedro glue: the project's config loader, which turns the experiment into parameters.

It is Kedro's OmegaConfigLoader (environments, soft merge, ``--params``) with one step
added when parameters are read: every section is validated (an unknown key anywhere is
an error naming it and the known keys), and each run of the experiment gets its merged
settings under its namespace (``backstory.experiment.expand``). A bad parameter
therefore stops ``kedro run`` before any work, with a message that names the setting.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from kedro.config import OmegaConfigLoader

from backstory import experiment, params, variants
from backstory.core.errors import SettingError
from backstory.data.corpus.sources import CorpusConfig
from backstory.data.corpus.splits import SplitRule
from backstory.data.corpus.story_table import IngestConfig
from backstory.data.tokenizer import TokenizerConfig
from backstory.evaluation.compare import CompareConfig

# Top-level parameter sections besides the experiment declaration, and their typed checks.
SECTION_CHECKS: dict[str, Callable[[Any], object]] = {
    "corpus": partial(params.build, CorpusConfig, section="corpus"),
    "ingest": partial(params.build, IngestConfig, section="ingest"),
    "split": SplitRule.from_params,
    "tokenizer": TokenizerConfig.from_params,
    "compare": CompareConfig.from_params,
}


def project_parameters(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """Validate every section of ``parameters`` and expand the experiment's runs."""
    known = (*experiment.DECLARATION_KEYS, *SECTION_CHECKS, *variants.NAMES)
    params.check_keys("parameters", parameters, known)
    for section, check in SECTION_CHECKS.items():
        if section not in parameters:
            continue
        try:
            check(parameters[section])
        except (TypeError, ValueError) as err:
            if isinstance(err, SettingError):
                raise
            raise SettingError(f"{section}: {err}") from err
    return experiment.expand(parameters)


class ProjectConfigLoader(OmegaConfigLoader):
    """OmegaConfigLoader whose ``parameters`` are validated and expanded per run."""

    def __getitem__(self, key: str) -> dict[str, Any]:
        config = super().__getitem__(key)
        if key == "parameters":
            return project_parameters(config)
        return config
