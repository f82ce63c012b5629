"""The configuration error type."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(Exception):
    """The configuration cannot be used; the message names the offending key."""
