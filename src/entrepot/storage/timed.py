"""A driver that times every action of another, for registry:2's
``registry_storage_action_seconds{driver, action}`` (action names as registry:2's)."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from entrepot.storage.driver import (
    LEASE_TTL,
    Aside,
    FileInfo,
    Fold,
    Infos,
    IngestState,
    IngestWriter,
    Keys,
    Lease,
    LeaseScope,
    Moved,
    Reader,
    Records,
    Shard,
    Stats,
    StorageDriver,
    StorageWriter,
)

if TYPE_CHECKING:
    from entrepot.storage.localwalk import LocalWalk

__all__ = ["TimedDriver"]

Observe = Callable[[str, str, float], None]  # (driver name, action, seconds)
# What observes one (driver name, action): its seconds only, the place found once.
ObserverFor = Callable[[str, str], Callable[[float], None]]


class TimedDriver(StorageDriver):
    """``inner`` with each call timed into ``observe``; behaviour unchanged. A read is
    timed until its first chunk (registry:2 times opening the reader)."""

    def __init__(
        self, inner: StorageDriver, observe: Observe, observer_for: ObserverFor | None = None
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.follow_interval = inner.follow_interval
        self.appends_in_place = inner.appends_in_place
        self.folder_mtimes = inner.folder_mtimes
        self.walks_apart = inner.walks_apart
        self.walks_local = inner.walks_local
        self._observe = observe
        # The actions of every manifest and blob request, observed without the look-up.
        of = observer_for or (lambda driver, action: functools.partial(observe, driver, action))
        self._get_content_seconds = of(self.name, "GetContent")
        self._stat_seconds = of(self.name, "Stat")

    def __repr__(self) -> str:
        return repr(self.inner)  # the storage, for operators' messages

    @contextlib.contextmanager
    def _timed(self, action: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self._observe(self.name, action, time.perf_counter() - start)

    async def get_content(self, key: str) -> bytes:
        # try/finally rather than _timed here and in stat: both run on every manifest or
        # blob request, and a generator-based context manager costs several µs.
        start = time.perf_counter()
        try:
            return await self.inner.get_content(key)
        finally:
            self._get_content_seconds(time.perf_counter() - start)

    async def put_content(self, key: str, data: bytes) -> None:
        with self._timed("PutContent"):
            await self.inner.put_content(key, data)

    async def put_new(self, key: str, data: bytes) -> bool:
        with self._timed("PutContent"):
            return await self.inner.put_new(key, data)

    async def read(
        self, key: str, offset: int = 0, length: int | None = None, chunk_size: int = 1 << 20
    ) -> AsyncIterator[bytes]:
        chunks = self.inner.read(key, offset, length, chunk_size)
        try:
            with self._timed("Reader"):
                first = await anext(chunks, None)
            if first is None:
                return
            yield first
            async for chunk in chunks:
                yield chunk
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    async def writer(self, key: str, append: bool = False) -> StorageWriter:
        with self._timed("Writer"):
            return await self.inner.writer(key, append)

    async def stat(self, key: str) -> FileInfo:
        start = time.perf_counter()
        try:
            return await self.inner.stat(key)
        finally:
            self._stat_seconds(time.perf_counter() - start)

    async def exists(self, key: str) -> bool:
        start = time.perf_counter()
        try:
            return await self.inner.exists(key)
        finally:
            self._stat_seconds(time.perf_counter() - start)

    async def list(self, prefix: str) -> list[str]:
        with self._timed("List"):
            return await self.inner.list(prefix)

    async def move(
        self, src: str, dst: str, *, sync: bool = True, if_version: str | None = None
    ) -> None:
        with self._timed("Move"):
            await self.inner.move(src, dst, sync=sync, if_version=if_version)

    async def delete(self, key: str) -> None:
        with self._timed("Delete"):
            await self.inner.delete(key)

    async def sync(self, key: str) -> None:  # not one of registry:2's actions: not timed
        await self.inner.sync(key)

    async def tally(self, key: str) -> None:  # not one of registry:2's actions: not timed
        await self.inner.tally(key)

    async def walk(
        self, prefix: str, *, after: str = "", collapse: str = ""
    ) -> AsyncGenerator[Keys, None]:
        # The inner driver's own walk (one listing for many keys), not the default one.
        async for batch in self.inner.walk(prefix, after=after, collapse=collapse):
            yield batch

    async def scan(self, prefix: str, *, fold: Fold | None = None) -> AsyncGenerator[Infos, None]:
        async for batch in self.inner.scan(prefix, fold=fold):
            yield batch

    async def scan_apart(
        self,
        prefix: str,
        *,
        fold: Fold | None = None,
        read: Reader | None = None,
        shard: Shard | None = None,
    ) -> AsyncGenerator[Infos, None]:
        async for batch in self.inner.scan_apart(prefix, fold=fold, read=read, shard=shard):
            yield batch

    async def walk_local(
        self,
        prefix: str,
        walk: LocalWalk,
        args: tuple[str, ...] = (),
        *,
        shard: Shard | None = None,
        apart: bool = False,
    ) -> AsyncGenerator[Records, None]:
        batches = self.inner.walk_local(prefix, walk, args, shard=shard, apart=apart)
        async for batch in batches:
            yield batch

    async def prepare_walks(self, walk: LocalWalk, count: int) -> None:
        await self.inner.prepare_walks(walk, count)

    @contextlib.asynccontextmanager
    async def bulk_apart(self) -> AsyncIterator[None]:
        async with self.inner.bulk_apart():
            yield

    async def stat_many(self, keys: Sequence[str]) -> Stats:
        with self._timed("Stat"):
            return await self.inner.stat_many(keys)

    async def move_many(self, moves: Sequence[tuple[str, str]], *, sync: bool = True) -> Moved:
        with self._timed("Move"):
            return await self.inner.move_many(moves, sync=sync)

    async def move_stale_in(
        self,
        folders: Sequence[str],
        src: str,
        dst: str,
        older_than: float,
        *,
        sync: bool = True,
    ) -> Aside:
        with self._timed("Move"):
            return await self.inner.move_stale_in(folders, src, dst, older_than, sync=sync)

    async def delete_many(self, keys: Sequence[str]) -> None:
        with self._timed("Delete"):
            await self.inner.delete_many(keys)

    async def delete_in(self, folders: Sequence[str], name: str) -> None:
        with self._timed("Delete"):
            await self.inner.delete_in(folders, name)

    async def remove_empty_folders(self, keys: Sequence[str]) -> None:
        with self._timed("Delete"):
            await self.inner.remove_empty_folders(keys)

    async def redirect_url(self, key: str) -> str | None:
        return await self.inner.redirect_url(key)

    # Leases and ingests are not registry:2 storage actions: not timed.
    async def try_lease(
        self, key: str, *, ttl: float = LEASE_TTL, scope: LeaseScope = "store"
    ) -> Lease | None:
        return await self.inner.try_lease(key, ttl=ttl, scope=scope)

    async def lease_holder(self, key: str, *, scope: LeaseScope = "store") -> str | None:
        return await self.inner.lease_holder(key, scope=scope)

    async def ingest(self, key: str, dst: str, size: int | None = None) -> IngestWriter:
        return await self.inner.ingest(key, dst, size)

    async def ingested(self, key: str) -> IngestState | None:
        return await self.inner.ingested(key)

    def read_ingest(self, key: str, offset: int, length: int) -> AsyncIterator[bytes]:
        return self.inner.read_ingest(key, offset, length)

    def local_path(self, key: str) -> str | None:
        return self.inner.local_path(key)

    async def close(self) -> None:
        await self.inner.close()
