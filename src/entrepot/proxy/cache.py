"""Cached repositories: an upstream repository seen through the local cache.

Content by digest is immutable: once verified and stored it is never fetched again.
A tag is served from cache while fresh, then revalidated with a HEAD (not counted against
Docker Hub's pull limit); a GET happens only for a digest not cached yet. Concurrent
revalidations of one tag share one upstream request. When the upstream is down, slow or
rate limiting, a cached tag is served stale; uncached content fails fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from cachetools import TLRUCache

from entrepot.oci import mediatypes as mt
from entrepot.oci.digest import Digest, is_digest
from entrepot.oci.errors import ErrorCode, RegistryError
from entrepot.oci.manifest import parse_manifest
from entrepot.oci.names import validate_tag
from entrepot.proxy.fetch import BlobFiller, FetchFailed, Spool
from entrepot.proxy.metrics import CacheEvents
from entrepot.proxy.referrers import UpstreamReferrers, filtered
from entrepot.proxy.upstream_errors import (
    UpstreamError,
    UpstreamInvalid,
    UpstreamNotFound,
    UpstreamOffline,
)
from entrepot.proxy.upstreams import Upstream, error_kind, translate
from entrepot.registry import layout
from entrepot.registry.api import BlobContent, BlobInfo, ManifestContent, Repository
from entrepot.registry.blobs import read_link
from entrepot.registry.local import LocalRegistry
from entrepot.registry.pulls import PullRecorder
from entrepot.requestinfo import note_cache
from entrepot.storage import StorageError, StorageNotFound

if TYPE_CHECKING:  # the client (aiohttp) is imported only with upstreams
    from entrepot.proxy.upstream_client import RemoteBlob

log = logging.getLogger("entrepot.proxy")

ACCEPT = (mt.OCI_INDEX, mt.OCI_MANIFEST, mt.DOCKER_MANIFEST_LIST, mt.DOCKER_MANIFEST)
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


def pinned_marker(name: str, tag: str) -> str:
    """Marks a tag pushed into a cache namespace; registry:2 ignores the extra file."""
    return f"{layout.tag_dir(name, tag)}/pushed"


def cached_repository(cache: ProxyCache, upstream: Upstream, upstream_name: str) -> Repository:
    """An upstream repository seen through the cache: read-only (no ``writes``)."""
    facet = (cache, upstream, upstream_name)
    blobs, manifests, tags = CachedBlobs(*facet), CachedManifests(*facet), CachedTags(*facet)
    name = upstream.cache_name(upstream_name)
    return Repository(name, blobs, manifests, tags, writes=None, namespace=upstream.host)


class _CachedFacet:
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


class CachedManifests(_CachedFacet):
    async def get(self, reference: str) -> ManifestContent:
        self._check_allowed()
        if is_digest(reference):
            digest = await self._manifest_by_digest(Digest.parse(reference), reference)
        else:
            digest = await self._manifest_by_tag(validate_tag(reference))
        manifest = await self._local.manifests.load(digest, reference)
        if self.cache.pulls is not None:
            self.cache.pulls.record(self.name, digest, None if is_digest(reference) else reference)
        if not self._fetched:
            self._count("manifest_hit")
            self._count("manifest_bytes_served", len(manifest.raw))
        return ManifestContent(digest, manifest.media_type, manifest.raw)

    async def _manifest_by_tag(self, tag: str) -> Digest:
        link = layout.tag_current_link(self.name, tag)
        cached = await read_link(self._driver, link)
        # While offline, cached tags do not expire.
        if cached is not None and (
            self.upstream.offline or await self._pinned(tag) or await self._fresh(link)
        ):
            note_cache("hit", self.upstream.host)
            return cached
        self._unless_offline(ErrorCode.MANIFEST_UNKNOWN, tag)
        negative_key = (self.upstream.host, self.upstream_name, tag)
        if self.cache.known_missing(negative_key):
            raise RegistryError(
                ErrorCode.MANIFEST_UNKNOWN, "manifest unknown upstream", {"tag": tag}
            )
        try:
            return await self.cache.once(
                ("tag", self.name, tag), lambda: self._revalidate(tag, cached)
            )
        except UpstreamNotFound as exc:
            self.cache.remember_missing(negative_key, self.upstream.policy.negative_ttl)
            raise self._error(exc, ErrorCode.MANIFEST_UNKNOWN, tag) from exc
        except UpstreamError as exc:
            if cached is None:
                raise self._error(exc, ErrorCode.MANIFEST_UNKNOWN, tag) from exc
            self._count(f"error_{error_kind(exc)}")
            self._count("stale_served")
            note_cache("stale", self.upstream.host)
            log.warning(
                "serving stale %s:%s from cache: upstream %s failed: %s",
                self.name,
                tag,
                self.upstream.host,
                exc,
            )
            return cached

    async def _pinned(self, tag: str) -> bool:
        """A tag pushed into a cache namespace (allowpush) is never replaced from upstream."""
        try:
            await self._driver.stat(pinned_marker(self.name, tag))
        except StorageNotFound:
            return False
        except StorageError:
            return False
        return True

    async def _fresh(self, link: str) -> bool:
        try:
            info = await self._driver.stat(link)
        except StorageError:
            return False
        return self.cache.clock() - info.mtime < self.upstream.policy.tag_ttl

    async def _revalidate(self, tag: str, cached: Digest | None) -> Digest:
        client = self.upstream.client
        if cached is not None:
            self._count("revalidation")
        head = await client.head_manifest(self.upstream_name, tag, ACCEPT)
        digest = head.digest
        note_cache("revalidated", self.upstream.host)
        if digest is None or not await self._adopt_known_manifest(digest):
            if cached is not None and self.upstream.budget.low:
                # A pull would eat into what is left of the upstream's budget (the HEAD
                # did not): keep serving the cached tag for another tagttl.
                self._count("pull_deferred")
                log.warning(
                    "%s:%s changed upstream but %s has %s pulls left: serving the cached one",
                    self.name,
                    tag,
                    self.upstream.host,
                    self.upstream.budget.remaining,
                )
                digest = cached
            else:
                digest = await self._fetch_manifest(str(digest) if digest else tag)
        # Writing the link again also marks the tag fresh (its mtime).
        await self._local.manifests.set_tag(self.name, tag, digest)
        return digest

    async def _fetch_manifest(self, reference: str) -> Digest:
        self._fetched = True
        self._count("manifest_get")
        note_cache("fill", self.upstream.host)
        remote = await self.upstream.client.get_manifest(self.upstream_name, reference, ACCEPT)
        self._count("manifest_bytes_fetched", remote.size)
        return await self._store_manifest(remote.raw, remote.media_type, reference)

    async def _store_manifest(self, raw: bytes | None, media_type: str, reference: str) -> Digest:
        if raw is None:
            raise UpstreamInvalid(f"no manifest body for {reference}")
        try:
            manifest = parse_manifest(raw, media_type)
        except RegistryError as exc:
            raise UpstreamInvalid(
                f"upstream manifest {reference} is invalid: {exc.message}"
            ) from exc
        await self._manifests.store(manifest, None)
        return manifest.digest

    async def _adopt_known_manifest(self, digest: Digest) -> bool:
        """Link a manifest we already hold (cached or pushed elsewhere) instead of a GET."""
        if await read_link(self._driver, layout.manifest_revision_link(self.name, digest)):
            return True
        raw = await self._local.blobs.get(digest)
        if raw is None or Digest.of(raw, digest.algorithm) != digest:
            return False
        await self._manifests.store(parse_manifest(raw), None)
        return True

    async def _manifest_by_digest(self, digest: Digest, reference: str) -> Digest:
        if await read_link(self._driver, layout.manifest_revision_link(self.name, digest)):
            note_cache("hit", self.upstream.host)
            return digest
        self._unless_offline(ErrorCode.MANIFEST_UNKNOWN, reference)
        negative_key = (self.upstream.host, self.upstream_name, reference)
        if self.cache.known_missing(negative_key):
            raise RegistryError(
                ErrorCode.MANIFEST_UNKNOWN, "manifest unknown upstream", {"digest": reference}
            )

        async def fetch() -> Digest:
            client = self.upstream.client
            if await self._local.blobs.stat(digest) is not None:
                # Held already: confirm upstream has it in this repository, then link it.
                await client.head_manifest(self.upstream_name, reference, ACCEPT)
                if await self._adopt_known_manifest(digest):
                    return digest
            return await self._fetch_manifest(reference)

        try:
            stored = await self.cache.once(("digest", self.name, reference), fetch)
        except UpstreamNotFound as exc:
            self.cache.remember_missing(negative_key, self.upstream.policy.negative_ttl)
            raise self._error(exc, ErrorCode.MANIFEST_UNKNOWN, reference) from exc
        except UpstreamError as exc:
            raise self._error(exc, ErrorCode.MANIFEST_UNKNOWN, reference) from exc
        if stored != digest:
            raise RegistryError(
                ErrorCode.UNAVAILABLE, "upstream manifest digest mismatch", status=502
            )
        return digest

    async def referrers(self, digest: Digest, artifact_type: str | None) -> list[dict[str, object]]:
        """The upstream's referrers of ``digest``, kept like a tag (proxy/referrers.py)."""
        self._check_allowed()
        return filtered(await UpstreamReferrers(self).list(digest), artifact_type)

    async def held_referrers(self, digest: Digest) -> list[dict[str, object]]:
        """Referrers of ``digest`` stored in this cached repository; never asks upstream."""
        if self.upstream.names.refusal(self.upstream_name) is not None:
            return []
        return await self._manifests.referrers(digest, None)


