"""What the storage contract's default implementations (StorageDriver's) are made of: a
walk by listing and stat, reads along a scan, a fold over keys listed flat. For drivers
without real directories; a disk's driver has its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from entrepot.storage.objects import (
    FileInfo,
    Fold,
    Infos,
    Keys,
    Reader,
    StorageNotFound,
    below,
    join_key,
)

if TYPE_CHECKING:
    from entrepot.storage.driver import StorageDriver

T = TypeVar("T")

# Calls the default bulk operations (stat_many, move_many, ...) keep in flight.
BULK_CONCURRENCY = 32


async def bounded(calls: list[Coroutine[Any, Any, T]]) -> list[T]:
    slots = asyncio.Semaphore(BULK_CONCURRENCY)

    async def run(call: Coroutine[Any, Any, T]) -> T:
        async with slots:
            return await call

    return list(await asyncio.gather(*(run(c) for c in calls)))


async def read_along(driver: StorageDriver, prefix: str, batch: Infos, read: Reader) -> Infos:
    """``batch`` with the bytes ``read`` names for each object (see ``scan_apart``)."""

    async def one(info: FileInfo) -> FileInfo:
        key = read(join_key(prefix, info.key))
        if key is None:
            return info
        try:
            data = await driver.get_content(key)
        except StorageNotFound:
            return info
        return info._replace(data=data)

    return await bounded([one(info) for info in batch])


async def walk_by_listing(
    driver: StorageDriver, prefix: str, rel: str, after: str, collapse: str
) -> AsyncGenerator[Keys, None]:
    try:
        names = await driver.list(join_key(prefix, rel.rstrip("/")))
    except StorageNotFound:
        return
    entries: list[str] = []
    for name in names:
        try:
            info = await driver.stat(join_key(prefix, rel + name))
        except StorageNotFound:
            continue  # deleted meanwhile
        entries.append(f"{name}/" if info.is_dir else name)
    entries.sort()
    batch: list[str] = []
    for entry in entries:
        key = rel + entry
        if not entry.endswith("/") or (collapse and entry.startswith(collapse)):
            if key > after:
                batch.append(key)
        elif not below(after, key):
            if batch:
                yield batch
                batch = []
            async for inner in walk_by_listing(driver, prefix, key, after, collapse):
                yield inner
    if batch:
        yield batch


class Folder:
    """Applies a scan's ``fold`` to objects listed flat, in key order (the keys under a
    directory are consecutive): for drivers without real directories."""

    def __init__(self, fold: Fold) -> None:
        self.fold = fold
        self.directory: str | None = None  # the folded directory the last key was in
        self.leaf = ""
        self.found: FileInfo | None = None

    def feed(self, infos: Iterable[FileInfo]) -> list[FileInfo]:
        out: list[FileInfo] = []
        for info in infos:
            key = info.key
            if self.directory is not None:
                if key.startswith(self.directory):
                    if self.leaf and key == self.directory + self.leaf:
                        self.found = info
                    continue
                out.append(self._close())
            start = 0
            while (cut := key.find("/", start)) >= 0:
                directory = key[: cut + 1]
                leaf = self.fold(directory)
                if leaf is not None:
                    self.directory, self.leaf = directory, leaf
                    self.found = info if leaf and key == directory + leaf else None
                    break
                start = cut + 1
            else:
                out.append(info)
        return out

    def flush(self) -> list[FileInfo]:
        return [] if self.directory is None else [self._close()]

    def _close(self) -> FileInfo:
        assert self.directory is not None
        found = self.found or FileInfo(self.directory, 0, 0.0, True)
        self.directory, self.found = None, None
        return found
