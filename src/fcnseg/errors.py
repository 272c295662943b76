"""The base of fcnseg's own errors, so that callers can tell bad input from a bug with one ``except``."""

from __future__ import annotations

__all__ = ["ConfigError", "FcnsegError", "MissingExtraError"]


class FcnsegError(ValueError):
    """Input that fcnseg refuses (a file, a setting, a missing optional package); the message says why."""


class ConfigError(FcnsegError):
    """A setting that is unknown, out of range or of the wrong type (in a recipe, a flag or a call)."""


class MissingExtraError(FcnsegError):
    """A feature whose optional dependencies are not installed; the message names the extra to install."""
