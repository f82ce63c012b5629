"""registry:2's storage-driver health check: the driver is probed every ``interval``;
after ``threshold`` consecutive failures the registry reports itself unhealthy (and
/v2/ answers 503) until a probe succeeds again."""

from __future__ import annotations

import asyncio
import logging

from entrepot.storage import StorageDriver, StorageError, StorageNotFound

log = logging.getLogger("entrepot.health")


class StorageHealthCheck:
    def __init__(self, driver: StorageDriver, interval: float, threshold: int) -> None:
        self.driver = driver
        self.interval = interval
        self.threshold = max(threshold, 1)
        self.failures = 0
        self.last_error: str | None = None

    @property
    def healthy(self) -> bool:
        return self.failures < self.threshold

    async def probe(self) -> None:
        try:
            await self.driver.stat("")
        except StorageNotFound:
            pass  # An empty store is healthy, as in registry:2.
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
