"""The errors this project raises on purpose, under one root the CLI turns into one clear line.

Per-input problems become failure rows (`InputError`); configuration and setup problems stop a command before any
work (`ConfigError`, `StageSetupError`); a dataset or a store that cannot be read is a `DatasetError` / `StorageError`.
"""

from __future__ import annotations


class LayerflowError(Exception):
    """Base class of the errors this project raises on purpose (the CLI prints them as one line, exit 2)."""


class ConfigError(LayerflowError):
    """A configuration value is wrong; raised before any work starts and names the field."""


class StageSetupError(LayerflowError):
    """A stage could not be set up (its model did not load, no GPU, ...): the build stops at once, with one line."""


class InputError(LayerflowError):
    """One input cannot be used (unreadable, too short, too large, ...); becomes a failure row."""


class DatasetError(LayerflowError):
    """The dataset on disk is missing, unreadable or does not follow the contract."""


class StorageError(LayerflowError):
    """A URI could not be resolved, reached, read or written (the message names the URI and what to check)."""


def one_line(exc: BaseException) -> str:
    """A one-line message for a failure row: the first line of the message, never empty."""
    text = str(exc).strip().splitlines()
    return text[0][:500] if text else type(exc).__name__
