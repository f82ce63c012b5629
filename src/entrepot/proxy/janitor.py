"""The cache's eviction: images not pulled for their upstream's ``ttl`` expire, and beyond
``proxycache.maxsize`` the least recently pulled cached images are evicted, with their
tags, manifests and the blobs no retained image or pushed content still references
(proxy/cachescan.py says what an image is and when it was last pulled). An evicted image
is fetched again from upstream on its next pull.

Tags and manifests are unlinked first, then each freed blob is quarantined (moved aside),
every repository is read again, and a blob that something linked meanwhile (a push, or a
pull filling the cache again) is put back; the rest are deleted. Everything goes through
the storage driver.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from entrepot.oci.digest import Digest
from entrepot.proxy.cache import ProxyCache
from entrepot.proxy.cachescan import CacheScan, CacheUnit, linked_digests, scan_cache
from entrepot.proxy.metrics import ProxyMetrics
from entrepot.registry import layout
from entrepot.registry.gcscan import find_repositories
from entrepot.registry.manifestrefs import ManifestRefs
from entrepot.registry.pulls import load_times
from entrepot.registry.storecalls import Limited, each
from entrepot.storage import StorageError

log = logging.getLogger("entrepot.proxy.janitor")
# Images named in the summary line of a run (the rest counted): which ones went, for the
# person asking why a pull went upstream again.
_NAMED = 10

LOCK_KEY = "entrepot/janitor.lock"
QUARANTINE = layout.EVICTING  # next to a blob's ``data`` while the eviction re-checks it
CONCURRENCY = 16  # storage calls in flight


@dataclass
class SweepResult:
    cached_bytes: int = 0  # held by the cache before the run
    evicted: list[Digest] = field(default_factory=list)  # blobs deleted, in eviction order
    freed_bytes: int = 0
    images: list[str] = field(default_factory=list)  # "<repository>@<digest>" evicted
    named: list[str] = field(default_factory=list)  # the same as "<repository>:<tag>"
    expired: int = 0  # of those, by ttl
    tags: int = 0
    manifests: int = 0
    seconds: float = 0.0


@dataclass
class Plan:
    units: list[tuple[CacheUnit, str]]  # (unit, "ttl" or "maxsize"), in eviction order
    freed: list[Digest]  # blobs no retained unit references any more, in eviction order


def plan_eviction(
    scan: CacheScan, maxsize: int | None, ttl_of: Callable[[str], float], now: float
) -> Plan:
    """Expired units first, then the least recently pulled until under ``maxsize``."""
    users: dict[Digest, int] = {}
    for unit in scan.units:
        for digest in unit.blobs:
            users[digest] = users.get(digest, 0) + 1
    total = sum(scan.sizes.values())
    plan = Plan([], [])
    order = sorted(scan.units, key=lambda u: (u.last_pulled, u.label))
    chosen: set[int] = set()

    def evict(unit: CacheUnit, reason: str) -> None:
        nonlocal total
        chosen.add(id(unit))
        plan.units.append((unit, reason))
        for digest in sorted(unit.blobs, key=str):
            users[digest] -= 1
            if users[digest] == 0:
                plan.freed.append(digest)
                total -= scan.sizes[digest]

    for unit in order:
        ttl = ttl_of(unit.repository)
        if ttl > 0 and unit.last_pulled < now - ttl:
            evict(unit, "ttl")
    for unit in order:
        if maxsize is None or total <= maxsize:
            break
        if id(unit) not in chosen and unit.blobs:  # else it frees nothing: pushed content's
            evict(unit, "maxsize")
    return plan


class CacheJanitor:
    """``prefixes``: the first name component of each upstream's cached repositories;
    ``ttls``: prefix -> seconds a cached image may go unpulled (0 or absent: forever)."""

    def __init__(
        self,
        cache: ProxyCache,
        prefixes: Sequence[str],
        maxsize: int | None,
        *,
        ttls: Mapping[str, float] | None = None,
        metrics: ProxyMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cache = cache
        self.driver = cache.local.driver
        self.prefixes = frozenset(prefixes)
        self.maxsize = maxsize
        self.ttls = dict(ttls or {})
        self.metrics = metrics
        self.clock = clock
        self.store = Limited(self.driver, CONCURRENCY)
        self.refs: dict[Digest, ManifestRefs] = {}  # manifests never change: kept across runs

    def _is_cache(self, name: str) -> bool:
        return name.split("/", 1)[0] in self.prefixes

    def _ttl_of(self, name: str) -> float:
        return self.ttls.get(name.split("/", 1)[0], 0.0)

    async def sweep(self) -> SweepResult:
        started = time.monotonic()
        now = self.clock()
        if self.cache.pulls is not None:
            await self.cache.pulls.flush()  # this worker's latest pulls count now
        pulls = await load_times(self.driver)
        scan = await scan_cache(self.store, self._is_cache, pulls.by_digest, self.refs, now)
        plan = plan_eviction(scan, self.maxsize, self._ttl_of, now)
        result = SweepResult(cached_bytes=sum(scan.sizes.values()))
        if plan.units:
            await self._unlink(scan, plan, result)
            await self._delete_blobs(scan, plan.freed, result)
        result.seconds = time.monotonic() - started
        self._report(result, scan)
        return result

    async def _unlink(self, scan: CacheScan, plan: Plan, result: SweepResult) -> None:
        """Remove the evicted images' tags (unless a tag moved meanwhile), and the manifests
        and layer links no retained image of the same repository holds (a blob another
        repository still uses stays, unlinked from this one)."""
        evicted = {id(unit) for unit, _ in plan.units}
        retained: dict[str, set[Digest]] = {}
        for unit in scan.units:
            if id(unit) not in evicted:
                retained.setdefault(unit.repository, set()).update(unit.linked or unit.blobs)
        for unit, _ in plan.units:
            name = unit.repository
            unlinked = [
                d
                for d in (unit.linked or unit.blobs) - retained.get(name, set())
                if name in scan.layer_links.get(d, ())
            ]
            await each([(name, d) for d in unlinked], self._unlink_layer)
        for unit, reason in plan.units:
            if unit.root is None:
                continue
            result.images.append(unit.label)
            result.named.append(unit.named)
            result.expired += reason == "ttl"
            name = unit.repository
            for tag in unit.tags:
                if await self.store.read_link(layout.tag_current_link(name, tag)) == unit.root:
                    result.tags += await self.store.delete(layout.tag_dir(name, tag))
            for digest in unit.manifests - retained.get(name, set()):
                result.manifests += await self.store.delete(
                    layout.manifest_revision_dir(name, digest)
                )
                subject = self.refs[digest].subject if digest in self.refs else None
                if subject is not None:
                    referrer = layout.referrer_link(name, subject, digest)
                    await self.store.delete(referrer.removesuffix("/link"))

    async def _delete_blobs(
        self, scan: CacheScan, freed: list[Digest], result: SweepResult
    ) -> None:
        links = [(name, d) for d in freed for name in scan.layer_links.get(d, ())]
        await each(links, self._unlink_layer)
        moved = await each(freed, self._quarantine)
        quarantined = [d for d, ok in zip(freed, moved, strict=True) if ok]
        if not quarantined:
            return
        linked = await self._linked_now()
        gone: list[Digest] = []
        for digest in quarantined:
            if digest in linked:
                # A push or a new pull linked these bytes meanwhile: they stay.
                await self.store.move(self._aside(digest), layout.blob_data(digest))
                continue
            gone.append(digest)
            result.freed_bytes += scan.sizes[digest]
        result.evicted += gone
        # The set-aside copies, each with its folder where that is left empty: a blob
        # filled again meanwhile keeps its new copy, and one a request linked after the
        # re-read and put back (BlobStore.confirm) its bytes (a folder deleted whole
        # would take those with it).
        await self.store.delete_in([layout.blob_dir(d) for d in gone], QUARANTINE)

    async def _unlink_layer(self, item: tuple[str, Digest]) -> bool:
        return await self.store.delete(layout.layer_link(*item).removesuffix("/link"))

    def _aside(self, digest: Digest) -> str:
        return f"{layout.blob_dir(digest)}/{QUARANTINE}"

    async def _quarantine(self, digest: Digest) -> bool:
        return await self.store.move(layout.blob_data(digest), self._aside(digest))

    async def _linked_now(self) -> set[Digest]:
        """Every blob and manifest some repository links, read again now."""
        names = await find_repositories(self.store)
        linked: set[Digest] = set()
        for links in await each(names, lambda name: linked_digests(self.store, name)):
            linked |= links
        return linked

    def _report(self, result: SweepResult, scan: CacheScan) -> None:
        cached_now = result.cached_bytes - result.freed_bytes
        if self.metrics is not None:
            self.metrics.eviction_run(
                images_expired=result.expired,
                images_over_size=len(result.images) - result.expired,
                tags=result.tags,
                manifests=result.manifests,
                freed_bytes=result.freed_bytes,
                seconds=result.seconds,
                cached_bytes=cached_now,
            )
        if result.evicted:
            self.cache.stats[("evicted_blobs", "*")] += len(result.evicted)
        if not (result.images or result.evicted):
            log.debug("cache eviction: nothing to evict, %d bytes cached", cached_now)
            return
        over_size = len(result.images) - result.expired
        reasons = [
            *([f"{result.expired} not pulled within their ttl"] if result.expired else []),
            *(
                [f"{over_size} least recently pulled beyond maxsize {self.maxsize} bytes"]
                if over_size
                else []
            ),
        ]
        named = ", ".join(result.named[:_NAMED])
        if len(result.named) > _NAMED:
            named += f" and {len(result.named) - _NAMED} more"
        log.info(
            "cache eviction: %d image(s) evicted%s, %d tag(s), %d manifest(s), %d blob(s), "
            "%d bytes freed in %.2f s; %d bytes cached now%s",
            len(result.images),
            f" ({', '.join(reasons)})" if reasons else "",
            result.tags,
            result.manifests,
            len(result.evicted),
            result.freed_bytes,
            result.seconds,
            cached_now,
            f"; evicted: {named}" if named else "",
        )

    async def sweep_once(self) -> SweepResult | None:
        """Sweep unless another process is sweeping (None): one at a time among every
        worker and replica sharing the storage (the storage driver's lease)."""
        lease = await self.driver.try_lease(LOCK_KEY)
        if lease is None:
            return None
        try:
            return await self.sweep()
        finally:
            await lease.release()

    async def run(self, interval: float) -> None:
        """Sweep every ``interval`` (``sweep_once``)."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep_once()
            except StorageError as exc:
                log.warning("cache eviction failed: %s", exc)
