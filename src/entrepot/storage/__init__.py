"""A small async storage-driver contract over flat keys, and its drivers."""

from entrepot.storage.driver import (
    FileInfo,
    Lease,
    LeaseLost,
    StorageConflict,
    StorageDriver,
    StorageError,
    StorageNotFound,
    StorageWriter,
)

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
