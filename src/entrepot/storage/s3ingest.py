"""Ingests on S3 (see ``driver.IngestWriter``). An S3 object cannot be read before it is
complete, so an ingest writes its bytes to a multipart upload of the destination
(completed by ``publish``: the blob appears whole, atomically) and, for readers on other
replicas, as numbered part objects under the ingest's key, ``p-<offset>``, the first
small (readers start soon) and growing to the driver's chunk size. A marker object
``size-<n>`` (or ``size-unknown``) carries the announced size. Publishing and cancelling
delete the parts; a cancelled ingest aborts its multipart upload.

Readers on one machine share a local mirror of the ingest (``s3mirror``): the leader
writes each byte there too, and on another replica the first reader that needs bytes
copies the parts once from S3 into it for every process of that machine. Without leases
shared across machines (no Redis) only this machine follows the ingest: the leader then
writes no part objects at all, only the mirror.
"""

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
from entrepot.storage.s3mirror import Mirror
from entrepot.storage.s3stream import MIN_PIECE

if TYPE_CHECKING:
    from entrepot.storage.s3 import S3Driver

__all__ = ["S3Ingest", "ingest_parts", "ingest_state"]

log = logging.getLogger("entrepot.storage.s3")

FIRST_PART = 1 << 20
_MIRROR_LOOK = 0.01  # how often a reader looks at a mirror another process feeds
_PART = "p-"
_SIZE = "size-"


def _part_name(offset: int) -> str:
    return f"{_PART}{offset:016d}"


# (offset, size, object path) of each part, the announced size, whether the ingest exists
Listing = tuple[list[tuple[int, int, str]], int | None, bool]


async def ingest_parts(driver: S3Driver, key: str) -> Listing:
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
    # The leader's machine has its bytes locally before they are parts (or without parts);
    # another machine copies the parts into its mirror as soon as they appear, not at the
    # pace of its clients: the parts go once the blob is published.
    mirror = driver.mirrors.open(key, create=readable > 0)
    try:
        if mirror is not None and not mirror.dropped:
            here = mirror.size
            if readable > here and mirror.try_feed():
                driver.mirrors.spawn(_feed(driver, key, mirror, (parts, size, found)))
            readable = max(readable, here)
    except OSError as exc:
        raise _mirror_error(driver, key, exc) from exc
    return IngestState(readable, size)


def _mirror_error(driver: S3Driver, key: str, exc: OSError) -> StorageError:
    return StorageError(f"local mirror of {driver.where(key)}: {exc}")


async def _feed(driver: S3Driver, key: str, mirror: Mirror, listing: Listing) -> None:
    """``_pull`` as the mirror's feeder (taken by the caller), in a task of its own."""
    try:
        await _pull(driver, key, mirror, listing)
    except (StorageError, OSError) as exc:  # a reader that needs these bytes meets it again
        log.debug("copying %s into its local mirror: %s", key, exc)
    finally:
        mirror.stop_feeding()


async def read_ingest(driver: S3Driver, key: str, offset: int, length: int) -> AsyncIterator[bytes]:
    """From this machine's mirror, copying the parts from S3 into it first if no process
    here has them yet."""
    mirror = driver.mirrors.open(key, create=False)
    if mirror is None:
        if not (await ingest_parts(driver, key))[2]:
            raise StorageNotFound(key)  # published or cancelled: the caller reads the blob
        mirror = driver.mirrors.open(key, create=True)
        if mirror is None:  # no local directory for it: read the parts straight
            async for chunk in read_parts(driver, key, offset, length):
                yield chunk
            return
    try:
        await _until_mirrored(driver, key, mirror, offset + length)
        async for chunk in mirror.read(offset, length):
            yield chunk
    except OSError as exc:
        raise _mirror_error(driver, key, exc) from exc


async def _until_mirrored(driver: S3Driver, key: str, mirror: Mirror, end: int) -> None:
    """Return once the mirror holds ``end`` bytes, copying parts into it meanwhile unless
    another process or task here does."""
    while True:
        mirror.touch()
        if mirror.dropped:  # cancelled, or the ingest ended before it was complete here
            raise StorageNotFound(key)
        if mirror.size >= end:
            return
        if mirror.try_feed():
            try:
                if not await _pull(driver, key, mirror):
                    await asyncio.sleep(driver.follow_interval)
            finally:
                mirror.stop_feeding()
        else:
            await asyncio.sleep(_MIRROR_LOOK)


