"""A plain name with a mirror upstream (Docker's registry-mirrors): what was pushed here
answers first, the mirror's cache second. Writes always go to the pushed side, so pushed
content is never replaced by upstream content.

A plain name that registry:2 cached (proxy/registry2_store.py) is read as the mirror's
cache instead, stored where registry:2 put it; a manifest pushed to it makes it a pushed
repository again."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TypeVar

from entrepot.oci.digest import Digest
from entrepot.oci.errors import ErrorCode, RegistryError
from entrepot.proxy.cache import CachedBlobs, CachedManifests, CachedTags, ProxyCache
from entrepot.proxy.referrers import filtered
from entrepot.proxy.upstreams import Upstream
from entrepot.registry.api import (
    BlobContent,
    BlobInfo,
    ManifestContent,
    ManifestPut,
    Repository,
    Writes,
)
from entrepot.registry.local import LocalBlobs, LocalRegistry, blob_unknown
from entrepot.registry.manifests import RepositoryManifests, RepositoryTags

T = TypeVar("T")
_MISSING = frozenset({ErrorCode.MANIFEST_UNKNOWN, ErrorCode.BLOB_UNKNOWN, ErrorCode.NAME_UNKNOWN})


def _unknown_blob(exc: RegistryError) -> str | None:
    """The digest a MANIFEST_BLOB_UNKNOWN error names, if that is what `exc` is."""
    if exc.code is not ErrorCode.MANIFEST_BLOB_UNKNOWN or not isinstance(exc.detail, dict):
        return None
    digest = exc.detail.get("digest")
    return digest if isinstance(digest, str) else None


async def _unless_missing(local: Awaitable[T]) -> T | None:
    """What the local side answers; None when it does not hold it."""
    try:
        return await local
    except RegistryError as exc:
        if exc.code not in _MISSING:
            raise
    return None


def layered_repository(
    local: LocalRegistry, name: str, cache: ProxyCache, mirror: Upstream
) -> Repository:
    """``name`` pushed here, over its mirror's cache. Blobs are written as to the local
    repository; manifest puts adopt mirrored blobs."""
    blobs, manifests = LocalBlobs(local, name), local.manifests.of(name)
    cached = (cache, mirror, mirror.upstream_name(name))
    cached_blobs = CachedBlobs(*cached)
    layered = LayeredManifests(blobs, manifests, cached_blobs, CachedManifests(*cached))
    tags = LayeredTags(RepositoryTags(local.manifests, name), CachedTags(*cached))
    return Repository(
        name, LayeredBlobs(blobs, cached_blobs), layered, tags, Writes(blobs, layered)
    )


def registry2_cache_repository(
    local: LocalRegistry,
    name: str,
    cache: ProxyCache,
    mirror: Upstream,
    pushed: Callable[[str], Awaitable[None]],
) -> Repository:
    """``name`` as registry:2 cached it: the mirror's cache stored under ``name`` itself.
    Pushes write there as to a local repository; ``pushed(name)`` runs before a manifest
    put, which makes it a pushed repository."""
    blobs, manifests = LocalBlobs(local, name), local.manifests.of(name)
    cached = (cache, mirror, mirror.upstream_name(name))
    cached_blobs = CachedBlobs(*cached, stored_as=name)
    cached_manifests = CachedManifests(*cached, stored_as=name)
    layered = LayeredManifests(blobs, manifests, cached_blobs, cached_manifests)
    writes = Writes(blobs, ReleasingManifests(layered, name, pushed))
    return Repository(
        name,
        LayeredBlobs(blobs, cached_blobs),
        cached_manifests,
        CachedTags(*cached, stored_as=name),
        writes,
    )


class ReleasingManifests:
    """Manifest writes to a cached name that tell, first, that the name was pushed to."""

    def __init__(
        self, inner: LayeredManifests, name: str, pushed: Callable[[str], Awaitable[None]]
    ) -> None:
        self.inner = inner
        self.name = name
        self.pushed = pushed

    async def put(self, reference: str, raw: bytes, content_type: str | None) -> ManifestPut:
        await self.pushed(self.name)
        return await self.inner.put(reference, raw, content_type)

    async def delete(self, reference: str) -> tuple[str, ...]:
        # A cached tag or manifest deleted: the next pull fills it again.
        return await self.inner.delete(reference)


class LayeredBlobs:
    def __init__(self, local: LocalBlobs, cached: CachedBlobs) -> None:
        self.local = local
        self.cached = cached

    async def stat(self, digest: Digest) -> BlobInfo:
        # A push asks "is this blob here?" with HEAD before uploading it, and a HEAD cannot
        # be told from a pull's. Answer from what this registry holds (pushed, or in the
        # mirror's cache, which manifest puts adopt), never by asking the upstream: private
        # repository names and digests are not sent to the mirror, and a push does not
        # wait on it.
        found = await _unless_missing(self.local.stat(digest))
        if found is not None:
            return found
        held = await self.cached.held(digest)
        if held is None:
            raise blob_unknown(digest)
        return replace(held, held_by=self.cached.name)

    async def open(self, digest: Digest) -> BlobContent:
        found = await _unless_missing(self.local.open(digest))
        if found is not None:
            return found
        cached = await self.cached.open(digest)
        return replace(cached, info=replace(cached.info, held_by=self.cached.name))


class LayeredTags:
    def __init__(self, local: RepositoryTags, cached: CachedTags) -> None:
        self.local = local
        self.cached = cached

    async def list(self) -> list[str]:
        local = await _unless_missing(self.local.list()) or []
        try:
            upstream = await self.cached.list()
        except RegistryError:
            if local:
                return local
            raise
        return sorted(set(local) | set(upstream))


class LayeredManifests:
    def __init__(
        self,
        local_blobs: LocalBlobs,
        local: RepositoryManifests,
        cached_blobs: CachedBlobs,
        cached: CachedManifests,
    ) -> None:
        self.local_blobs = local_blobs
        self.local = local
        self.cached_blobs = cached_blobs
        self.cached = cached

    async def get(self, reference: str) -> ManifestContent:
        found = await _unless_missing(self.local.get(reference))
        if found is not None:
            return found
        return replace(await self.cached.get(reference), held_by=self.cached.name)

    async def referrers(self, digest: Digest, artifact_type: str | None) -> list[dict[str, object]]:
        entries = await self.local.referrers(digest, artifact_type)
        seen = {entry["digest"] for entry in entries}
        if await _unless_missing(self.local.get(str(digest))) is not None:
            # A pushed image: its digest is not sent to the mirror (as for pushes).
            cached = filtered(await self.cached.held_referrers(digest), artifact_type)
        else:
            cached = await self.cached.referrers(digest, artifact_type)
        return entries + [entry for entry in cached if entry["digest"] not in seen]

    # Writes: always the local (pushed) side.

    async def put(self, reference: str, raw: bytes, content_type: str | None) -> ManifestPut:
        adopted: set[str] = set()
        while True:
            try:
                return await self.local.put(reference, raw, content_type)
            except RegistryError as exc:
                digest = _unknown_blob(exc)
                if digest is None or digest in adopted or not await self._adopt(digest):
                    raise
                adopted.add(digest)

    async def _adopt(self, digest: str) -> bool:
        """Link into the pushed repository a blob the client did not upload because the
        mirror answered its HEAD for this name; fetched through the cache first when only the
        upstream has it. The pushed image then holds its own links and needs nothing cached."""
        parsed = Digest.parse(digest)
        local, cached = self.local_blobs, self.cached_blobs
        try:
            # Only what the mirror vouches for under this name (cached here, or upstream has
            # it): naming a digest gives a pusher no blob of another repository.
            await cached.stat(parsed)
            if await local.registry.blobs.stat(parsed) is None:
                content = await cached.open(parsed)
                async for _ in content.open_stream(0, None):
                    pass  # completes the cache fill
        except RegistryError:
            return False
        return await local.mount(parsed, None) is not None

    async def delete(self, reference: str) -> tuple[str, ...]:
        return await self.local.delete(reference)
