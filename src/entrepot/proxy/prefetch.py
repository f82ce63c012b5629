"""Prefetch: images pulled into the cache ahead of time, the platforms asked for only.

An image is named with its registry host (``docker.io/library/nginx:1.27``), which picks
the configured upstream. The work goes through the same cached repository a client's pull
does, so what it fetches is stored, verified and coalesced exactly as then: a blob a
client is pulling at the same moment, in this process or in a server's worker on the same
storage, is downloaded once (fetch.py's lease).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from entrepot.oci import mediatypes as mt
from entrepot.oci.digest import Digest, is_digest
from entrepot.oci.errors import RegistryError
from entrepot.oci.manifest import Descriptor, parse_manifest
from entrepot.oci.names import validate_name, validate_tag
from entrepot.proxy.cache import CachedBlobs, CachedManifests, ProxyCache
from entrepot.proxy.fetch import FetchFailed
from entrepot.proxy.upstreams import Upstream
from entrepot.storage import StorageError

log = logging.getLogger("entrepot.proxy.prefetch")

LOCK_KEY = "entrepot/prefetch.lock"
PARALLEL_BLOBS = 4


class PrefetchError(Exception):
    """An image that cannot be prefetched: the message names it and what is wrong."""


@dataclass(frozen=True)
class ImageRef:
    host: str
    name: str  # as the registry names it, e.g. library/nginx
    reference: str  # a tag or a digest

    def __str__(self) -> str:
        separator = "@" if is_digest(self.reference) else ":"
        return f"{self.host}/{self.name}{separator}{self.reference}"


def parse_image(text: str) -> ImageRef:
    """``HOST/NAME[:TAG][@DIGEST]``; the host is required (Entrepot caches many)."""
    rest, at, digest = text.partition("@")
    host, slash, path = rest.partition("/")
    if not slash or not ("." in host or ":" in host or host == "localhost"):
        raise PrefetchError(
            f"image {text!r} must start with its registry host, "
            "such as docker.io/library/nginx:1.27"
        )
    name, colon, tag = path.rpartition(":") if ":" in path else (path, "", "")
    try:
        validate_name(name)
        if at:
            Digest.parse(digest)
        elif colon:
            validate_tag(tag)
    except RegistryError as exc:
        raise PrefetchError(f"image {text!r} is not a valid reference: {exc.message}") from None
    reference = digest if at else (tag or "latest")
    return ImageRef(host.lower(), name, reference)


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def matches(self, platform: object) -> bool:
        if not isinstance(platform, dict):
            return False
        if (platform.get("os"), platform.get("architecture")) != (self.os, self.architecture):
            return False
        return self.variant is None or platform.get("variant") == self.variant


def parse_platform(text: str) -> Platform:
    """``OS/ARCH[/VARIANT]``, e.g. linux/amd64 or linux/arm64/v8."""
    parts = text.strip().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"platform {text!r} must be OS/ARCH or OS/ARCH/VARIANT, e.g. linux/amd64")
    return Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


class Progress(Protocol):
    """What a prefetch tells as it goes (the CLI draws it; the server logs it)."""

    def blob_started(self, digest: Digest, size: int) -> None: ...
    def blob_advanced(self, digest: Digest, nbytes: int) -> None: ...
    def blob_done(self, digest: Digest, cached_already: bool) -> None: ...


class Quiet:
    def blob_started(self, digest: Digest, size: int) -> None:
        pass

    def blob_advanced(self, digest: Digest, nbytes: int) -> None:
        pass

    def blob_done(self, digest: Digest, cached_already: bool) -> None:
        pass


@dataclass
class PrefetchResult:
    image: ImageRef
    digest: Digest
    manifests: int = 0
    blobs: int = 0
    blobs_cached_already: int = 0
    bytes_fetched: int = 0
    platforms: list[str] = field(default_factory=list)


class Prefetcher:
    def __init__(
        self, cache: ProxyCache, upstreams: Sequence[Upstream], progress: Progress | None = None
    ) -> None:
        self.cache = cache
        self.upstreams = tuple(upstreams)
        self.progress: Progress = progress or Quiet()

    def upstream_for(self, image: ImageRef) -> Upstream:
        for upstream in self.upstreams:
            if image.host in upstream.aliases:
                return upstream
        known = ", ".join(u.host for u in self.upstreams) or "none"
        raise PrefetchError(
            f"image {image}: no upstream is configured for registry {image.host} "
            f"(configured: {known}); add it to proxies"
        )

    async def prefetch(self, image: ImageRef, platforms: Sequence[Platform] = ()) -> PrefetchResult:
        upstream = self.upstream_for(image)
        name = upstream.upstream_name(image.name)
        facet = (self.cache, upstream, name)
        manifests, blobs = CachedManifests(*facet), CachedBlobs(*facet)
        try:
            top = await manifests.get(image.reference)
            result = PrefetchResult(image, top.digest)
            await self._walk(manifests, blobs, top.raw, top.media_type, platforms, result)
        except RegistryError as exc:
            raise PrefetchError(f"image {image}: {exc.message}") from None
        return result

    async def _walk(
        self,
        manifests: CachedManifests,
        blobs: CachedBlobs,
        raw: bytes,
        media_type: str,
        platforms: Sequence[Platform],
        result: PrefetchResult,
    ) -> None:
        result.manifests += 1
        manifest = parse_manifest(raw, media_type)
        if manifest.is_index:
            children = _children(raw, platforms)
            if platforms and not children:
                wanted = ", ".join(str(p) for p in platforms)
                raise PrefetchError(f"image {result.image} has no manifest for {wanted}")
            for child, platform in children:
                if platform:
                    result.platforms.append(platform)
                content = await manifests.get(str(child.digest))
                await self._walk(manifests, blobs, content.raw, content.media_type, (), result)
            return
        needed = [d for d in manifest.required_blobs() if d.media_type not in mt.FOREIGN_LAYERS]
        limit = asyncio.Semaphore(PARALLEL_BLOBS)

        async def one(descriptor: Descriptor) -> None:
            async with limit:
                await self._fill(blobs, descriptor, result)

        await asyncio.gather(*(one(d) for d in needed))

    async def _fill(
        self, blobs: CachedBlobs, descriptor: Descriptor, result: PrefetchResult
    ) -> None:
        digest = descriptor.digest
        result.blobs += 1
        if await blobs.held(digest) is not None:
            result.blobs_cached_already += 1
            self.progress.blob_done(digest, True)
            return
        self.progress.blob_started(digest, descriptor.size)
        content = await blobs.open(digest)  # starts the fill, or joins one under way
        try:
            async for chunk in content.open_stream(0, None):
                result.bytes_fetched += len(chunk)
                self.progress.blob_advanced(digest, len(chunk))
        except FetchFailed as exc:
            raise PrefetchError(f"image {result.image}: blob {digest}: {exc}") from None
        self.progress.blob_done(digest, False)

    async def run_schedule(
        self, images: Sequence[str], platforms: Sequence[Platform], interval: float
    ) -> None:
        """Prefetch ``images`` now and every ``interval``; one process at a time among
        every worker and replica sharing the storage (the storage driver's lease)."""
        driver = self.cache.local.driver
        while True:
            try:
                lease = await driver.try_lease(LOCK_KEY)
            except StorageError as exc:
                log.warning("prefetch skipped this time: %s", exc)
                lease = None
            if lease is not None:
                try:
                    await self.prefetch_all(images, platforms)
                finally:
                    await lease.release()
            await asyncio.sleep(interval)

    async def prefetch_all(self, images: Sequence[str], platforms: Sequence[Platform]) -> int:
        """Each image in turn, logged; returns how many failed."""
        failed = 0
        for text in images:
            try:
                result = await self.prefetch(parse_image(text), platforms)
            except (PrefetchError, StorageError) as exc:
                failed += 1
                log.warning("prefetch failed: %s", exc)
                continue
            log.info("prefetched %s", describe(result))
        return failed


def describe(result: PrefetchResult) -> str:
    platforms = f" ({', '.join(result.platforms)})" if result.platforms else ""
    return (
        f"{result.image}{platforms}: {result.digest}, {result.manifests} manifest(s), "
        f"{result.blobs} blob(s) of which {result.blobs_cached_already} cached already, "
        f"{result.bytes_fetched} bytes fetched"
    )


def _children(raw: bytes, platforms: Sequence[Platform]) -> list[tuple[Descriptor, str]]:
    """An index's children (with their platform, as text) for the platforms asked for."""
    chosen = []
    for index, entry in enumerate(json.loads(raw).get("manifests") or []):
        platform = entry.get("platform") if isinstance(entry, dict) else None
        if platforms and not any(p.matches(platform) for p in platforms):
            continue
        shown = ""
        if isinstance(platform, dict):
            shown = "/".join(
                str(platform[k]) for k in ("os", "architecture", "variant") if platform.get(k)
            )
        chosen.append((Descriptor.from_json(entry, f"manifests[{index}]"), shown))
    return chosen
