"""Fixtures for the storage contract suite: ``driver`` runs each test once per driver."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from entrepot.storage import StorageDriver
from entrepot.storage.filesystem import FilesystemDriver
from entrepot.storage.s3 import S3Driver
from tests.cephs3 import driver_settings


def s3_driver(request: pytest.FixtureRequest) -> S3Driver:
    """A driver on the session's radosgw, under a rootdirectory of its own in a shared
    bucket (as registry:2 deployments often are), with small parts to exercise them."""
    server = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_shared_bucket")
    settings = driver_settings(server, bucket, f"/{uuid.uuid4().hex}/registry/")
    return S3Driver(settings)


# One entry per driver implementation. A factory gets the test's request and a fresh, empty
# temp dir and returns a driver over empty storage.
DRIVER_FACTORIES: dict[str, Callable[[pytest.FixtureRequest, Path], StorageDriver]] = {
    "filesystem": lambda _, tmp: FilesystemDriver(tmp / "root"),
    "s3": lambda request, _: s3_driver(request),
}


@pytest.fixture(params=sorted(DRIVER_FACTORIES))
async def driver(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StorageDriver]:
    d = DRIVER_FACTORIES[request.param](request, tmp_path)
    try:
        yield d
    finally:
        await d.close()
