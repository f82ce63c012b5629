"""What the cache holds, tag by tag (``entrepot cache ls``): read from storage only, never
from an upstream."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from entrepot.oci.digest import Digest
from entrepot.oci.errors import RegistryError
from entrepot.proxy.cache import ProxyCache
from entrepot.proxy.upstreams import Upstream
from entrepot.registry import layout
from entrepot.registry.blobs import read_link
from entrepot.registry.catalog import list_repositories
from entrepot.registry.pulls import load_times
from entrepot.storage import StorageNotFound


@dataclass(frozen=True)
class CachedTag:
    repository: str  # as stored and served: <host>/<name>
    tag: str
    digest: Digest
    media_type: str
    size: int  # bytes held for it: the manifest, and the children and blobs cached
    cached_at: float  # when its manifest entered the cache
    checked_at: float  # when upstream last confirmed the tag (or it was fetched)
    pulled_at: float | None  # the last pull recorded (registry/pulls.py), None: none recorded


async def cached_tags(cache: ProxyCache, upstreams: Sequence[Upstream]) -> list[CachedTag]:
    """Every tag cached from ``upstreams``, by repository and tag."""
    driver = cache.local.driver
    prefixes = {u.prefix for u in upstreams}
    # Recorded only where the cache cap or a ttl runs the janitor.
    pulls = (await load_times(driver)).by_digest
    found = []
    for name in await list_repositories(driver):
        if name.split("/", 1)[0] not in prefixes:
            continue
        for tag in await cache.local.manifests.tags(name, missing_ok=True):
            link = layout.tag_current_link(name, tag)
            digest = await read_link(driver, link)
            if digest is None:
                continue
            try:
                checked = (await driver.stat(link)).mtime
                cached = (await driver.stat(layout.manifest_revision_link(name, digest))).mtime
                manifest = await cache.local.manifests.load(digest, tag)
            except (StorageNotFound, RegistryError):
                continue  # removed meanwhile, or not held whole
            size = await _held_size(cache, name, digest)
            pulled = pulls.get((name, str(digest)))
            found.append(
                CachedTag(name, tag, digest, manifest.media_type, size, cached, checked, pulled)
            )
    return found


async def _held_size(cache: ProxyCache, name: str, digest: Digest) -> int:
    """The bytes held of a manifest in repository ``name``: itself, its cached children
    and the blobs linked here."""
    local, driver = cache.local, cache.local.driver
    manifest = await local.manifests.load(digest, str(digest))
    total = len(manifest.raw)
    for blob in manifest.required_blobs():
        if await read_link(driver, layout.layer_link(name, blob.digest)) is None:
            continue
        info = await local.blobs.stat(blob.digest)
        total += info.size if info is not None else 0
    for child in manifest.manifests:
        if await read_link(driver, layout.manifest_revision_link(name, child.digest)):
            try:
                total += await _held_size(cache, name, child.digest)
            except RegistryError:
                continue
    return total
