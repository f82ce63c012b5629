"""The storage health check counts a probe that does not finish in time as a failure
(storage that accepted the connection but does not answer) and recovers once the
storage answers again."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from entrepot.registry.health import StorageHealthCheck
from entrepot.storage import FileInfo
from entrepot.storage.filesystem import FilesystemDriver


class HungDriver(FilesystemDriver):
    """A filesystem driver whose writes and stats wait until ``answering`` is set."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.answering = asyncio.Event()

    async def put_content(self, key: str, data: bytes) -> None:
        await self.answering.wait()
        await super().put_content(key, data)

    async def stat(self, key: str) -> FileInfo:
        await self.answering.wait()
        return await super().stat(key)


@pytest.mark.parametrize("writable", [True, False])
async def test_a_probe_that_does_not_finish_in_time_is_a_failure_until_storage_answers(
    tmp_path: Path, writable: bool, caplog: pytest.LogCaptureFixture
) -> None:
    driver = HungDriver(str(tmp_path))
    check = StorageHealthCheck(driver, 5.0, 1, writable=writable, timeout=0.2)
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, "entrepot.health"):
        await asyncio.wait_for(check.probe(), 5)
    assert time.monotonic() - start < 2
    assert not check.healthy
    assert check.last_error is not None
    assert (
        str(tmp_path) in check.last_error
        and "did not answer the probe in 0.2 s" in check.last_error
    )
    assert "storage health check failed (1 in a row)" in caplog.text

    driver.answering.set()
    await check.probe()
    assert check.healthy and check.last_error is None
