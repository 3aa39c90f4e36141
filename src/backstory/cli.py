"""Kedro's project commands for backstory: `kedro run` without tracebacks for user errors.

Kedro loads the ``cli`` group of ``<package>.cli`` and lets its commands override the
built-in ones; ``python -m backstory`` takes ``run`` from here too. ``run`` is Kedro's
own command (same options, same behaviour) except that a failure caused by a
``backstory.core.errors.UserError`` (a bad parameter, a damaged, stale or mismatched file, a
run folder another run holds) ends with that error's one-paragraph message on stderr and
exit code ``EXIT_USER_ERROR`` instead of a screenful of traceback. Set
``BACKSTORY_TRACEBACK=1`` to get the traceback anyway. Any other failure is a bug and
keeps its traceback.

The ``backstory`` console script is a different module, ``backstory.tools.cli``.
"""

from __future__ import annotations

import os
from typing import IO, Any

import click
from kedro.framework.cli.project import run as kedro_run

from backstory.core.errors import EXIT_USER_ERROR, user_error_in

TRACEBACK_ENV = "BACKSTORY_TRACEBACK"


class UserErrorExit(click.ClickException):
    """Ends the command with a user error's message; click prints it and exits."""

    exit_code = EXIT_USER_ERROR

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"kedro run: error: {self.message}", file=file, err=file is None)


def _run(**options: Any) -> Any:
    try:
        return kedro_run.callback(**options)
    except Exception as error:
        user_error = user_error_in(error)
        if user_error is None or os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise
        raise UserErrorExit(str(user_error)) from error


@click.group(name="backstory")
def cli() -> None:
    """Project commands of backstory (Kedro's, with user errors printed plainly)."""


run = click.Command(
    name="run",
    callback=_run,
    params=kedro_run.params,
    help=kedro_run.help,
    short_help=kedro_run.short_help,
    context_settings=kedro_run.context_settings,
)
cli.add_command(run)
