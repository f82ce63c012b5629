"""When images were last pulled: one record for the cache's eviction (proxy/janitor.py:
times per cached repository and manifest digest) and for retention rules
(registry/retention.py, ``keeppulledwithin``: times per repository and tag).

A pull is recorded in memory only (``record``: a dict assignment, no storage call); every
few seconds each worker writes what it recorded since its last write as one small batch
object, ``entrepot/pullrecord/batches/<worker>-<seq>.json``, through the storage driver, so
workers and replicas on one store (local disk or S3) all contribute. A batch is written
once and never changed. One compaction at a time (registry/pullcompact.py, under a lease)
folds the batches into ``entrepot/pullrecord/merged.json`` and only then deletes them, so a
batch written meanwhile waits for the next one. A reader reads the merged record and every
batch. A crash loses at most the pulls of the last few seconds.

Each entry is (repository, tag or None, manifest digest) -> time: a pull by tag records the
tag and the digest it resolved to, a pull by digest that digest alone.

Records of the two recorders before this one are still read, and folded in by the next
compaction: the cache's ``entrepot/pulls/merged.json`` and ``entrepot/pulls/batches/``
(entries without a tag), and retention's ``entrepot/tagpulls/<name>/_pulled/<tag>``, one
object per tag holding the time (entries without a digest, "": only retention reads them).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from entrepot.oci.digest import Digest
from entrepot.storage import StorageDriver, StorageError, StorageNotFound

log = logging.getLogger("entrepot.pulls")

PULLS = "entrepot/pullrecord"
BATCHES = f"{PULLS}/batches"
MERGED = f"{PULLS}/merged.json"
FLUSH_EVERY = 10.0  # seconds between a worker's batch writes (when it saw pulls)

# The records of the recorders this one replaced (read, then folded in and removed).
LEGACY_IMAGE_PULLS = "entrepot/pulls"
LEGACY_TAG_PULLS = "entrepot/tagpulls"
_LEGACY_TAG_MARK = "/_pulled/"
_READS_IN_FLIGHT = 16

PullKey = tuple[str, str | None, str]  # (repository, tag or None, manifest digest or "")
Pulls = dict[PullKey, float]  # -> when last pulled (seconds since the epoch)
DigestPulls = dict[tuple[str, str], float]  # (repository, digest) -> last pull
TagPulls = dict[tuple[str, str], float]  # (repository, tag) -> last pull


def encode(pulls: Mapping[PullKey, float]) -> bytes:
    rows = [[name, tag, digest, when] for (name, tag, digest), when in pulls.items()]
    rows.sort(key=lambda row: (row[0], row[1] or "", row[2]))
    return json.dumps({"pulls": rows}, separators=(",", ":")).encode()


def _merge(into: Pulls, key: PullKey, when: float) -> None:
    into[key] = max(into.get(key, 0.0), when)


def decode(raw: bytes, into: Pulls) -> None:
    """Merge a batch or a merged record into ``into`` (the latest time wins): rows
    ``[name, tag or null, digest, time]``, or the old cache record's ``[name, digest,
    time]``; other rows are skipped (a record is a hint, never a failure)."""
    try:
        rows = json.loads(raw).get("pulls", [])
    except (ValueError, UnicodeDecodeError, AttributeError):
        return
    for row in rows if isinstance(rows, list) else []:
        if not isinstance(row, list) or not row or not isinstance(row[-1], int | float):
            continue
        if len(row) == 3:
            row = [row[0], None, row[1], row[2]]
        if (
            len(row) == 4
            and isinstance(row[0], str)
            and (row[1] is None or isinstance(row[1], str))
            and isinstance(row[2], str)
        ):
            _merge(into, (row[0], row[1], row[2]), float(row[3]))


def legacy_tag_pull(key: str) -> tuple[str, str] | None:
    """(name, tag) of an old retention record ``<name>/_pulled/<tag>`` (relative to
    ``LEGACY_TAG_PULLS``), None for anything else."""
    name, mark, tag = key.rpartition(_LEGACY_TAG_MARK)
    return (name, tag) if mark and name and tag and "/" not in tag else None


def parse_time(raw: bytes | None) -> float | None:
    """An old retention record's time (None: unreadable)."""
    if raw is None:
        return None
    try:
        return float(raw.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return None


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

    def record(self, repository: str, digest: Digest, tag: str | None = None) -> None:
        """A pull of ``repository`` by ``tag`` (resolved to ``digest``) or by digest."""
        self._pending[(repository, tag, str(digest))] = self.clock()

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
            await self.driver.put_content(key, encode(batch))
        except BaseException:
            # Keep them for the next flush (newer pulls recorded meanwhile win).
            for item, when in batch.items():
                _merge(self._pending, item, when)
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


@dataclass
class PullRecord:
    """Every recorded pull, and the objects it was read from besides the merged record
    (batches and old records: deleted once a new merged record holds them)."""

    pulls: Pulls = field(default_factory=dict)
    read: list[str] = field(default_factory=list)


@dataclass
class PullTimes:
    """The last pull per side: by (repository, digest) for the cache, by (repository,
    tag) for retention rules."""

    by_digest: DigestPulls = field(default_factory=dict)
    by_tag: TagPulls = field(default_factory=dict)

    @classmethod
    def of(cls, pulls: Mapping[PullKey, float]) -> PullTimes:
        times = cls()
        for (name, tag, digest), when in pulls.items():
            if digest:
                key = (name, digest)
                times.by_digest[key] = max(times.by_digest.get(key, 0.0), when)
            if tag is not None:
                key = (name, tag)
                times.by_tag[key] = max(times.by_tag.get(key, 0.0), when)
        return times


async def _keys(driver: StorageDriver, prefix: str) -> list[str]:
    """Every object key under ``prefix``, relative to it."""
    found: list[str] = []
    async for batch in driver.walk(prefix):
        found += batch
    return found


async def _contents(driver: StorageDriver, keys: list[str]) -> list[tuple[str, bytes]]:
    """The objects at ``keys`` that are still there (a compaction may have merged some
    meanwhile), read a few at a time."""
    slots = asyncio.Semaphore(_READS_IN_FLIGHT)

    async def read(key: str) -> bytes | None:
        async with slots:
            try:
                return await driver.get_content(key)
            except StorageNotFound:
                return None

    found = await asyncio.gather(*(read(key) for key in keys))
    return [(key, raw) for key, raw in zip(keys, found, strict=True) if raw is not None]


async def load_record(driver: StorageDriver) -> PullRecord:
    """The merged record, every batch, and the old recorders' records."""
    record = PullRecord()
    pulls = record.pulls
    for _, raw in await _contents(driver, [MERGED]):
        decode(raw, pulls)
    batches = [f"{BATCHES}/{name}" for name in await _keys(driver, BATCHES)]
    batches += [
        f"{LEGACY_IMAGE_PULLS}/{name}"
        for name in await _keys(driver, LEGACY_IMAGE_PULLS)
        if name.endswith(".json")
    ]
    for key, raw in await _contents(driver, batches):
        decode(raw, pulls)
        record.read.append(key)
    tags = [f"{LEGACY_TAG_PULLS}/{name}" for name in await _keys(driver, LEGACY_TAG_PULLS)]
    for key, raw in await _contents(driver, tags):
        tagged = legacy_tag_pull(key.removeprefix(f"{LEGACY_TAG_PULLS}/"))
        when = parse_time(raw)
        if tagged is not None and when is not None:
            _merge(pulls, (tagged[0], tagged[1], ""), when)
        record.read.append(key)
    return record


async def load_times(driver: StorageDriver) -> PullTimes:
    return PullTimes.of((await load_record(driver)).pulls)
