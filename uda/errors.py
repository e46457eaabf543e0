"""User-facing errors: each carries one sentence that says what went wrong and what to do.

The entry point (:func:`uda.train.main`) prints the message of any :class:`UserError` and exits with a
non-zero status instead of showing a traceback.
"""


class UserError(Exception):
    """An error the user can fix (bad config, missing data, diverged run); its message is shown as is."""


class ConfigError(UserError, ValueError):
    """A configuration value is invalid; raised before training starts (also a ValueError, so plain
    PyTorch users of a harmonizer or the engine can catch it as one)."""


class DataError(UserError):
    """Data are missing, inconsistent or unreadable."""


class DivergenceError(UserError):
    """Training produced a non-finite loss; results of the run are not written."""