class CachedTags(_CachedFacet):
    async def list(self) -> list[str]:
        self._check_allowed()
        if self.upstream.offline:
            cached = await self._local.manifests.tags(self.name, missing_ok=True)
            if cached:
                return cached
            self._unless_offline(ErrorCode.NAME_UNKNOWN, self.upstream_name)
        try:
            return await self.upstream.client.list_tags(self.upstream_name)
        except UpstreamError as exc:
            cached = await self._local.manifests.tags(self.name, missing_ok=True)
            if cached and not isinstance(exc, UpstreamNotFound):
                self._count(f"error_{error_kind(exc)}")
                self._count("stale_served")
                note_cache("stale", self.upstream.host)
                log.warning("tags of %s from cache: upstream failed: %s", self.name, exc)
                return cached
            raise self._error(exc, ErrorCode.NAME_UNKNOWN, self.upstream_name) from exc


class CachedBlobs(_CachedFacet):
    async def held(self, digest: Digest) -> BlobInfo | None:
        """The blob if this cache holds it already (verified) and may serve it; never asks
        upstream."""
        if self.upstream.names.refusal(self.upstream_name) is not None:
            return None
        if await read_link(self._driver, layout.layer_link(self.name, digest)) != digest:
            return None
        return await self._local.blobs.stat(digest)

    async def _confirm_upstream(self, digest: Digest) -> int:
        try:
            return await self.upstream.client.stat_blob(self.upstream_name, digest)
        except UpstreamError as exc:
            raise self._error(exc, ErrorCode.BLOB_UNKNOWN, str(digest)) from exc

    async def _link_if_held(self, digest: Digest, size: int) -> BlobInfo | None:
        """Bytes held for another repository serve this one once upstream confirmed them."""
        held = await self._local.blobs.stat(digest)
        if held is None or held.size != size:
            return None
        await self._local.links.write(self.name, layout.layer_link(self.name, digest), digest)
        return held

    async def stat(self, digest: Digest) -> BlobInfo:
        self._check_allowed()
        cached = await self.held(digest)
        if cached is not None:
            return cached
        fill = self.cache.filler.active(self._fill_key(digest))
        if fill is not None and fill.size is not None:
            return BlobInfo(digest, fill.size)
        self._unless_offline(ErrorCode.BLOB_UNKNOWN, str(digest))
        size = await self._confirm_upstream(digest)
        return await self._link_if_held(digest, size) or BlobInfo(digest, size)

    async def open(self, digest: Digest) -> BlobContent:
        self._check_allowed()
        cached = await self.held(digest)
        if cached is not None:
            note_cache("hit", self.upstream.host)
            return self._served(cached)
        note_cache("fill", self.upstream.host)  # started here, or joined
        key = self._fill_key(digest)
        fill = self.cache.filler.active(key)
        started = fill is None
        if fill is None:
            self._unless_offline(ErrorCode.BLOB_UNKNOWN, str(digest))
            if await self._local.blobs.stat(digest) is not None:
                held = await self._link_if_held(digest, await self._confirm_upstream(digest))
                if held is not None:
                    return self._served(held)
            client = self.upstream.client
            self._count("blob_fill")
            fill = self.cache.filler.start(
                key,
                self._spool(digest),
                lambda: _open_remote(client.open_blob(self.upstream_name, digest)),
            )
        try:
            await fill.wait_started()
        except FetchFailed as exc:
            raise self._fill_failed(exc, digest) from exc
        self._count("blob_miss")
        if started and fill.size is not None:
            self._count("blob_bytes_fetched", fill.size)
        size = fill.size if fill.size is not None else -1
        if self._driver.local_path(layout.blob_data(digest)) is None:
            return BlobContent(BlobInfo(digest, size), None, fill.read)

        async def settled() -> BlobContent | None:
            # Sending the file costs no Python per byte, streaming the fill does: wait for
            # the file when the fill is about to end (at most the upstream's fillwait).
            try:
                if not await fill.settle(self.upstream.policy.fill_wait) or fill.size is None:
                    return None
            except FetchFailed as exc:
                raise self._fill_failed(exc, digest) from exc
            return self._local.blobs.content(BlobInfo(digest, fill.size))

        return BlobContent(BlobInfo(digest, size), None, fill.read, settled=settled)

    def _fill_failed(self, exc: FetchFailed, digest: Digest) -> RegistryError:
        """The spec's error for a client of a fill that failed before it sent a byte."""
        if isinstance(exc.cause, UpstreamError):
            return self._error(exc.cause, ErrorCode.BLOB_UNKNOWN, str(digest))
        return RegistryError(ErrorCode.UNAVAILABLE, f"cache fill failed: {exc}")

    def _served(self, blob: BlobInfo) -> BlobContent:
        self._count("blob_hit")
        self._count("blob_bytes_served", blob.size)
        return self._local.blobs.content(blob)

    def _fill_key(self, digest: Digest) -> tuple[str, str, Digest]:
        return (self.upstream.host, self.upstream_name, digest)

    def _spool(self, digest: Digest) -> Spool:
        """One place per blob and repository where every process and replica filling it
        meets (fetch.py): an upload directory of the repository, so that what a crash
        leaves behind is a stale upload, which upload purging removes."""
        base = layout.upload_dir(self.name, f"fill-{digest.algorithm}-{digest.encoded}")
        link = layout.layer_link(self.name, digest)

        async def link_published() -> None:
            await self._local.links.write(self.name, link, digest)

        return Spool(self._driver, f"{base}/lease", base, layout.blob_data(digest), link_published)


@contextlib.asynccontextmanager
async def _open_remote(
    opening: contextlib.AbstractAsyncContextManager[RemoteBlob],
) -> AsyncIterator[tuple[int | None, AsyncIterator[bytes]]]:
    async with opening as remote:
        yield remote.size, remote.chunks
