"""Typed errors. Each one carries a single sentence naming the problem and the fix, and an exit code.

The CLI prints ``str(error)`` and exits with ``error.exit_code``; it never shows a traceback for these.
"""

from __future__ import annotations


class EdgeDistillError(Exception):
    """Base class: bad input or an unmet requirement the user can fix (exit code 2)."""

    exit_code = 2


class ProfileError(EdgeDistillError):
    """An unknown profile, or a profile file that does not follow the schema."""


class DataError(EdgeDistillError):
    """A data file that is missing, empty, or lacks the named columns."""


class TeacherError(EdgeDistillError):
    """A teacher that does not exist or cannot be loaded safely."""


class ExportError(EdgeDistillError):
    """A model that a target cannot export (names the op and the target)."""


class ParityError(EdgeDistillError):
    """An exported artifact that does not compute what the PyTorch student computes."""


class DeviceError(EdgeDistillError):
    """A device that cannot be reached or cannot run the artifact."""


class NothingFitsError(EdgeDistillError):
    """No candidate student meets the budget (exit code 3)."""

    exit_code = 3
