"""Cached repositories: an upstream repository seen through the local cache.

Content by digest is immutable: once verified and stored it is never fetched again.
A tag is served from cache while fresh, then revalidated with a HEAD (not counted against
Docker Hub's pull limit); a GET happens only for a digest not cached yet. Concurrent
revalidations of one tag share one upstream request. When the upstream is down, slow or
rate limiting, a cached tag is served stale; uncached content fails fast.
"""

from __future__ import annotations

import logging

from entrepot.oci import mediatypes as mt
from entrepot.oci.digest import Digest, is_digest
from entrepot.oci.errors import ErrorCode, RegistryError
from entrepot.oci.manifest import parse_manifest
from entrepot.oci.names import validate_tag
from entrepot.proxy.cachebase import MAX_NEGATIVE, CachedFacet, ProxyCache
from entrepot.proxy.cachedblobs import CachedBlobs
from entrepot.proxy.referrers import UpstreamReferrers, filtered
from entrepot.proxy.upstream_errors import (
    UpstreamError,
    UpstreamInvalid,
    UpstreamNotFound,
)
from entrepot.proxy.upstreams import Upstream, error_kind
from entrepot.registry import layout
from entrepot.registry.api import ManifestContent, Repository
from entrepot.registry.blobs import read_link
from entrepot.requestinfo import note_cache
from entrepot.storage import StorageError, StorageNotFound

__all__ = [
    "MAX_NEGATIVE",
    "CachedBlobs",
    "CachedManifests",
    "CachedTags",
    "ProxyCache",
    "cached_repository",
    "pinned_marker",
]

log = logging.getLogger("entrepot.proxy")

ACCEPT = (mt.OCI_INDEX, mt.OCI_MANIFEST, mt.DOCKER_MANIFEST_LIST, mt.DOCKER_MANIFEST)


def pinned_marker(name: str, tag: str) -> str:
    """Marks a tag pushed into a cache namespace; registry:2 ignores the extra file."""
    return f"{layout.tag_dir(name, tag)}/pushed"


def cached_repository(cache: ProxyCache, upstream: Upstream, upstream_name: str) -> Repository:
    """An upstream repository seen through the cache: read-only (no ``writes``)."""
    facet = (cache, upstream, upstream_name)
    blobs, manifests, tags = CachedBlobs(*facet), CachedManifests(*facet), CachedTags(*facet)
    name = upstream.cache_name(upstream_name)
    return Repository(name, blobs, manifests, tags, writes=None, namespace=upstream.host)


class CachedManifests(CachedFacet):
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
            raise self._remembered_missing(tag)
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
            raise self._remembered_missing(reference)

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


class CachedTags(CachedFacet):
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
