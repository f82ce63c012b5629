"""registry:2's storage-driver health check: the driver is probed every ``interval``;
after ``threshold`` consecutive failures the registry reports itself unhealthy (and
/v2/ answers 503) until a probe succeeds again. Unlike registry:2's (a stat of the
root), the probe also writes and deletes a small object, so storage that can be read
but not written (a read-only mount, a full disk, wrong ownership) shows as unhealthy
instead of failing every push. A probe that does not finish within ``timeout`` (storage
that accepted the connection but does not answer) is a failure too."""

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
# Seconds a probe may take: healthy storage answers its two small requests in far less,
# and hung storage must show as unhealthy (load balancers then route elsewhere) before
# the requests waiting on it fail (the S3 driver waits up to 30 s for an answer).
PROBE_TIMEOUT = 10.0


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
        self,
        driver: StorageDriver,
        interval: float,
        threshold: int,
        *,
        writable: bool = True,
        timeout: float = PROBE_TIMEOUT,
    ) -> None:
        self.driver = driver
        self.interval = interval
        self.threshold = max(threshold, 1)
        self.writable = writable  # False in read-only mode: nothing is written then
        self.timeout = timeout  # seconds a probe may take before it counts as a failure
        self.failures = 0
        self.last_error: str | None = None
        self._probe_key = probe_key()

    @property
    def healthy(self) -> bool:
        return self.failures < self.threshold

    async def _probe(self) -> None:
        if self.writable:
            await check_writable(self.driver, self._probe_key)
        else:
            with contextlib.suppress(StorageNotFound):  # empty is healthy, as in registry:2
                await self.driver.stat("")

    async def probe(self) -> None:
        bound = asyncio.timeout(self.timeout)
        try:
            async with bound:
                await self._probe()
        except StorageError as exc:
            self._failed(str(exc))
            return
        except TimeoutError:
            if not bound.expired():
                raise
            self._failed(
                f"{self.driver!r} did not answer the probe in {self.timeout:g} s "
                "(it may be stopped or overloaded: check the storage server)"
            )
            return
        if self.failures:
            log.info("storage health check passes again")
        self.failures = 0
        self.last_error = None

    def _failed(self, why: str) -> None:
        self.failures += 1
        self.last_error = why
        log.warning("storage health check failed (%d in a row): %s", self.failures, why)

    async def run(self) -> None:
        while True:
            await self.probe()
            await asyncio.sleep(self.interval)
