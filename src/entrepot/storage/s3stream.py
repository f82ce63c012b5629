"""Streaming for the S3 driver: writers that upload while data arrives, and reads cut
into chunks of the size asked for. See ``s3`` for the design."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import obstore
from obstore.exceptions import BaseError

from entrepot.storage.driver import StorageError, StorageWriter

if TYPE_CHECKING:
    from entrepot.storage.s3 import S3Driver

__all__ = ["MIN_PIECE", "S3Writer", "cut", "reason"]

# Bytes written but not yet handed to the uploader whole: beyond this (and one write),
# ``write`` waits. obstore holds up to ``parts_in_flight`` parts more while they go up.
MAX_QUEUED = 16 << 20
# Reads: obstore merges smaller pieces up to this (a copy); its HTTP client hands over a
# few hundred KiB at a time from a fast server, passed on unmerged.
MIN_PIECE = 256 << 10
_S3_CODE = re.compile(r"<Code>([^<]+)</Code>")
_HTTP_STATUS = re.compile(r"status code: (\d{3}[^:]*)")


# The cloud instance metadata service, which obstore asks for credentials none are given.
_METADATA = "169.254.169.254"


def reason(exc: BaseException) -> str:
    """A short reason: S3's error code and the HTTP status when the server answered
    (obstore's message holds the whole response and a debug dump), else its first line."""
    text = str(exc).strip()
    if _METADATA in text:  # obstore looked for credentials where cloud instances have them
        return (
            "no S3 credentials: set storage.s3.accesskey and secretkey (or AWS_ACCESS_KEY_ID "
            "and AWS_SECRET_ACCESS_KEY); no cloud instance metadata service gave any"
        )
    if "Connection refused" in text:  # under obstore's "error sending request"
        return "connection refused: check storage.s3.regionendpoint (its host and port)"
    code, status = _S3_CODE.search(text), _HTTP_STATUS.search(text)
    if code and status:
        return f"{code.group(1)} (HTTP {status.group(1).strip()})"
    lines = text.splitlines()
    return lines[0][:300] if lines else type(exc).__name__


async def cut(pieces: AsyncIterator[bytes], size: int) -> AsyncIterator[bytes]:
    """The pieces as they come (obstore's are ``bytes`` already, copied out of its
    buffers), those over ``size`` bytes cut into chunks of at most ``size``."""
    async for piece in pieces:
        if len(piece) <= size:
            yield piece
            continue
        view = memoryview(piece)
        for start in range(0, len(view), size):
            yield bytes(view[start : start + size])


class _Aborted(Exception):
    """Raised into the uploader by ``cancel``."""


class S3Writer(StorageWriter):
    """See the module docstring. One task at a time may use a writer."""

    def __init__(self, driver: S3Driver, key: str, existing: int | None) -> None:
        self._driver = driver
        self._key = key
        self._existing = existing  # bytes to copy first (append), or None
        self._size = existing or 0
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._queued = 0  # bytes in the queue
        self._room = asyncio.Event()  # set when the uploader takes something
        self._cancelled = False
        self._closed = False
        self._version: str | None = None
        self._upload = asyncio.ensure_future(self._run())

    @property
    def size(self) -> int:
        return self._size

    @property
    def version(self) -> str | None:
        return self._version

    async def _chunks(self) -> AsyncIterator[bytes | memoryview]:
        if self._existing:
            async for chunk in self._driver.read(self._key, chunk_size=self._driver.chunksize):
                yield chunk
        # Large writes go to obstore a part at a time (views, no copy): handed whole, each
        # is copied at once and cut into several parts uploading beyond max_concurrency.
        step = self._driver.chunksize
        while (item := await self._queue.get()) is not None:
            view = memoryview(item)
            for start in range(0, len(view), step):
                if self._cancelled:
                    break
                yield view[start : start + step]
            self._queued = max(0, self._queued - len(item))  # cancel may have emptied it
            self._room.set()
        if self._cancelled:  # raising makes put_async abort the multipart upload
            raise _Aborted

    async def _run(self) -> None:
        d = self._driver
        result = await obstore.put_async(
            d.store,
            d.object_key(self._key),
            self._chunks(),
            chunk_size=d.chunksize,
            max_concurrency=d.parts_in_flight,
        )
        # radosgw completes a multipart upload without an ETag header (obstore then has
        # none): ask for it. Another writer's object could be read in the few
        # milliseconds between (a client racing itself on one upload): see uploads.py.
        self._version = result.get("e_tag") or (await d.stat(self._key)).version

    def _check_usable(self) -> None:
        if self._closed:
            raise StorageError(f"{self._key}: writer already committed or cancelled")
        if self._upload.done():
            raise self._failure()

    def _failure(self) -> StorageError:
        exc = None if self._upload.cancelled() else self._upload.exception()
        why = reason(exc) if exc is not None else "upload stopped"
        return StorageError(f"{self._driver.where(self._key)}: upload failed: {why}")

    async def _put(self, item: bytes | None) -> None:
        """Queue ``item`` for the uploader once there is room (bounded in bytes, so memory
        stays bounded whatever the size of each write), or raise if the upload failed."""
        size = 0 if item is None else len(item)
        while self._queued and self._queued + size > MAX_QUEUED:
            self._room.clear()
            room = asyncio.ensure_future(self._room.wait())
            await asyncio.wait([room, self._upload], return_when=asyncio.FIRST_COMPLETED)
            if not room.done():
                room.cancel()
                raise self._failure()
        self._queue.put_nowait(item)
        self._queued += size

    async def write(self, data: bytes) -> None:
        self._check_usable()
        if data:
            await self._put(bytes(data))
            self._size += len(data)

    async def commit(self, *, durable: bool = True) -> None:
        self._check_usable()  # a completed S3 object is durable: ``durable`` changes nothing
        self._closed = True
        await self._put(None)
        try:
            await self._upload
        except StorageError:
            raise
        except (BaseError, OSError, ValueError) as exc:
            raise self._failure() from exc

    async def cancel(self) -> None:
        """Abort the multipart upload; a no-op once committed or cancelled."""
        if self._closed:
            return
        self._closed = True
        self._cancelled = True
        while not self._queue.empty():  # the uploader need not send what it has not taken
            self._queue.get_nowait()
        self._queued = 0
        self._queue.put_nowait(None)
        with contextlib.suppress(BaseException):  # the abort is the expected outcome
            await self._upload
