"""Errors the user can fix, told apart from bugs.

A ``UserError`` is a bad setting, a damaged, stale or mismatched file, or a folder another
run holds. Its message is the whole story (what is wrong, where, what to do), so the
command lines print it as one paragraph and exit with ``EXIT_USER_ERROR`` instead of a
traceback: ``kedro run`` through ``backstory.cli``, ``backstory`` through
``backstory.tools.cli``. Anything else is a bug and keeps its traceback.

``UserError`` is a marker: a concrete error also derives from the built-in exception of
its kind (``SettingError`` is a ``ValueError``), so code that catches ``ValueError``
keeps working.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2  # argparse's code for bad usage; both command lines use it


class UserError(Exception):
    """A problem the user can fix; its message names the setting or file and the fix."""


class SettingError(UserError, ValueError):
    """A parameter has a value the code refuses."""


class InputError(UserError, ValueError):
    """Input files are missing, damaged, or do not fit together."""


def user_error_in(error: BaseException) -> UserError | None:
    """The ``UserError`` that is ``error`` or explicitly caused it, or None.

    Follows ``raise ... from`` links only (Kedro wraps a failed dataset load in a
    ``DatasetError`` that way); an exception raised while *handling* a user error is a
    different failure and is not mistaken for it.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, UserError):
            return current
        seen.add(id(current))
        current = current.__cause__
    return None
