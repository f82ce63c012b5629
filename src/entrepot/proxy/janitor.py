"""The cache's size cap: cached upstream blobs beyond ``maxsize`` are evicted, the ones
cached longest ago first. Pushed content is never touched: a blob any local repository
links (or a cache repository that holds pushed tags, with allowpush) is not a candidate.

A blob is quarantined (renamed) before it is deleted, then its protection is checked
again, so a push that links the same bytes meanwhile keeps them. Evicted blobs are
fetched again from upstream when next asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from entrepot.oci.digest import Digest
from entrepot.proxy.cache import ProxyCache
from entrepot.registry import layout
from entrepot.registry.catalog import list_repositories
from entrepot.registry.usage import try_lock
from entrepot.storage import StorageDriver, StorageError, StorageNotFound

log = logging.getLogger("entrepot.proxy.janitor")

LOCK_KEY = "entrepot/janitor.lock"


@dataclass
class CachedBlob:
    digest: Digest
    size: int
    cached_at: float
    repositories: list[str] = field(default_factory=list)


@dataclass
class SweepResult:
    cached_bytes: int
    evicted: list[Digest]
    freed_bytes: int


async def _children(driver: StorageDriver, prefix: str) -> list[str]:
    try:
        return await driver.list(prefix)
    except StorageNotFound:
        return []


async def _layer_digests(driver: StorageDriver, name: str) -> list[Digest]:
    found = []
    for algorithm in await _children(driver, layout.layers_dir(name)):
        for encoded in await _children(driver, f"{layout.layers_dir(name)}/{algorithm}"):
            found.append(Digest(algorithm, encoded))
    return found


async def _has_pushed_tags(driver: StorageDriver, name: str) -> bool:
    for tag in await _children(driver, layout.tags_dir(name)):
        try:
            await driver.stat(f"{layout.tag_dir(name, tag)}/pushed")
        except StorageNotFound:
            continue
        return True
    return False


class CacheJanitor:
    def __init__(self, cache: ProxyCache, prefixes: Sequence[str], maxsize: int) -> None:
        self.cache = cache
        self.driver = cache.local.driver
        self.prefixes = frozenset(prefixes)
        self.maxsize = maxsize

    def _is_cache(self, name: str) -> bool:
        return name.split("/", 1)[0] in self.prefixes

    async def _protected(self, local_repos: list[str]) -> set[Digest]:
        protected: set[Digest] = set()
        for name in local_repos:
            protected.update(await _layer_digests(self.driver, name))
        return protected

    async def _still_protected(self, digest: Digest, local_repos: list[str]) -> bool:
        # The catalog index, not the list the sweep began with: a push may have created
        # the repository that now links these bytes.
        current = [n for n in await self.cache.local.index.names() if not self._is_cache(n)]
        for name in {*local_repos, *current}:
            try:
                await self.driver.stat(layout.layer_link(name, digest))
            except StorageNotFound:
                continue
            return True
        return False

    async def sweep(self) -> SweepResult:
        repos = await list_repositories(self.driver)
        local_repos = [name for name in repos if not self._is_cache(name)]
        cache_repos: list[str] = []
        for name in repos:
            if self._is_cache(name):
                # allowpush: a cache repository holding pushed tags is pushed content.
                (local_repos if await _has_pushed_tags(self.driver, name) else cache_repos).append(
                    name
                )
        protected = await self._protected(local_repos)
        blobs: dict[Digest, CachedBlob] = {}
        for name in cache_repos:
            for digest in await _layer_digests(self.driver, name):
                if digest in protected:
                    continue
                entry = blobs.get(digest)
                if entry is None:
                    try:
                        info = await self.driver.stat(layout.blob_data(digest))
                    except StorageNotFound:
                        continue  # linked but not held (evicted, or never filled)
                    entry = blobs[digest] = CachedBlob(digest, info.size, info.mtime)
                entry.repositories.append(name)
        total = sum(blob.size for blob in blobs.values())
        result = SweepResult(total, [], 0)
        for blob in sorted(blobs.values(), key=lambda b: b.cached_at):
            if total - result.freed_bytes <= self.maxsize:
                break
            if await self._evict(blob, local_repos):
                result.evicted.append(blob.digest)
                result.freed_bytes += blob.size
        if result.evicted:
            self.cache.stats[("evicted_blobs", "*")] += len(result.evicted)
            log.info(
                "cache over %d bytes: evicted %d blob(s), %d bytes",
                self.maxsize,
                len(result.evicted),
                result.freed_bytes,
            )
        return result

    async def _evict(self, blob: CachedBlob, local_repos: list[str]) -> bool:
        data = layout.blob_data(blob.digest)
        quarantine = f"{layout.blob_dir(blob.digest)}/evicting"
        try:
            await self.driver.move(data, quarantine)
        except StorageNotFound:
            return False  # gone already (another sweep)
        if await self._still_protected(blob.digest, local_repos):
            # A push linked these bytes meanwhile: they stay.
            with contextlib.suppress(StorageError):
                await self.driver.move(quarantine, data)
            return False
        with contextlib.suppress(StorageNotFound):
            await self.driver.delete(quarantine)
        for name in blob.repositories:
            link = layout.layer_link(name, blob.digest)
            with contextlib.suppress(StorageNotFound):
                await self.driver.delete(link.removesuffix("/link"))
        return True

    async def run(self, interval: float) -> None:
        """Sweep every ``interval``; one process at a time does it (a lock on a local
        file, when the storage is a local disk)."""
        lock_path = self.driver.local_path(LOCK_KEY)
        while True:
            await asyncio.sleep(interval)
            try:
                fd = try_lock(lock_path) if lock_path is not None else None
                if lock_path is not None and fd is None:
                    continue  # another worker is sweeping
                try:
                    await self.sweep()
                finally:
                    if fd is not None:
                        os.close(fd)
            except StorageError as exc:
                log.warning("cache size check failed: %s", exc)
