"""registry:2's storage-driver health check: the driver is probed every ``interval``;
after ``threshold`` consecutive failures the registry reports itself unhealthy (and
/v2/ answers 503) until a probe succeeds again. Unlike registry:2's (a stat of the
root), the probe also writes and deletes a small object, so storage that can be read
but not written (a read-only mount, a full disk, wrong ownership) shows as unhealthy
instead of failing every push."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets

from entrepot.storage import StorageDriver, StorageError, StorageNotFound

log = logging.getLogger("entrepot.health")

# Outside registry:2's tree (docker/registry/v2), which registry:2 and garbage
# collection walk; one key per process so workers and replicas never race on it.
PROBE_PREFIX = "entrepot/health"


def probe_key() -> str:
    return f"{PROBE_PREFIX}/probe-{os.getpid()}-{secrets.token_hex(4)}"


async def check_writable(driver: StorageDriver, key: str | None = None) -> None:
    """Write and delete a small object; StorageError (with the driver's reason) if the
    storage cannot be written."""
    key = key or probe_key()
    await driver.put_content(key, b"entrepot storage probe\n")
    with contextlib.suppress(StorageNotFound):
        await driver.delete(key)


class StorageHealthCheck:
    def __init__(
        self, driver: StorageDriver, interval: float, threshold: int, *, writable: bool = True
    ) -> None:
        self.driver = driver
        self.interval = interval
        self.threshold = max(threshold, 1)
        self.writable = writable  # False in read-only mode: nothing is written then
        self.failures = 0
        self.last_error: str | None = None
        self._probe_key = probe_key()

    @property
    def healthy(self) -> bool:
        return self.failures < self.threshold

    async def probe(self) -> None:
        try:
            if self.writable:
                await check_writable(self.driver, self._probe_key)
            else:
                with contextlib.suppress(StorageNotFound):  # empty is healthy, as in registry:2
                    await self.driver.stat("")
        except StorageError as exc:
            self.failures += 1
            self.last_error = str(exc)
            log.warning("storage health check failed (%d in a row): %s", self.failures, exc)
            return
        if self.failures:
            log.info("storage health check passes again")
        self.failures = 0
        self.last_error = None

    async def run(self) -> None:
        while True:
            await self.probe()
            await asyncio.sleep(self.interval)
