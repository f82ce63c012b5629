"""Leases kept in the store itself, for a store shared by replicas without a lock server
(S3 without Redis): at most one holder at a time among every process and replica.

A lease is a series of generations, objects ``<prefix>/<name>/<generation>``, each created
with ``put_new`` (S3's ``If-None-Match: *``: exactly one creator wins a generation) and
holding its holder's token and expiry. The newest generation rules: the lease is free once
it is released or expired, and then taken by creating the next one. The holder renews by
rewriting its own generation while it is still the newest and unexpired; one that finds
otherwise has lost the lease (it stalled past its expiry). Expiry times are the holder's
clock: replicas' clocks must agree to well within a time limit (NTP does).
"""

from __future__ import annotations

import contextlib
import json
import time

from entrepot.storage.driver import Lease, StorageDriver, StorageNotFound
from entrepot.storage.leases import Leases, RenewedLease, new_token

__all__ = ["ObjectLeases"]

_WIDTH = 12  # generations sort by name
_Record = tuple[int, str | None, float]  # newest generation, its holder and expiry


class _ObjectLease(RenewedLease):
    def __init__(self, leases: ObjectLeases, name: str, token: str, ttl: float, gen: int):
        super().__init__(leases.key(name), token, ttl)
        self._leases = leases
        self._lease = name
        self.generation = gen

    def _mine(self, newest: _Record) -> bool:
        return newest[:2] == (self.generation, self.token) and newest[2] > time.time()

    async def _extend(self) -> bool:
        if not self._mine(await self._leases.newest(self._lease)):
            return False
        await self._leases.write(self._lease, self.generation, self.token, time.time() + self.ttl)
        return True

    async def _drop(self) -> None:
        if self._mine(await self._leases.newest(self._lease)):
            await self._leases.write(self._lease, self.generation, self.token, 0.0)


class ObjectLeases(Leases):
    across_machines = True

    def __init__(self, driver: StorageDriver, prefix: str) -> None:
        self.driver = driver
        self.prefix = prefix

    def key(self, name: str, generation: int | None = None) -> str:
        base = f"{self.prefix}/{name}"
        return base if generation is None else f"{base}/{generation:0{_WIDTH}d}"

    async def newest(self, name: str) -> _Record:
        """The newest generation, its holder and its expiry (0: none, or unreadable)."""
        try:
            names = await self.driver.list(self.key(name))
        except StorageNotFound:
            return 0, None, 0.0
        generations = [int(n) for n in names if n.isdigit()]
        if not generations:
            return 0, None, 0.0
        newest = max(generations)
        try:
            record = json.loads(await self.driver.get_content(self.key(name, newest)))
            return newest, str(record["owner"]), float(record["expires"])
        except (StorageNotFound, ValueError, TypeError, KeyError):
            return newest, None, 0.0  # removed meanwhile, or not ours: as if expired

    async def write(self, name: str, generation: int, token: str, expires: float) -> None:
        record = json.dumps({"owner": token, "expires": expires}).encode()
        await self.driver.put_content(self.key(name, generation), record)

    async def acquire(self, name: str, ttl: float) -> Lease | None:
        newest, _, expires = await self.newest(name)
        if expires > time.time():
            return None
        token, taken = new_token(), newest + 1
        record = json.dumps({"owner": token, "expires": time.time() + ttl}).encode()
        if not await self.driver.put_new(self.key(name, taken), record):
            return None  # another holder took this generation first
        for old in range(max(1, newest - 2), newest):  # keep the listing short
            with contextlib.suppress(StorageNotFound):
                await self.driver.delete(self.key(name, old))
        return _ObjectLease(self, name, token, ttl, taken)

    async def holder(self, name: str) -> str | None:
        _, token, expires = await self.newest(name)
        return token if expires > time.time() else None
