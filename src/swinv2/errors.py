"""The package's error type."""

from __future__ import annotations


class Swinv2Error(ValueError):
    """A problem with what was given (a file, the data, a setting); the message names it and the fix.

    The subclasses say where it arose: `CheckpointError`, `DataError`, `TrainingError`, `ImageLoadError`.
    The `swinv2` command prints any of them as one line, without a traceback, and exits with status 2.
    A `ValueError`, so that code catching ValueError around loading keeps working.
    """
