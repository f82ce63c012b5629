"""Storage use: how many blobs the store holds and their bytes, measured in the background
every ``interval`` by one worker and recorded in ``entrepot/usage.json`` (through the
driver, outside registry:2's tree), so that every worker, and the web UI on every page view,
reads one small object instead of walking the store.

The figure counts every blob once (pushed and cached alike, as registry:2's layout shares
them); it is as old as its ``measured_at``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import asdict, dataclass

from entrepot.registry import layout
from entrepot.registry.storecalls import Limited, each
from entrepot.storage import StorageDriver, StorageError, StorageNotFound

log = logging.getLogger("entrepot.registry.usage")

USAGE_KEY = "entrepot/usage.json"
LOCK_KEY = "entrepot/usage.lock"
INTERVAL = 600.0  # between measurements
FIRST_DELAY = 30.0  # after start, so a measurement does not compete with start-up
CONCURRENCY = 32  # storage calls in flight while measuring


@dataclass(frozen=True)
class StorageUsage:
    blobs: int
    bytes: int
    measured_at: float  # seconds since the epoch
    seconds: float  # how long the measurement took


async def measure(driver: StorageDriver) -> StorageUsage:
    """Walk the blob store once and add up the blobs' sizes."""
    started, clock = time.time(), time.monotonic()
    store = Limited(driver, CONCURRENCY)
    blobs = size = 0
    async for batch in driver.walk(layout.BLOBS):
        data = [f"{layout.BLOBS}/{key}" for key in batch if key.endswith("/data")]
        for info in await each(data, store.stat):
            if info is not None:  # deleted meanwhile (gc, eviction)
                blobs += 1
                size += info.size
    return StorageUsage(blobs, size, started, time.monotonic() - clock)


async def read_usage(driver: StorageDriver) -> StorageUsage | None:
    """The last recorded measurement, None before the first (or if it cannot be read)."""
    try:
        raw = json.loads(await driver.get_content(USAGE_KEY))
        return StorageUsage(
            int(raw["blobs"]), int(raw["bytes"]), float(raw["measured_at"]), float(raw["seconds"])
        )
    except StorageNotFound:
        return None
    except (StorageError, ValueError, KeyError, TypeError) as exc:
        log.warning("cannot read the storage use figure %s: %s", USAGE_KEY, exc)
        return None


async def record_usage(driver: StorageDriver) -> StorageUsage:
    """Measure and record it for every worker to read."""
    usage = await measure(driver)
    await driver.put_content(USAGE_KEY, json.dumps(asdict(usage)).encode())
    log.info(
        "storage use: %d blobs, %d bytes (measured in %.1fs)", usage.blobs, usage.bytes,
        usage.seconds,
    )  # fmt: skip
    return usage


async def run_usage_meter(
    driver: StorageDriver, interval: float = INTERVAL, first_delay: float = FIRST_DELAY
) -> None:
    """Measure every ``interval``: the worker holding the storage driver's lease does it
    (one among every worker and replica sharing the storage), and only when the
    recorded figure is older than that (another worker, or the run before a restart, may
    have just measured)."""
    delay = first_delay
    while True:
        await asyncio.sleep(delay)
        delay = interval
        try:
            last = await read_usage(driver)
            if last is not None and time.time() - last.measured_at < interval * 0.9:
                continue
            lease = await driver.try_lease(LOCK_KEY)
            if lease is None:
                continue  # another worker is measuring
            try:
                await record_usage(driver)
            finally:
                await lease.release()
        except StorageError as exc:
            log.warning("storage use measurement failed: %s", exc)


__all__ = [
    "StorageUsage",
    "measure",
    "read_usage",
    "record_usage",
    "run_usage_meter",
]
