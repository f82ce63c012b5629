"""Fixtures for the storage contract suite: ``driver`` runs each test once per driver."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from entrepot.storage import StorageDriver
from entrepot.storage.filesystem import FilesystemDriver

# One entry per driver implementation; adding one (e.g. S3 against a local MinIO) is one
# line here. A factory gets a fresh, empty temp dir and returns a driver over empty storage.
DRIVER_FACTORIES: dict[str, Callable[[Path], StorageDriver]] = {
    "filesystem": lambda tmp: FilesystemDriver(tmp / "root"),
}


@pytest.fixture(params=sorted(DRIVER_FACTORIES))
async def driver(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StorageDriver]:
    d = DRIVER_FACTORIES[request.param](tmp_path)
    try:
        yield d
    finally:
        await d.close()
