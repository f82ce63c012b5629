"""The storage calls background work makes over a whole store (garbage collection, cache
eviction, usage metering): at most a bounded number in flight, each after a pace (a
collection rests while the machine serves), the bulk ones in slices.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Sequence
from typing import TypeVar

from entrepot.oci.digest import Digest
from entrepot.registry.digestnames import link_digest, parse_digest
from entrepot.registry.gcwalk import WALK_SHARDS
from entrepot.storage import FileInfo, StorageDriver, StorageNotFound
from entrepot.storage.driver import Aside, Fold, Infos, Reader, Records, Shard
from entrepot.storage.localwalk import LocalWalk

T = TypeVar("T")
R = TypeVar("R")


async def _no_pause() -> None:
    return None


# Keys per bulk call (stat_many, move_many, delete_many): a pause can come between calls.
BULK_SLICE = 1024
# Bulk calls in flight at once where the driver works apart (Limited.apart).
BULK_AHEAD = 3


class Limited:
    """The driver calls collection makes, at most ``limit`` of them in flight, each after
    ``pace()`` (a Pacer's: a collection rests while the machine serves)."""

    def __init__(
        self,
        driver: StorageDriver,
        limit: int,
        *,
        apart: bool = False,
        pace: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.driver = driver
        self._slots = asyncio.Semaphore(limit)
        self.apart = apart  # the store's walks: the driver's scan_apart
        self.pace = pace or _no_pause

    async def scan(
        self, prefix: str, fold: Fold, read: Reader | None = None, shard: Shard | None = None
    ) -> AsyncGenerator[Infos, None]:
        """With ``read``, objects may carry what it names, and ``shard`` applies (only
        apart: see scan_apart). Paced between batches: a walk apart waits on its full
        pipe meanwhile."""
        if self.apart:
            batches = self.driver.scan_apart(prefix, fold=fold, read=read, shard=shard)
        else:
            batches = self.driver.scan(prefix, fold=fold)
        async for batch in self._paced(batches):
            yield batch

    def walk_shards(self) -> list[Shard | None]:
        """How walks of a tree share it: WALK_SHARDS walks where walks apart take CPUs of
        their own (a disk), else one."""
        if self.apart and self.driver.walks_apart:
            return [(index, WALK_SHARDS) for index in range(WALK_SHARDS)]
        return [None]

    async def walk_local(
        self, prefix: str, walk: LocalWalk, args: tuple[str, ...], shard: Shard | None
    ) -> AsyncGenerator[Records, None]:
        """The driver's walk_local (only where it ``walks_local``), apart where this walks
        apart; paced between batches as ``scan``."""
        batches = self.driver.walk_local(prefix, walk, args, shard=shard, apart=self.apart)
        async for batch in self._paced(batches):
            yield batch

    async def prepare_walks(self, walk: LocalWalk, count: int) -> None:
        """The driver's prepare_walks, where this walks apart."""
        if self.apart:
            await self.driver.prepare_walks(walk, count)

    async def _paced(self, batches: AsyncGenerator[T, None]) -> AsyncGenerator[T, None]:
        try:
            async for batch in batches:
                yield batch
                await self.pace()
        finally:
            await batches.aclose()

    async def stat_many(self, keys: Sequence[str]) -> list[FileInfo | None]:
        found = await self._sliced(keys, self.driver.stat_many)
        return [info for part in found for info in part]

    async def move_many(self, moves: Sequence[tuple[str, str]], *, sync: bool) -> list[bool]:
        async def move(part: Sequence[tuple[str, str]]) -> list[bool]:
            return await self.driver.move_many(part, sync=sync)

        moved = await self._sliced(moves, move)
        return [ok for part in moved for ok in part]

    async def move_stale_in(
        self, folders: Sequence[str], src: str, dst: str, older_than: float, *, sync: bool
    ) -> Aside:
        async def move(part: Sequence[str]) -> Aside:
            return await self.driver.move_stale_in(part, src, dst, older_than, sync=sync)

        moved = await self._sliced(folders, move)
        return [answer for part in moved for answer in part]

    async def delete_many(self, keys: Sequence[str]) -> None:
        await self._sliced(keys, self.driver.delete_many)

    async def delete_in(
        self, folders: Sequence[str], name: str, done: Callable[[int], None] | None = None
    ) -> None:
        """The driver's delete_in, ``done`` told the count of each slice deleted (one call
        for all: between calls of a slice or a few each, the driver's processes idled)."""

        async def delete(part: Sequence[str]) -> None:
            await self.driver.delete_in(part, name)

        await self._sliced(folders, delete, done)

    async def _sliced(
        self,
        items: Sequence[T],
        call: Callable[[Sequence[T]], Awaitable[R]],
        done: Callable[[int], None] | None = None,
    ) -> list[R]:
        """``call`` on each BULK_SLICE of ``items``, each after a pace, the results in
        order, ``done`` told each slice's length once it is done; apart, BULK_AHEAD slices
        at once: the caller builds the next slice's keys and reads the last one's answers
        while the driver's processes work."""
        slices = [items[start : start + BULK_SLICE] for start in range(0, len(items), BULK_SLICE)]
        if not slices:
            return []
        gate = asyncio.Semaphore(BULK_AHEAD if self.apart else 1)

        async def one(part: Sequence[T]) -> R:
            async with gate:
                await self.pace()
                result = await call(part)
            if done is not None:
                done(len(part))
            return result

        return list(await asyncio.gather(*(one(part) for part in slices)))

    async def children(self, prefix: str) -> list[str]:
        """``list``, with a missing prefix (or one left empty) as no children."""
        await self.pace()
        async with self._slots:
            try:
                return await self.driver.list(prefix)
            except StorageNotFound:
                return []

    async def stat(self, key: str) -> FileInfo | None:
        await self.pace()
        async with self._slots:
            try:
                return await self.driver.stat(key)
            except StorageNotFound:
                return None

    async def get(self, key: str) -> bytes | None:
        await self.pace()
        async with self._slots:
            try:
                return await self.driver.get_content(key)
            except StorageNotFound:
                return None

    async def move(self, src: str, dst: str, *, sync: bool = True) -> bool:
        await self.pace()
        async with self._slots:
            try:
                await self.driver.move(src, dst, sync=sync)
            except StorageNotFound:
                return False
            return True

    async def delete(self, key: str) -> bool:
        await self.pace()
        async with self._slots:
            try:
                await self.driver.delete(key)
            except StorageNotFound:
                return False
            return True

    async def digests(self, prefix: str) -> set[Digest]:
        """The digests named by ``<prefix>/<algorithm>/<encoded>`` directories."""
        found: set[Digest] = set()
        for algorithm in await self.children(prefix):
            for encoded in await self.children(f"{prefix}/{algorithm}"):
                digest = parse_digest(f"{algorithm}:{encoded}")
                if digest is not None:
                    found.add(digest)
        return found

    async def linked(self, prefix: str) -> dict[Digest, float]:
        """The digests under ``prefix`` (as ``digests``) whose ``link`` file exists, with its
        mtime: registry:2 deletes a manifest by removing the link and keeps the folder."""
        found: dict[Digest, float] = {}
        for digest in await self.digests(prefix):
            info = await self.stat(f"{prefix}/{digest.algorithm}/{digest.encoded}/link")
            if info is not None:
                found[digest] = info.mtime
        return found

    async def read_link(self, key: str) -> Digest | None:
        raw = await self.get(key)
        return None if raw is None else link_digest(raw)


# Items ``each`` works on at once: more than the storage calls in flight (the driver
# wrapper bounds those), few enough that 100,000 items cost no task each.
_EACH_AT_ONCE = 128


async def each(items: Iterable[T], work: Callable[[T], Awaitable[R]]) -> list[R]:
    """``work`` on every item, many at once, the results in the items' order."""
    todo = list(enumerate(items))
    results: list[R] = [None] * len(todo)  # type: ignore[list-item]  # each filled below
    queue = iter(todo)

    async def worker() -> None:
        for index, item in queue:
            results[index] = await work(item)

    await asyncio.gather(*(worker() for _ in range(min(_EACH_AT_ONCE, len(todo)))))
    return results
