"""A small async storage-driver contract over flat keys, and its drivers.

The contract's classes (``driver``) import asyncio; they load on first use, so that a
process that only walks a disk (fswalk's children) starts without it.
"""

from typing import TYPE_CHECKING

from entrepot.storage.objects import (
    FileInfo,
    LeaseLost,
    StorageConflict,
    StorageError,
    StorageNotFound,
)

if TYPE_CHECKING:
    from entrepot.storage.driver import Lease, StorageDriver, StorageWriter

__all__ = [
    "FileInfo",
    "Lease",
    "LeaseLost",
    "StorageConflict",
    "StorageDriver",
    "StorageError",
    "StorageNotFound",
    "StorageWriter",
]

_FROM_DRIVER = frozenset({"Lease", "StorageDriver", "StorageWriter"})


def __getattr__(name: str) -> object:
    if name in _FROM_DRIVER:
        from entrepot.storage import driver

        return getattr(driver, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
