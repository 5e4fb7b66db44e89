"""Typed errors: the CLI turns any of these into a one-line message instead of a traceback."""

import warnings


class MiceError(Exception):
    """Base class for every error the toolkit raises on bad input."""


class MaskError(MiceError, ValueError):
    """An interaction mask (preset, rule or JSON file) is invalid; the message names the rule at fault."""


class DataError(MiceError, ValueError):
    """A dataset, run or qrels file is malformed; the message names file and line."""


class ModelError(MiceError, ValueError):
    """A model cannot be loaded or does not fit what was asked of it."""


class IndexError_(MiceError, ValueError):
    """A document-state index is corrupt or was built by another model."""


class LockError(MiceError, RuntimeError):
    """Another live process holds the lock of the output this job would write."""


class IdentityError(DataError):
    """A job would resume from work done under different inputs; the message says what differs."""


class DataWarning(UserWarning):
    """Input was usable but something was skipped or looked wrong; the message says what and how many."""


def warn_data(message: str, stacklevel: int = 3) -> None:
    """Warn about usable input that looked wrong (a `DataWarning`)."""
    warnings.warn(message, DataWarning, stacklevel=stacklevel)
