"""Scheduled garbage collection inside the server (``garbagecollect.interval``).

Every worker of every replica runs the loop, and the one that takes the storage driver's
lease (registry/lease.py) collects; a run records when it started, so the others, finding the
last run younger than the interval, wait for the next turn. A worker that stops holding
the lease (it stalled past the lease's expiry) abandons its run; the next run puts back
what it had moved aside. Each run logs one summary line and counts in /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from entrepot.registry.gc import GarbageCollector, GcOptions, GcResult
from entrepot.registry.gcpace import Pacer
from entrepot.registry.lease import GC_LEASE as LEASE
from entrepot.registry.lease import GC_LEASE_TTL as LEASE_TTL
from entrepot.registry.lease import while_held
from entrepot.registry.quarantine import recover
from entrepot.registry.storecalls import Limited
from entrepot.storage import Lease, LeaseLost, StorageDriver, StorageError

log = logging.getLogger("entrepot.gc")

LAST_RUN = "entrepot/gc/last-run"


class GcMetrics:
    """``entrepot_gc_*``: counted by whichever worker collected, summed over workers."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.runs = Counter(
            "entrepot_gc_runs",
            "Garbage collections, by outcome (done, failed, lost: the lease was lost).",
            ["outcome"],
            registry=registry,
        )
        self.deleted = Counter(
            "entrepot_gc_deleted",
            "What garbage collection deleted: blob, manifest, tag, repository.",
            ["kind"],
            registry=registry,
        )
        self.freed = Counter(
            "entrepot_gc_freed_bytes",
            "Bytes of blobs garbage collection deleted.",
            registry=registry,
        )
        self.duration = Histogram(
            "entrepot_gc_duration_seconds",
            "How long a garbage collection took.",
            buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, float("inf")),
            registry=registry,
        )
        self.rested = Counter(
            "entrepot_gc_rested_seconds",
            "Seconds garbage collection spent resting while the machine was busy serving.",
            registry=registry,
        )
        self.last_run = Gauge(
            "entrepot_gc_last_run_timestamp_seconds",
            "When the last garbage collection finished (Unix time).",
            registry=registry,
            multiprocess_mode="max",
        )

    def count(self, result: GcResult) -> None:
        self.runs.labels("done").inc()
        self.deleted.labels("blob").inc(len(result.blobs_deleted))
        self.deleted.labels("manifest").inc(len(result.manifests_deleted))
        self.deleted.labels("tag").inc(len(result.tags_deleted))
        self.deleted.labels("repository").inc(len(result.repositories_removed))
        self.freed.inc(result.bytes_freed)
        self.duration.observe(result.seconds)
        self.rested.inc(result.rested)
        self.last_run.set(time.time())


def summary(result: GcResult, dry_run: bool = False) -> str:
    """The one line a collection logs."""
    if dry_run:
        return (
            f"garbage collection (dry run): would delete {len(result.blobs_eligible)} blobs "
            f"({sum(result.blobs_eligible.values())} bytes), {len(result.manifests_eligible)} "
            f"manifests, {len(result.tags_eligible)} tags and "
            f"{len(result.repositories_removed)} repositories in {result.took}"
        )
    recovered = f"; {result.blobs_recovered} blobs put back" if result.blobs_recovered else ""
    return (
        f"garbage collection: deleted {len(result.blobs_deleted)} blobs "
        f"({result.bytes_freed} bytes), {len(result.manifests_deleted)} manifests, "
        f"{len(result.tags_deleted)} tags, {result.layer_links_deleted} layer links and "
        f"{len(result.repositories_removed)} empty repositories in {result.took}; "
        f"{result.blobs_relinked} blobs kept as a push linked them during the sweep{recovered}"
    )


class ScheduledCollector:
    def __init__(
        self,
        driver: StorageDriver,
        interval: float,
        options: GcOptions,
        metrics: GcMetrics | None = None,
        clock: Callable[[], float] = time.time,
        pacer: Callable[[], Pacer] = Pacer,
    ) -> None:
        self.driver = driver
        self.pacer = pacer  # a new one per run; the server's sees what its worker serves
        self.interval = interval
        self.options = options
        self.metrics = metrics
        self.clock = clock

    async def run(self) -> None:
        """Put back what an interrupted run left aside, then collect every interval."""
        await asyncio.sleep(random.uniform(0.0, min(1.0, self.interval / 10)))
        with contextlib.suppress(StorageError):
            await self.recover()
        while True:
            try:
                await asyncio.sleep(await self._until_due())
                await self.collect_if_due()
            except StorageError as exc:
                log.warning("garbage collection failed: %s", exc)
                if self.metrics is not None:
                    self.metrics.runs.labels("failed").inc()

    async def _until_due(self) -> float:
        # A little jitter, so the workers do not all ask for the lease at one instant.
        due = await self._last_run() + self.interval - self.clock()
        return max(0.0, due) + random.uniform(0.0, min(5.0, self.interval / 10))

    async def recover(self) -> int:
        lease = await self.driver.try_lease(LEASE, ttl=LEASE_TTL)
        if lease is None:
            return 0  # the holder is collecting; its run recovers first
        try:
            restored = await recover(Limited(self.driver, 8))
        finally:
            await lease.release()
        if restored:
            log.info("put back %d blobs an interrupted garbage collection left aside", restored)
        return restored

    async def _last_run(self) -> float:
        try:
            return float((await self.driver.get_content(LAST_RUN)).decode())
        except (StorageError, ValueError, UnicodeDecodeError):
            return 0.0

    async def collect_if_due(self) -> GcResult | None:
        """Collect if no run started within the interval and the lease is free."""
        if self.clock() - await self._last_run() < self.interval:
            return None
        lease = await self.driver.try_lease(LEASE, ttl=LEASE_TTL)
        if lease is None:
            return None
        try:
            if self.clock() - await self._last_run() < self.interval:
                return None  # another worker ran while this one took the lease
            await self.driver.put_content(LAST_RUN, repr(self.clock()).encode())
            return await self._collect(lease)
        finally:
            await lease.release()

    async def _collect(self, lease: Lease) -> GcResult | None:
        collector = GarbageCollector(
            self.driver, self.options, emit=log.debug, clock=self.clock, pacer=self.pacer()
        )
        try:
            # The lease renews itself; a run whose lease lapses stops at once.
            result = await while_held(lease, collector.run())
        except LeaseLost as exc:
            log.warning("garbage collection abandoned: %s", exc)
            if self.metrics is not None:
                self.metrics.runs.labels("lost").inc()
            return None
        log.info(summary(result, self.options.dry_run))
        by_repository: dict[str, list[str]] = {}
        for name, tag in result.tags_deleted:
            by_repository.setdefault(name, []).append(tag)
        for name, tags in sorted(by_repository.items()):  # what a person will look for
            log.info(
                "garbage collection: retention rules deleted tags of %s: %s", name, ", ".join(tags)
            )
        if self.metrics is not None:
            self.metrics.count(result)
        return result
