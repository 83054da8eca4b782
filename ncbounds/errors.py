"""Error types: every error carries one sentence that names the fix, and an exit code.

Exit codes: 1 = failure of an input or computation, 2 = usage error, 3 = a batch finished with some
checkpoints failed, 130 = interrupted (Ctrl-C).
"""

from __future__ import annotations


class NCBoundsError(Exception):
    """A failure the user can fix; ``str(err)`` is the one-sentence message shown by the CLI."""

    exit_code = 1


class UsageError(NCBoundsError):
    """The command line or a spec string is malformed (unknown name, bad option value)."""

    exit_code = 2


class CheckpointError(NCBoundsError):
    """The checkpoint cannot be read or does not match the architecture."""


class DataError(NCBoundsError):
    """The data spec points to missing or malformed data, or labels are invalid."""


class Interrupted(NCBoundsError):
    """The user interrupted the work (Ctrl-C); the message says what was kept and how to continue."""

    exit_code = 130


class StatisticsError(NCBoundsError):
    """The collected statistics cannot support a requested quantity (absent class, NaN features)."""
