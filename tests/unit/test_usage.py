"""Storage use is measured in the background, by one worker at a time, and recorded for all
to read: the figure is every blob's bytes, once each."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path

from entrepot.registry import layout, usage
from entrepot.storage.filesystem import FilesystemDriver

DEADLINE = 30.0


async def _put_blob(driver: FilesystemDriver, data: bytes) -> None:
    encoded = hashlib.sha256(data).hexdigest()
    await driver.put_content(f"{layout.BLOBS}/sha256/{encoded[:2]}/{encoded}/data", data)


async def test_a_measurement_counts_each_blob_once_and_nothing_else(tmp_path: Path) -> None:
    driver = FilesystemDriver(tmp_path)
    for size in (10, 2000, 30000):
        await _put_blob(driver, b"x" * size)
    # Links, repositories and uploads are not blobs.
    await driver.put_content(f"{layout.ROOT}/repositories/app/_layers/sha256/ab/link", b"sha")
    await driver.put_content(f"{layout.ROOT}/repositories/app/_uploads/u1/data", b"y" * 999)

    assert await usage.read_usage(driver) is None
    recorded = await usage.record_usage(driver)
    assert (recorded.blobs, recorded.bytes) == (3, 32010)
    assert await usage.read_usage(driver) == recorded
    assert json.loads((tmp_path / usage.USAGE_KEY).read_bytes())["bytes"] == 32010


async def test_the_meter_records_periodically_and_skips_a_fresh_figure(tmp_path: Path) -> None:
    driver = FilesystemDriver(tmp_path)
    await _put_blob(driver, b"a" * 100)
    meter = asyncio.create_task(usage.run_usage_meter(driver, interval=0.2, first_delay=0))
    try:
        deadline = time.monotonic() + DEADLINE
        while (first := await usage.read_usage(driver)) is None:
            assert time.monotonic() < deadline, "no figure recorded"
            await asyncio.sleep(0.02)
        assert first.bytes == 100
        # A new blob shows in a later measurement, without anyone asking.
        await _put_blob(driver, b"b" * 50)
        while (latest := await usage.read_usage(driver)) is None or latest.bytes != 150:
            assert time.monotonic() < deadline, f"not measured again: {latest}"
            await asyncio.sleep(0.02)
        assert latest.measured_at > first.measured_at
    finally:
        meter.cancel()


async def test_another_worker_with_a_fresh_figure_does_not_walk_again(tmp_path: Path) -> None:
    driver = FilesystemDriver(tmp_path)
    await _put_blob(driver, b"a" * 100)
    recorded = await usage.record_usage(driver)
    await _put_blob(driver, b"b" * 50)
    # A second worker starting now finds a figure younger than its interval: it keeps it.
    meter = asyncio.create_task(usage.run_usage_meter(driver, interval=3600, first_delay=0))
    await asyncio.sleep(0.3)
    meter.cancel()
    assert await usage.read_usage(driver) == recorded


async def test_a_held_lease_means_another_worker_is_measuring(tmp_path: Path) -> None:
    driver = FilesystemDriver(tmp_path)
    await _put_blob(driver, b"a" * 100)
    held = await driver.try_lease(usage.LOCK_KEY)
    assert held is not None
    meter = asyncio.create_task(usage.run_usage_meter(driver, interval=0.05, first_delay=0))
    try:
        await asyncio.sleep(0.3)
        assert await usage.read_usage(driver) is None  # the holder measures, not this one
        await held.release()
        for _ in range(100):
            if await usage.read_usage(driver) is not None:
                break
            await asyncio.sleep(0.05)
        assert await usage.read_usage(driver) is not None
    finally:
        meter.cancel()
