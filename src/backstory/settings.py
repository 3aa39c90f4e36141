"""Kedro project settings for backstory."""

import warnings

from backstory.config_loader import ProjectConfigLoader
from backstory.hooks import (
    ArtifactLockHooks,
    ExperimentHooks,
    MachineCheckHooks,
    ParallelGridHooks,
    ReportLocationHooks,
    StaleReportHooks,
)

HOOKS = (ExperimentHooks(), MachineCheckHooks(), ParallelGridHooks(), ArtifactLockHooks(),
         StaleReportHooks(), ReportLocationHooks())

# OmegaConfigLoader, with the experiment's runs expanded into the parameters.
CONFIG_LOADER_CLASS = ProjectConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # Environments such as conf/tinystories override single keys, not whole blocks.
    "merge_strategy": {"parameters": "soft"},
}

# Runs read datasets of other namespaces on purpose (backward reads forward.train_tokens,
# compare reads every run's model): Kedro's advice against dotted names does not apply.
warnings.filterwarnings("ignore", message="One or more dataset names contain '.'",
                        category=UserWarning)
