"""When cached images were last pulled, for the cache's eviction (proxy/janitor.py).

A pull is recorded in memory only (``record``: a dict assignment, no storage call); every
few seconds each worker writes what it recorded since its last write as one small batch
object, ``entrepot/pulls/batches/<worker>-<seq>.json``, through the storage driver, so
workers and replicas on one store (local disk or S3) all contribute. A batch is written
once and never changed; the janitor reads the merged record and every batch, writes the
merged record back (``entrepot/pulls/merged.json``) and only then deletes the batches it
read, so a batch written meanwhile waits for the next run. A crash loses at most the pulls
of the last few seconds: the janitor then falls back on when a tag was last revalidated.

Records are keyed by cached repository and manifest digest: a pull by tag records the
digest the tag resolved to, a pull by digest that digest, so both reach the same image.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping

from entrepot.oci.digest import Digest
from entrepot.storage import StorageDriver, StorageError, StorageNotFound

log = logging.getLogger("entrepot.proxy.pulls")

PULLS = "entrepot/pulls"
BATCHES = f"{PULLS}/batches"
MERGED = f"{PULLS}/merged.json"
FLUSH_EVERY = 10.0  # seconds between a worker's batch writes (when it saw pulls)

PullKey = tuple[str, str]  # (cached repository, manifest digest)
Pulls = dict[PullKey, float]  # -> when last pulled (seconds since the epoch)


def _encode(pulls: Mapping[PullKey, float]) -> bytes:
    rows = [[name, digest, when] for (name, digest), when in sorted(pulls.items())]
    return json.dumps({"pulls": rows}, separators=(",", ":")).encode()


def _decode(raw: bytes, into: Pulls) -> None:
    """Merge a batch or the merged record into ``into`` (the latest time wins); rows that
    are not ``[name, digest, time]`` are skipped (a record is a hint, never a failure)."""
    try:
        rows = json.loads(raw).get("pulls", [])
    except (ValueError, UnicodeDecodeError, AttributeError):
        return
    for row in rows if isinstance(rows, list) else []:
        if (
            isinstance(row, list)
            and len(row) == 3
            and isinstance(row[0], str)
            and isinstance(row[1], str)
            and isinstance(row[2], int | float)
        ):
            key = (row[0], row[1])
            into[key] = max(into.get(key, 0.0), float(row[2]))


class PullRecorder:
    """One worker's pulls not written yet."""

    def __init__(
        self, driver: StorageDriver, clock: Callable[[], float] = time.time, worker: str = ""
    ) -> None:
        self.driver = driver
        self.clock = clock
        self.worker = worker or uuid.uuid4().hex[:16]
        self._pending: Pulls = {}
        self._written = 0

    def record(self, repository: str, digest: Digest) -> None:
        self._pending[(repository, str(digest))] = self.clock()

    @property
    def pending(self) -> Mapping[PullKey, float]:
        return self._pending

    async def flush(self) -> None:
        """Write the pulls recorded since the last flush as one new batch (none: nothing)."""
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        self._written += 1
        key = f"{BATCHES}/{self.worker}-{self._written:010d}.json"
        try:
            await self.driver.put_content(key, _encode(batch))
        except BaseException:
            # Keep them for the next flush (newer pulls recorded meanwhile win).
            for item, when in batch.items():
                self._pending[item] = max(when, self._pending.get(item, 0.0))
            raise

    async def run(self, interval: float = FLUSH_EVERY) -> None:
        """Flush every ``interval`` until cancelled, and once more then (shutdown)."""
        try:
            while True:
                await asyncio.sleep(interval)
                try:
                    await self.flush()
                except StorageError as exc:
                    log.warning("cannot record recent pulls under %s: %s", BATCHES, exc)
        finally:
            try:
                await asyncio.shield(self.flush())
            except (StorageError, asyncio.CancelledError) as exc:
                log.warning("recent pulls not recorded at shutdown: %s", exc)


class PullLog:
    """The merged record and the batches, as the janitor reads and compacts them."""

    def __init__(self, driver: StorageDriver) -> None:
        self.driver = driver

    async def load(self) -> tuple[Pulls, list[str]]:
        """Every recorded pull, and the batch keys that were read (to delete once the
        merged record holds them)."""
        pulls: Pulls = {}
        with contextlib.suppress(StorageNotFound):
            _decode(await self.driver.get_content(MERGED), pulls)
        try:
            names = await self.driver.list(BATCHES)
        except StorageNotFound:
            names = []
        read = []
        for name in names:
            key = f"{BATCHES}/{name}"
            try:
                _decode(await self.driver.get_content(key), pulls)
            except StorageNotFound:
                continue  # another janitor merged it
            read.append(key)
        return pulls, read

    async def save(self, pulls: Mapping[PullKey, float], merged_batches: Iterable[str]) -> None:
        await self.driver.put_content(MERGED, _encode(pulls))
        for key in merged_batches:
            try:
                await self.driver.delete(key)
            except StorageNotFound:
                continue
