"""Fixtures for the storage contract suite: ``driver`` runs each test once per driver."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from entrepot.storage import StorageDriver
from entrepot.storage.filesystem import FilesystemDriver
from entrepot.storage.redisleases import RedisLeases
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


@contextlib.asynccontextmanager
async def two_drivers_on_one_store(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str, *, own_machines: bool
) -> AsyncIterator[tuple[StorageDriver, StorageDriver]]:
    """Two drivers on one store, as two processes or replicas have: ``kind`` is
    "filesystem", "s3" or "s3-redis" (leases in Redis). With ``own_machines``, S3 drivers
    stand for replicas on machines of their own (each its lock files and mirrors), else
    for two processes of one machine."""
    drivers: list[StorageDriver]
    if kind == "filesystem":
        drivers = [FilesystemDriver(tmp_path / "root") for _ in range(2)]
    else:
        server = request.getfixturevalue("s3_server")
        bucket = request.getfixturevalue("s3_shared_bucket")
        settings = driver_settings(server, bucket, f"/{uuid.uuid4().hex}/registry/")
        redis = request.getfixturevalue("redis_server").settings() if kind == "s3-redis" else None
        prefix = f"entrepot:test:{uuid.uuid4().hex}:"
        machines = [tmp_path / f"machine-{n}" for n in range(2)] if own_machines else [None] * 2
        drivers = [
            S3Driver(
                settings,
                RedisLeases(redis, prefix) if redis else None,
                str(machine / "mirrors") if machine else None,
                str(machine / "locks") if machine else None,
            )
            for machine in machines
        ]
    try:
        yield drivers[0], drivers[1]
    finally:
        for driver in drivers:
            await driver.close()
