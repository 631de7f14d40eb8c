"""The user errors of the command line, in one module with no heavy imports (no torch, no Optuna), so that any
command (``adamlab tasks``, ``adamlab report``, ``adamlab speed``) can raise and catch them cheaply.

Both become one line on stderr and exit status 2 in :mod:`adamlab.cli`.
"""
from __future__ import annotations

__all__ = ["LabError", "DataError"]


class LabError(Exception):
    """A user error: the CLI prints the message on one line and exits with status 2."""


class DataError(ValueError):
    """A data file is missing, unreadable or cannot make its task (the CLI turns this into a one-line error)."""
