"""A small async storage-driver contract over flat keys, and its drivers."""

from entrepot.storage.driver import (
    FileInfo,
    StorageConflict,
    StorageDriver,
    StorageError,
    StorageNotFound,
    StorageWriter,
)

__all__ = [
    "FileInfo",
    "StorageConflict",
    "StorageDriver",
    "StorageError",
    "StorageNotFound",
    "StorageWriter",
]
