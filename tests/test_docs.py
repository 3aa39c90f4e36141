"""Every command the README and docs/ show still names things that exist.

The commands in ```bash blocks are read as a user would type them; each `kedro run`, `dvc
repro`, `backstory`, `python -m` and `python benchmarks/...` is checked against the project:
its environment, pipelines, namespaces and parameters, its DVC stage, its CLI arguments, its
module or script. (Running them all would train models; tests elsewhere run the main ones.)
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from functools import cache
from pathlib import Path

import pytest
import yaml

from backstory import experiment
from backstory.config_loader import ProjectConfigLoader
from backstory.pipeline_registry import build_pipelines
from backstory.settings import CONFIG_LOADER_ARGS
from backstory.tools import cli

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"```bash\n(.*?)```", re.S)


def documented_commands() -> list[tuple[str, str]]:
    """(file, command) for every simple command of every bash block, continuations joined."""
    found = []
    for path in DOCS:
        for block in BLOCK.findall(path.read_text(encoding="utf-8")):
            for line in block.replace("\\\n", " ").splitlines():
                if "$(" in line or "<" in line:  # command substitution, or a placeholder to fill in
                    continue
                for command in re.split(r"&&|\|\||;|\|", line):
                    words = shlex.split(command, comments=True)
                    if words:
                        found.append((path.name, shlex.join(words)))
    return found


COMMANDS = documented_commands()


def commands_of(*prefix: str) -> list[tuple[str, list[str]]]:
    picked = [(f, shlex.split(c)) for f, c in COMMANDS]
    return [(f, w) for f, w in picked if tuple(w[:len(prefix)]) == prefix]


@cache
def parameters(env: str) -> dict:
    conf = REPO / "conf"
    assert (conf / env).is_dir(), f"no conf/{env} for --env {env}"
    return ProjectConfigLoader(conf_source=str(conf), env=env, **CONFIG_LOADER_ARGS)["parameters"]


@cache
def pipeline_names(env: str) -> frozenset[str]:
    pipelines = build_pipelines(experiment.declared(parameters(env)))
    namespaces = {n.namespace for p in pipelines.values() for n in p.nodes if n.namespace}
    return frozenset(pipelines) | frozenset(namespaces)


def declared_in(doc: str, external: str) -> bool:
    """Whether page ``doc`` declares the imported model ``external`` (a YAML ``name:``)."""
    page = next(p for p in DOCS if p.name == doc).read_text(encoding="utf-8")
    return re.search(rf"^\s*{re.escape(external)}:", page, re.M) is not None


def option(words: list[str], *names: str) -> list[str]:
    """The values given to any of ``names`` (``--x v`` or ``--x=v``)."""
    values = []
    for i, word in enumerate(words):
        for name in names:
            if word == name and i + 1 < len(words):
                values.append(words[i + 1])
            elif word.startswith(name + "="):
                values.append(word.split("=", 1)[1])
    return values


def test_the_docs_show_the_commands_this_test_reads():
    assert len(commands_of("kedro", "run")) >= 5
    assert commands_of("backstory", "generate") and commands_of("dvc", "repro")


@pytest.mark.parametrize(("where", "words"), commands_of("kedro", "run"),
                         ids=lambda x: " ".join(x) if isinstance(x, list) else x)
def test_documented_kedro_runs_name_existing_envs_pipelines_and_parameters(where, words):
    env = (option(words, "--env", "-e") or ["base"])[0]
    names = pipeline_names(env)
    for value in option(words, "--pipelines", "--pipeline", "-p", "--namespaces", "--namespace"):
        for name in value.split(","):
            if name.startswith("external.") and declared_in(where, name.split(".", 1)[1]):
                continue  # an imported model the same page declares first
            assert name in names, f"{where}: `{shlex.join(words)}`: no {name!r} in --env {env}"
    for value in option(words, "--params"):
        for pair in value.split(","):
            key = pair.split("=", 1)[0]
            node = parameters(env)
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, (
                    f"{where}: `{shlex.join(words)}` sets {key!r}, which conf/{env} lacks")
                node = node[part]


@pytest.mark.parametrize(("where", "words"), commands_of("backstory"),
                         ids=lambda x: " ".join(x) if isinstance(x, list) else x)
def test_documented_backstory_commands_parse(where, words):
    try:
        cli._parser().parse_args(words[1:])
    except SystemExit as stop:
        pytest.fail(f"{where}: `{shlex.join(words)}` does not parse (exit {stop.code})")


def test_documented_dvc_stages_exist():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    seeds = {grid: block["seeds"] for grid, block in parameters("base")["experiment"].items()}
    for where, words in commands_of("dvc", "repro"):
        for target in (w for w in words[2:] if not w.startswith("-")):
            stage, _, item = target.partition("@")
            assert stage in stages, f"{where}: `{shlex.join(words)}`: no stage {stage!r}"
            if item:
                grid = stage.rsplit("-", 1)[1]
                assert int(item) in seeds[grid], f"{where}: {target}: no seed {item} in {grid}"


def test_documented_scripts_and_modules_exist():
    for where, words in commands_of("python"):
        if words[1] == "-m" and words[2] != "pytest":
            assert importlib.util.find_spec(words[2]), f"{where}: no module {words[2]}"
        elif words[1].endswith(".py"):
            assert (REPO / words[1]).is_file(), f"{where}: no script {words[1]}"
