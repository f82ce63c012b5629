"""A lease held through the storage driver: at most one holder at a time among every
worker and replica sharing the storage (a local disk or a bucket), with no lock server.

The lease is a series of generations, ``<prefix>/<generation>``, each created with
``put_new`` (exactly one creator wins a generation) and holding its owner and expiry.
The newest generation rules: it is free once released or expired, and then taken by
creating the next one. A holder renews by rewriting its own generation while it is still
the newest; a holder that finds a newer generation has lost the lease (it paused past its
expiry) and must stop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable

from entrepot.storage import StorageDriver, StorageError, StorageNotFound

log = logging.getLogger("entrepot.lease")

_WIDTH = 12  # generations sort by name

# Garbage collection's lease: the servers' scheduled runs and the command take it.
GC_LEASE = "entrepot/gc/lease"
GC_LEASE_TTL = 60.0  # seconds; renewed every third of it


class LeaseLost(Exception):
    """Another holder took the lease: this one's work must stop."""


class StorageLease:
    def __init__(
        self,
        driver: StorageDriver,
        prefix: str,
        ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.driver = driver
        self.prefix = prefix
        self.ttl = ttl
        self.clock = clock
        self.owner = secrets.token_hex(8)
        self.generation: int | None = None  # held while set

    async def _newest(self) -> tuple[int, dict[str, object] | None]:
        """The newest generation and its record (None: unreadable, as if expired)."""
        try:
            names = await self.driver.list(self.prefix)
        except StorageNotFound:
            return 0, None
        generations = [int(n) for n in names if n.isdigit()]
        if not generations:
            return 0, None
        newest = max(generations)
        try:
            record = json.loads(await self.driver.get_content(self._key(newest)))
        except (StorageNotFound, ValueError):
            return newest, None
        return newest, record if isinstance(record, dict) else None

    def _key(self, generation: int) -> str:
        return f"{self.prefix}/{generation:0{_WIDTH}d}"

    def _record(self, expires: float) -> bytes:
        return json.dumps({"owner": self.owner, "expires": expires}).encode()

    async def acquire(self) -> bool:
        """Take the lease if it is free; False if another holder has it."""
        newest, record = await self._newest()
        if record is not None:
            expires = record.get("expires")
            if isinstance(expires, int | float) and expires > self.clock():
                return record.get("owner") == self.owner and self.generation == newest
        taken = newest + 1
        if not await self.driver.put_new(self._key(taken), self._record(self.clock() + self.ttl)):
            return False  # another worker took this generation first
        self.generation = taken
        for old in range(max(1, newest - 2), newest):  # keep the listing short
            with contextlib.suppress(StorageNotFound):
                await self.driver.delete(self._key(old))
        return True

    async def renew(self) -> None:
        """Extend the lease by its ttl; LeaseLost if it is no longer held."""
        if self.generation is None:
            raise LeaseLost("the lease is not held")
        newest, record = await self._newest()
        if newest != self.generation or record is None or record.get("owner") != self.owner:
            self.generation = None
            raise LeaseLost(f"{self.prefix} was taken over (generation {newest})")
        await self.driver.put_content(self._key(newest), self._record(self.clock() + self.ttl))

    async def release(self) -> None:
        """Give the lease up at once (it is free for the next ``acquire``)."""
        generation, self.generation = self.generation, None
        if generation is None:
            return
        try:
            newest, record = await self._newest()
            if newest == generation and record is not None and record.get("owner") == self.owner:
                await self.driver.put_content(self._key(generation), self._record(0.0))
        except StorageError as exc:  # it expires by itself
            log.warning("could not release %s: %s", self.prefix, exc)
