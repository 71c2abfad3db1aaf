"""Errors that become failure rows (per input) or one clear CLI line (configuration)."""

from __future__ import annotations


class LayerflowError(Exception):
    """Base class of the errors this project raises on purpose."""


class ConfigError(LayerflowError):
    """A configuration value is wrong; raised before any work starts and names the field."""


class InputError(LayerflowError):
    """One input cannot be used (unreadable, too short, too large, ...); becomes a failure row."""


def one_line(exc: BaseException) -> str:
    """A one-line message for a failure row: the first line of the message, never empty."""
    text = str(exc).strip().splitlines()
    return text[0][:500] if text else type(exc).__name__
