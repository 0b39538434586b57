"""Typed errors. Each one carries a single sentence naming the problem and the fix, and an exit code.

The CLI prints ``str(error)`` and exits with ``error.exit_code``; it never shows a traceback for these.
"""

from __future__ import annotations

import errno


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


class RunInterrupted(EdgeDistillError):
    """A run stopped before its end; its finished rounds are kept for ``--resume`` (exit code 130)."""

    exit_code = 130


class DiskError(EdgeDistillError):
    """A write the disk refused: full, over quota or the file-size limit, read-only, not permitted."""


_FULL = {errno.ENOSPC, errno.EDQUOT}
_DENIED = {errno.EROFS, errno.EACCES, errno.EPERM}


def disk_error(error: OSError) -> DiskError | None:
    """The DiskError for an OSError from a full or read-only disk; None for any other OSError (a bug).

    Example:
        >>> str(disk_error(OSError(errno.ENOSPC, "No space left on device")))[:44]
        'Could not write a file (No space left on dev'
    """
    what = str(error.filename) if error.filename else "a file"
    where = "point --out, EDGE_DISTILL_CACHE and TMPDIR at"
    if error.errno in _FULL:
        return DiskError(
            f"Could not write {what} ({error.strerror}); free disk space, or {where} a disk with room."
        )
    if error.errno == errno.EFBIG:  # over the process's file-size limit, or the filesystem's (FAT32: 4 GB)
        return DiskError(
            f"Could not write {what} ({error.strerror}); raise the file-size limit (`ulimit -f`), or {where} "
            "a disk that takes large files."
        )
    if error.errno in _DENIED:
        return DiskError(f"Could not write {what} ({error.strerror}); {where} folders you can write.")
    return None
