"""Ingests on S3 (see ``driver.IngestWriter``). An S3 object cannot be read before it is
complete, so an ingest writes its bytes twice: to a multipart upload of the destination
(completed by ``publish``: the blob appears whole, atomically) and, for readers on other
replicas, as numbered part objects under the ingest's key, ``p-<offset>``, the first
small (readers start soon) and growing to the driver's chunk size. A marker object
``size-<n>`` (or ``size-unknown``) carries the announced size. Publishing and cancelling
delete the parts; a cancelled ingest aborts its multipart upload."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import obstore
from obstore.exceptions import BaseError

from entrepot.storage.driver import (
    IngestState,
    IngestWriter,
    StorageError,
    StorageNotFound,
    StorageWriter,
)

if TYPE_CHECKING:
    from entrepot.storage.s3 import S3Driver

__all__ = ["S3Ingest", "ingest_parts", "ingest_state"]

log = logging.getLogger("entrepot.storage.s3")

FIRST_PART = 1 << 20
_PART = "p-"
_SIZE = "size-"


def _part_name(offset: int) -> str:
    return f"{_PART}{offset:016d}"


async def ingest_parts(
    driver: S3Driver, key: str
) -> tuple[list[tuple[int, int, str]], int | None, bool]:
    """(offset, size, object path) of each part in order, the announced size, and whether
    the ingest exists at all (its size marker or a part)."""
    prefix = driver.object_key(key) + "/"
    parts: list[tuple[int, int, str]] = []
    size: int | None = None
    found = False
    try:
        async for batch in obstore.list(driver.store, prefix, chunk_size=1000):
            for meta in batch:
                name = meta["path"][len(prefix) :]
                if name.startswith(_PART):
                    parts.append((int(name[len(_PART) :]), meta["size"], meta["path"]))
                    found = True
                elif name.startswith(_SIZE):
                    found = True
                    text = name[len(_SIZE) :]
                    size = int(text) if text.isdigit() else None
    except (BaseError, OSError) as exc:
        raise driver._error(exc, key) from exc
    parts.sort()
    return parts, size, found


async def ingest_state(driver: S3Driver, key: str) -> IngestState | None:
    parts, size, found = await ingest_parts(driver, key)
    if not found:
        return None
    readable = 0
    for offset, length, _ in parts:
        if offset != readable:
            break  # a later part landed first: only the contiguous start is readable
        readable += length
    return IngestState(readable, size)


async def read_ingest(driver: S3Driver, key: str, offset: int, length: int) -> AsyncIterator[bytes]:
    parts, _, found = await ingest_parts(driver, key)
    if not found:
        raise StorageNotFound(key)
    end = offset + length
    position = offset
    for start, size, path in parts:
        if position >= end:
            return
        if start + size <= position:
            continue
        if start > position:
            break
        stop = min(start + size, end)
        try:
            result = await obstore.get_async(
                driver.store, path, options={"range": (position - start, stop - start)}
            )
            async for chunk in result.stream(min_chunk_size=1 << 20):
                yield bytes(chunk)
        except (BaseError, OSError) as exc:
            raise driver._error(exc, key) from exc
        position = stop
    if position < end:
        raise StorageNotFound(key)  # parts deleted meanwhile (published or cancelled)


class S3Ingest(IngestWriter):
    """See the module docstring. Parts go up one at a time, in the background, in order:
    the next part is cut while the previous one uploads."""

    def __init__(self, driver: S3Driver, key: str, final: StorageWriter) -> None:
        self._driver = driver
        self._key = key
        self._final = final
        self._buf = bytearray()
        self._part_size = FIRST_PART
        self._size = 0
        self._cut = 0  # bytes handed to part uploads
        self._readable = 0
        self._pending: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    async def start(cls, driver: S3Driver, key: str, dst: str, size: int | None) -> S3Ingest:
        marker = driver.object_key(f"{key}/{_SIZE}{'unknown' if size is None else size}")
        try:
            await obstore.put_async(driver.store, marker, b"", use_multipart=False)
        except (BaseError, OSError) as exc:
            raise driver._error(exc, key, missing=False) from exc
        return cls(driver, key, await driver.writer(dst))

    @property
    def size(self) -> int:
        return self._size

    @property
    def readable(self) -> int:
        return self._readable

    async def _upload_part(self, offset: int, data: bytes) -> None:
        path = self._driver.object_key(f"{self._key}/{_part_name(offset)}")
        try:
            await obstore.put_async(self._driver.store, path, data, use_multipart=False)
        except (BaseError, OSError) as exc:
            raise self._driver._error(exc, self._key, missing=False) from exc
        self._readable = offset + len(data)

    async def _cut_part(self) -> None:
        if self._pending is not None:
            await self._pending  # in order; raises if the previous part failed
        data, self._buf = bytes(self._buf), bytearray()
        offset, self._cut = self._cut, self._cut + len(data)
        self._pending = asyncio.create_task(self._upload_part(offset, data))
        self._part_size = min(self._part_size * 2, self._driver.chunksize)

    async def write(self, data: bytes) -> None:
        if self._closed:
            raise StorageError(f"{self._key}: ingest already published or cancelled")
        await self._final.write(data)
        self._buf += data
        self._size += len(data)
        if len(self._buf) >= self._part_size:
            await self._cut_part()

    async def publish(self) -> None:
        if self._closed:
            raise StorageError(f"{self._key}: ingest already published or cancelled")
        self._closed = True
        try:
            if self._pending is not None:
                await self._pending
            await self._final.commit()
        except BaseException:
            await self._final.cancel()
            await self._remove()
            raise
        await self._remove()

    async def cancel(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pending is not None:
            # Let the part in flight land (or fail) before the parts are deleted: cancelling
            # the awaitable does not stop obstore's request, which could then store the
            # part after the deletion and leave it behind.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._pending)
        await self._final.cancel()
        await self._remove()

    async def _remove(self) -> None:
        try:
            await asyncio.shield(self._driver.delete(self._key))
        except StorageNotFound:
            pass
        except StorageError as exc:  # the upload purger removes what is left
            log.warning("could not remove the parts of %s: %s", self._key, exc)
