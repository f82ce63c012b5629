"""What every cached repository shares: the cache's state (ProxyCache: the local store,
fills and revalidations in flight, upstream 404s remembered, event counts) and the base of
each facet (blobs, manifests, tags) of a repository seen through it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from cachetools import TLRUCache

from entrepot.oci.errors import ErrorCode, RegistryError
from entrepot.proxy.fetch import BlobFiller
from entrepot.proxy.metrics import CacheEvents
from entrepot.proxy.upstream_errors import (
    UpstreamError,
    UpstreamOffline,
)
from entrepot.proxy.upstreams import Upstream, error_kind, translate
from entrepot.registry.local import LocalRegistry
from entrepot.registry.pulls import PullRecorder

log = logging.getLogger("entrepot.proxy")

T = TypeVar("T")
# Upstream 404s remembered at most (each until its negativettl ends): a client asking for
# many missing names cannot grow memory without end.
MAX_NEGATIVE = 10_000


def _until_expiry(_key: object, expiry: float, _now: float) -> float:
    return expiry


class ProxyCache:
    """State shared by every cached repository: the local store, in-flight work, stats."""

    def __init__(
        self,
        local: LocalRegistry,
        clock: Callable[[], float] = time.time,
        events: CacheEvents | None = None,
    ) -> None:
        self.local = local
        self.filler = BlobFiller()
        self.clock = clock
        # (event, upstream host) -> count (events: proxy/metrics.py), exported as metrics.
        self.stats = events if events is not None else CacheEvents()
        self._negative: TLRUCache[tuple[str, str, str], float] = TLRUCache(
            MAX_NEGATIVE, _until_expiry, timer=time.monotonic
        )
        self._inflight: dict[tuple[str, ...], asyncio.Task[object]] = {}
        # Pulls recorded for the cache's eviction (set when eviction is configured).
        self.pulls: PullRecorder | None = None

    async def once(self, key: tuple[str, ...], work: Callable[[], Awaitable[T]]) -> T:
        """Run ``work`` once for all concurrent callers with the same key. The shared task
        is shielded: one caller going away does not cancel it for the others."""
        task = self._inflight.get(key)
        if task is None:

            async def run() -> object:
                try:
                    return await work()
                finally:
                    self._inflight.pop(key, None)

            task = asyncio.create_task(run())
            self._inflight[key] = task
        result = await asyncio.shield(task)
        return result  # type: ignore[return-value]

    def total(self, event: str) -> int:
        return sum(n for (name, _), n in self.stats.items() if name == event)

    def remember_missing(self, key: tuple[str, str, str], ttl: float) -> None:
        self._negative[key] = time.monotonic() + ttl

    def known_missing(self, key: tuple[str, str, str]) -> bool:
        return key in self._negative  # expired entries are not in it

    async def aclose(self) -> None:
        await self.filler.aclose()


class CachedFacet:
    """What every facet of a cached repository works with."""

    def __init__(
        self,
        cache: ProxyCache,
        upstream: Upstream,
        upstream_name: str,
        *,
        stored_as: str | None = None,
    ) -> None:
        self.cache = cache
        self.upstream = upstream
        self.upstream_name = upstream_name
        # Where the cached copy is stored: ``<host>/<name>``, or where registry:2 cached it.
        self.name = stored_as or upstream.cache_name(upstream_name)
        self._local = cache.local
        self._driver = cache.local.driver
        self._manifests = cache.local.manifests.of(self.name)
        self._fetched = False  # this request fetched a manifest (else: served from cache)

    def _count(self, event: str, n: int = 1) -> None:
        self.cache.stats[(event, self.upstream.host)] += n

    def _error(self, exc: UpstreamError, missing: ErrorCode, reference: str) -> RegistryError:
        kind = error_kind(exc)
        self._count(f"error_{kind}")
        # One line per upstream error ("not found" and "offline" are routine: info), with
        # the request id.
        log.log(
            logging.INFO if kind in ("not_found", "offline") else logging.WARNING,
            "upstream %s: %s %s: %s: %s",
            self.upstream.host,
            self.upstream_name,
            reference,
            kind.replace("_", " "),
            exc,
        )
        return translate(exc, self.upstream.host, missing, reference)

    def _check_allowed(self) -> None:
        """DENIED when the upstream's allow and deny lists refuse this name: nothing is
        fetched, and what was cached before is not served either."""
        self.upstream.names.check(self.upstream_name)

    def _unless_offline(self, missing: ErrorCode, reference: str) -> None:
        """The spec's "unknown" error, saying why, for content not cached while offline."""
        reason = self.upstream.client.health.reason
        if reason is not None:
            offline = UpstreamOffline(reason, upstream=self.upstream.host)
            raise self._error(offline, missing, reference)

    def _remembered_missing(self, reference: str) -> RegistryError:
        """MANIFEST_UNKNOWN for a manifest the upstream answered 404 for a moment ago
        (``negativettl``): the first answer's words and detail, and that it is remembered."""
        return RegistryError(
            ErrorCode.MANIFEST_UNKNOWN,
            f"not found upstream at {self.upstream.host} (remembered: negativettl)",
            {"reference": reference},
        )
