"""The package's error type, and the wording of errors that the command and the training loop share."""

from __future__ import annotations

from typing import Any


class Swinv2Error(ValueError):
    """A problem with what was given (a file, the data, a setting); the message names it and the fix.

    The subclasses say where it arose: `CheckpointError`, `DataError`, `TrainingError`, `ImageLoadError`.
    The `swinv2` command prints any of them as one line, without a traceback, and exits with status 2.
    A `ValueError`, so that code catching ValueError around loading keeps working.
    """


def nonfinite_outputs(model: Any, source: str) -> str:
    """Why `model` gives NaN or infinite outputs, and what to do, for the error that refuses to report them."""
    if any(not bool(p.isfinite().all()) for p in model.parameters()):
        return (f"{source} gives NaN or infinite outputs: its weights hold NaN or infinite values (a training run "
                "that diverged?); use an earlier checkpoint, or train again with a lower --lr")
    return (f"{source} gives NaN or infinite outputs for these images; check its image settings "
            "(preprocessor_config.json: a zero image_std divides by zero)")
