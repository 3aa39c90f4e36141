"""Kedro project settings for backstory."""

from kedro.config import OmegaConfigLoader

from backstory.hooks import ReportLocationHooks

HOOKS = (ReportLocationHooks(),)

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # Environments such as conf/tinystories override single keys, not whole blocks.
    "merge_strategy": {"parameters": "soft"},
}
