"""The pull-through cache's Prometheus counters: registry:2's ``registry_proxy_*`` (by
``type``, blob or manifest) and Entrepot's own ``entrepot_*`` (by ``upstream``).

The cache and the upstream clients keep counting into plain ``Counter`` objects as they
always did (``cache.stats[(event, host)] += n``, ``client.requests[kind] += 1``); the two
Counter subclasses here also pass every increment on to Prometheus, so those counts are
the only hooks. With ``PROMETHEUS_MULTIPROC_DIR`` set (the CLI sets it), prometheus-client
writes each worker's values to a file there and a scrape sums them.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from entrepot.proxy.ratelimit import RateBudget

__all__ = ["EVENTS", "CacheEvents", "ProxyMetrics", "RequestCounts"]

# Cache events (the ``event`` of ``cache.stats[(event, host)]``) and what they mean.
EVENTS = {
    "manifest_hit": "a manifest served from cache without asking upstream for it",
    "blob_hit": "a blob served from cache",
    "manifest_get": "a manifest not cached (or a tag that changed) fetched from upstream",
    "blob_miss": "a blob not cached: a fill started or joined",
    "blob_fill": "a blob download into the cache started",
    "manifest_bytes_fetched": "manifest bytes fetched from upstream",
    "blob_bytes_fetched": "blob bytes fetched from upstream",
    "manifest_bytes_served": "manifest bytes served from cache",
    "blob_bytes_served": "blob bytes served from cache",
    "stale_served": "a cached tag or tag list served because the upstream failed",
    "revalidation": "a cached tag checked with upstream after its tagttl",
    "pull_deferred": "a changed tag served from cache: the upstream's pull budget is low",
    "evicted_blobs": "cached blobs evicted (proxycache.maxsize, ttl)",
}
# Upstream failures seen by the cache, counted as ``error_<kind>`` events.
ERROR_KINDS = ("offline", "unavailable", "rate_limited", "denied", "not_found", "invalid")
TYPES = ("blob", "manifest")


class ProxyMetrics:
    """The counters and gauges of the cache and its upstreams, registered in ``registry``
    (which a scrape reads in one process; with several workers the multiprocess files
    are read instead)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        # registry:2's names (registry/proxy/proxymetrics.go).
        self.proxy_requests = counter(
            "registry_proxy_requests", "Proxy requests for blobs and manifests", "type"
        )
        self.proxy_hits = counter("registry_proxy_hits", "Proxy requests served from cache", "type")
        self.proxy_misses = counter("registry_proxy_misses", "Proxy requests not cached", "type")
        self.proxy_pulled = counter(
            "registry_proxy_pulled_bytes", "Bytes pulled from upstreams", "type"
        )
        self.proxy_pushed = counter(
            "registry_proxy_pushed_bytes", "Bytes sent to clients by the proxy", "type"
        )
        # Entrepot's own, per upstream.
        self.hits = counter(
            "entrepot_proxy_hits", "Served from cache, by upstream", "upstream", "type"
        )
        self.misses = counter(
            "entrepot_proxy_misses", "Not cached: fetched from upstream", "upstream", "type"
        )
        self.fills = counter(
            "entrepot_proxy_fills", "Blob downloads into the cache started", "upstream"
        )
        self.fetched = counter(
            "entrepot_proxy_fetched_bytes", "Bytes fetched from upstream", "upstream", "type"
        )
        self.served = counter(
            "entrepot_proxy_served_bytes", "Bytes served from cache", "upstream", "type"
        )
        self.stale = counter(
            "entrepot_proxy_stale_served",
            "Cached tags (or tag lists) served because the upstream failed",
            "upstream",
        )
        self.revalidations = counter(
            "entrepot_proxy_revalidations", "Cached tags checked with upstream", "upstream"
        )
        self.deferred = counter(
            "entrepot_proxy_pulls_deferred",
            "Changed tags served from cache because the upstream's pull budget is low",
            "upstream",
        )
        self.errors = counter(
            "entrepot_proxy_upstream_errors", "Upstream failures, by kind", "upstream", "error"
        )
        self.evicted = counter(
            "entrepot_proxy_evicted_blobs", "Cached blobs evicted (proxycache.maxsize, ttl)"
        )
        # The janitor's runs (proxy/janitor.py): what each evicted, summed over runs.
        self.eviction_runs = counter("entrepot_proxy_eviction_runs", "Cache eviction runs")
        self.eviction_seconds = counter(
            "entrepot_proxy_eviction_seconds", "Time spent in cache eviction runs"
        )
        self.evicted_images = counter(
            "entrepot_proxy_evicted_images",
            "Cached images evicted: not pulled within their ttl, or least recently pulled "
            "over proxycache.maxsize",
            "reason",
        )
        self.evicted_tags = counter("entrepot_proxy_evicted_tags", "Cached tags evicted")
        self.evicted_manifests = counter(
            "entrepot_proxy_evicted_manifests", "Cached manifests evicted"
        )
        self.evicted_bytes = counter(
            "entrepot_proxy_evicted_bytes", "Bytes freed by cache eviction (blobs deleted)"
        )
        self.cached_bytes = Gauge(
            "entrepot_proxy_cached_bytes",
            "Bytes of cached upstream blobs after the last eviction run",
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        for reason in ("ttl", "maxsize"):
            self.evicted_images.labels(reason)
        self.upstream_requests = counter(
            "entrepot_upstream_requests",
            "Requests sent to each upstream registry, by kind",
            "upstream",
            "request",
        )
        # The most recent value any worker saw (multiprocess mode "mostrecent").
        self.ratelimit_remaining = Gauge(
            "entrepot_upstream_ratelimit_remaining",
            "Pulls left in the upstream's window (its ratelimit-remaining header)",
            ["upstream"],
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.ratelimit_limit = Gauge(
            "entrepot_upstream_ratelimit_limit",
            "Pulls allowed in the upstream's window (its ratelimit-limit header)",
            ["upstream"],
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        # 1 while an upstream serves cached content only; with several workers, 1 when any
        # live worker has it offline (each worker checks its upstreams on its own).
        self.offline = Gauge(
            "entrepot_upstream_offline",
            "1 while the upstream is offline (configured, or after failed connections)",
            ["upstream"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        for kind in TYPES:  # registry:2 reports its counters at 0 from the start
            for metric in (self.proxy_requests, self.proxy_hits, self.proxy_misses):
                metric.labels(kind)
            self.proxy_pulled.labels(kind)
            self.proxy_pushed.labels(kind)

    def upstream(self, host: str) -> None:
        """Make the upstream's main series visible (at 0) before its first event."""
        for kind in TYPES:
            self.hits.labels(host, kind)
            self.misses.labels(host, kind)
        self.fills.labels(host)
        self.stale.labels(host)

    def event(self, event: str, host: str, n: float) -> None:
        """Count ``n`` of cache ``event`` (see EVENTS) for upstream ``host``."""
        kind, _, what = event.partition("_")
        if event in ("manifest_hit", "blob_hit"):
            self.proxy_requests.labels(kind).inc(n)
            self.proxy_hits.labels(kind).inc(n)
            self.hits.labels(host, kind).inc(n)
        elif event in ("manifest_get", "blob_miss"):
            self.proxy_requests.labels(kind).inc(n)
            self.proxy_misses.labels(kind).inc(n)
            self.misses.labels(host, kind).inc(n)
        elif what == "bytes_fetched":
            self.proxy_pulled.labels(kind).inc(n)
            self.proxy_pushed.labels(kind).inc(n)  # the client that asked gets them too
            self.fetched.labels(host, kind).inc(n)
        elif what == "bytes_served":
            self.proxy_pushed.labels(kind).inc(n)
            self.served.labels(host, kind).inc(n)
        elif event.startswith("error_"):
            self.errors.labels(host, event.removeprefix("error_")).inc(n)
        else:
            simple = {
                "blob_fill": self.fills,
                "stale_served": self.stale,
                "revalidation": self.revalidations,
                "pull_deferred": self.deferred,
            }.get(event)
            if simple is not None:
                simple.labels(host).inc(n)
            elif event == "evicted_blobs":
                self.evicted.inc(n)

    def eviction_run(
        self,
        *,
        images_expired: int,
        images_over_size: int,
        tags: int,
        manifests: int,
        freed_bytes: int,
        seconds: float,
        cached_bytes: int,
    ) -> None:
        """One run of the cache's eviction (the blobs it deleted count as an event)."""
        self.eviction_runs.inc()
        self.eviction_seconds.inc(seconds)
        self.evicted_images.labels("ttl").inc(images_expired)
        self.evicted_images.labels("maxsize").inc(images_over_size)
        self.evicted_tags.inc(tags)
        self.evicted_manifests.inc(manifests)
        self.evicted_bytes.inc(freed_bytes)
        self.cached_bytes.set(cached_bytes)

    def budget(self, host: str, remaining: int, limit: int | None) -> None:
        self.ratelimit_remaining.labels(host).set(remaining)
        if limit is not None:
            self.ratelimit_limit.labels(host).set(limit)


class _Exporting(collections.Counter[Any]):
    """A Counter whose increments are also passed to ``export(key, delta)``."""

    def _export(self, key: Any, delta: float) -> None:
        raise NotImplementedError

    def __setitem__(self, key: Any, value: Any) -> None:
        delta = value - self.get(key, 0)
        super().__setitem__(key, value)
        if delta > 0:
            self._export(key, delta)


class CacheEvents(_Exporting):
    """``ProxyCache.stats``: (event, upstream host) -> count, also exported."""

    def __init__(self, metrics: ProxyMetrics | None = None) -> None:
        super().__init__()
        self._metrics = metrics

    def _export(self, key: Any, delta: float) -> None:
        if self._metrics is not None:
            event, host = key
            self._metrics.event(event, host, delta)


class RequestCounts(_Exporting):
    """``UpstreamClient.requests``: request kind -> count, also exported; and the hook
    through which the client reports each upstream response's headers."""

    def __init__(
        self, host: str, metrics: ProxyMetrics | None = None, budget: RateBudget | None = None
    ) -> None:
        super().__init__()
        self.host = host
        self._metrics = metrics
        self._budget = budget

    def _export(self, key: Any, delta: float) -> None:
        if self._metrics is not None:
            self._metrics.upstream_requests.labels(self.host, key).inc(delta)

    def saw(self, headers: Mapping[str, str]) -> None:
        """An upstream response's headers: its pull budget, when it reports one."""
        budget = self._budget
        if budget is None or not budget.observe(headers) or budget.remaining is None:
            return
        if self._metrics is not None:
            self._metrics.budget(self.host, budget.remaining, budget.limit)
