"""Fixtures shared by the in-process test suites."""

from tests.loopback import loopback

__all__ = ["loopback"]
