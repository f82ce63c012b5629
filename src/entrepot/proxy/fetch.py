"""Coalesced, streaming blob fills from an upstream.

The first client of an uncached blob starts ONE download; every client of the same blob
(the first included) streams from the spool file as the bytes arrive. The download runs in
its own task, so a client that goes away does not cancel what the others share. The blob
enters the cache only after its digest and size are checked; until then each reader holds
back the final byte, so no client ever receives a complete body that turns out wrong: a bad
or cut-off download ends every reader with an error (the connection is aborted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager

from entrepot.oci.digest import Digest, DigestVerifier

log = logging.getLogger("entrepot.proxy.fetch")

_READ_CHUNK = 1 << 20


class FetchFailed(Exception):
    """The shared download failed; ``cause`` is what the first client should be told."""

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class Spool:
    """Where a download lands: a local file path, and what to do with it once verified."""

    def __init__(
        self,
        path: str,
        publish: Callable[[], Awaitable[None]],
        discard: Callable[[], Awaitable[None]],
    ) -> None:
        self.path = path
        self.publish = publish
        self.discard = discard


OpenRemote = Callable[[], AbstractAsyncContextManager[tuple[int | None, AsyncIterator[bytes]]]]


class BlobFill:
    """One upstream download of one blob, shared by every reader."""

    def __init__(self, digest: Digest, spool: Spool) -> None:
        self.digest = digest
        self.spool = spool
        self.size: int | None = None
        self.written = 0
        self.finished = False
        self.verified = False
        self.error: FetchFailed | None = None
        self._started = asyncio.Event()
        self._progress = asyncio.Condition()
        self.task: asyncio.Task[None] | None = None
        self._fd = -1

    async def wait_started(self) -> None:
        """Return once the upstream answered with a body; raise if it did not."""
        await self._started.wait()
        if self.error is not None and self.written == 0:
            raise self.error

    async def run(self, open_remote: OpenRemote) -> None:
        verifier = DigestVerifier(self.digest.algorithm)
        try:
            fd = await asyncio.to_thread(_create, self.spool.path)
            # One descriptor for the writer and every reader, closed when the last holder
            # of this fill lets go: the spool may be renamed (published) or unlinked
            # (discarded) while readers still stream from it.
            self._fd = fd
            weakref.finalize(self, _close_quietly, fd)
            async with open_remote() as (size, chunks):
                self.size = size
                self._started.set()
                async for chunk in chunks:
                    verifier.update(chunk)
                    await asyncio.to_thread(_write_all, fd, chunk)
                    async with self._progress:
                        self.written += len(chunk)
                        self._progress.notify_all()
            await asyncio.to_thread(os.fsync, fd)
            actual = verifier.digest()
            if actual != self.digest:
                raise FetchFailed(f"upstream sent bytes with digest {actual}, not {self.digest}")
            if self.size is not None and verifier.size != self.size:
                raise FetchFailed(
                    f"upstream sent {verifier.size} bytes of {self.digest}, announced {self.size}"
                )
            self.size = verifier.size
            await self.spool.publish()
            self.verified = True
        except BaseException as exc:
            self.error = exc if isinstance(exc, FetchFailed) else FetchFailed(str(exc), exc)
            log.warning("fill of %s failed: %s", self.digest, self.error)
            with contextlib.suppress(Exception):
                await self.spool.discard()
            if not isinstance(exc, Exception):
                raise
        finally:
            self._started.set()
            async with self._progress:
                self.finished = True
                self._progress.notify_all()

    async def read(self, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """Stream the blob from ``offset`` as it arrives; the last byte only once verified."""
        end = None if length is None else offset + length
        position = offset
        while end is None or position < end:
            async with self._progress:
                while True:
                    if self.error is not None:
                        raise self.error
                    limit = self.written if self.verified else max(self.written - 1, 0)
                    if end is not None:
                        # A range's last byte, too, waits until the whole blob is verified.
                        limit = min(limit, end if self.verified else end - 1)
                    if position < limit:
                        break
                    if self.verified:
                        return
                    await self._progress.wait()
            want = min(limit - position, _READ_CHUNK)
            chunk = await asyncio.to_thread(os.pread, self._fd, want, position)
            if not chunk:
                raise FetchFailed("spool file ended early")
            position += len(chunk)
            yield chunk


def _create(path: str) -> int:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class BlobFiller:
    """At most one fill per key at a time in this process."""

    def __init__(self) -> None:
        self._fills: dict[tuple[str, str, Digest], BlobFill] = {}

    def active(self, key: tuple[str, str, Digest]) -> BlobFill | None:
        return self._fills.get(key)

    def start(
        self,
        key: tuple[str, str, Digest],
        spool: Spool,
        open_remote: OpenRemote,
    ) -> BlobFill:
        existing = self._fills.get(key)
        if existing is not None:
            return existing
        fill = BlobFill(key[2], spool)
        self._fills[key] = fill

        async def run() -> None:
            try:
                await fill.run(open_remote)
            finally:
                self._fills.pop(key, None)

        # Its own task: no client's disconnect cancels the download the others share.
        fill.task = asyncio.create_task(run(), name=f"fill {key[0]}/{key[1]}@{key[2]}")
        return fill

    async def aclose(self) -> None:
        tasks = [f.task for f in self._fills.values() if f.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task


def temp_spool_path() -> str:
    fd, path = tempfile.mkstemp(prefix="entrepot-fill-")
    os.close(fd)
    return path
