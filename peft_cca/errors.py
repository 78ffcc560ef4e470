"""The errors a user can act on: the CLI prints their message as one line instead of a traceback.

Raise :class:`UsageError` (exit code 2) for bad options, bad input files, and settings that contradict a
run folder; :class:`CCAError` (exit code 1) for failures the user can fix but did not cause by a typo.
Messages say what is wrong, where (file, line or key), and how to fix it.
"""

from __future__ import annotations


class CCAError(Exception):
    """A failure with a message fit for the user; the CLI prints it as one line and exits with 1."""

    exit_code = 1


class UsageError(CCAError, ValueError):
    """Bad input from the user (an option, a file, a run folder); the CLI exits with 2."""

    exit_code = 2