async def _pull(driver: S3Driver, key: str, mirror: Mirror, listing: Listing | None = None) -> bool:
    """Append the parts S3 has beyond the mirror's size (as ``listing`` says, else as
    listed now); whether it grew. A gone ingest drops an incomplete mirror (its readers
    then read the blob)."""
    start = mirror.size
    parts, _, found = listing or await ingest_parts(driver, key)
    if not found:
        mirror.drop()
        raise StorageNotFound(key)
    readable = start
    for offset, length, _ in parts:
        if offset <= readable < offset + length:
            readable = offset + length
    if readable <= start:
        return False
    try:
        async for chunk in read_parts(driver, key, start, readable - start, parts):
            await mirror.append(chunk)
    except StorageNotFound:
        mirror.drop()
        raise
    return True


async def read_parts(
    driver: S3Driver,
    key: str,
    offset: int,
    length: int,
    parts: list[tuple[int, int, str]] | None = None,
) -> AsyncIterator[bytes]:
    """``length`` bytes from ``offset``, from the part objects in S3."""
    if parts is None:
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
            async for chunk in result.stream(min_chunk_size=MIN_PIECE):
                yield chunk  # bytes already (obstore copies each piece out)
        except (BaseError, OSError) as exc:
            raise driver._error(exc, key) from exc
        position = stop
    if position < end:
        raise StorageNotFound(key)  # parts deleted meanwhile (published or cancelled)


class S3Ingest(IngestWriter):
    """See the module docstring. Parts go up one at a time, in the background, in order:
    the next part is cut while the previous one uploads."""

    def __init__(
        self, driver: S3Driver, key: str, final: StorageWriter, mirror: Mirror | None
    ) -> None:
        self._driver = driver
        self._key = key
        self._final = final
        self._mirror = mirror
        self._mirrored = mirror is not None
        # Part objects only for readers elsewhere: other machines, or this one's when it
        # has no mirror.
        self._parts = mirror is None or driver.leases.across_machines
        self._buf = bytearray()
        self._part_size = FIRST_PART
        self._size = 0
        self._cut = 0  # bytes handed to part uploads
        self._readable = 0
        self._pending: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    async def start(cls, driver: S3Driver, key: str, dst: str, size: int | None) -> S3Ingest:
        mirror = driver.mirrors.create(key)
        marker = driver.object_key(f"{key}/{_SIZE}{'unknown' if size is None else size}")
        try:
            await obstore.put_async(driver.store, marker, b"", use_multipart=False)
            final = await driver.writer(dst)
        except BaseException as exc:
            if mirror is not None:
                _end_mirror(mirror)
            if isinstance(exc, (BaseError, OSError)):
                raise driver._error(exc, key, missing=False) from exc
            raise
        return cls(driver, key, final, mirror)

    @property
    def size(self) -> int:
        return self._size

    @property
    def readable(self) -> int:
        return self._size if self._mirrored else self._readable

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

    async def _append_mirror(self, data: bytes) -> None:
        assert self._mirror is not None
        try:
            await self._mirror.append(data)
        except OSError as exc:
            raise _mirror_error(self._driver, self._key, exc) from exc

    async def write(self, data: bytes) -> None:
        if self._closed:
            raise StorageError(f"{self._key}: ingest already published or cancelled")
        if self._mirror is not None:
            await asyncio.gather(self._final.write(data), self._append_mirror(data))
        else:
            await self._final.write(data)
        self._size += len(data)
        if self._parts:
            self._buf += data
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
        mirror, self._mirror = self._mirror, None
        if mirror is not None:
            # Complete and the blob's bytes: this machine's readers go on reading it; the
            # last process here to close it removes it.
            mirror.stop_feeding()
            mirror.touch()
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
        if self._mirror is not None:
            _end_mirror(self._mirror)
        try:
            await asyncio.shield(self._driver.delete(self._key))
        except StorageNotFound:
            pass
        except StorageError as exc:  # the upload purger removes what is left
            log.warning("could not remove the parts of %s: %s", self._key, exc)


def _end_mirror(mirror: Mirror) -> None:
    """The leader's mirror of a failed ingest goes: its readers here stop reading it."""
    mirror.drop()
    mirror.stop_feeding()
    mirror.touch()  # closed here once idle
