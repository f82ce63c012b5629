"""Coalesced, streaming blob fills from an upstream.

The first client of an uncached blob starts ONE download; every client of the same blob
(the first included) streams from the spool file as the bytes arrive. The download runs in
its own task, so a client that goes away does not cancel what the others share. The blob
enters the cache only after its digest and size are checked; until then each reader holds
back the final byte, so no client ever receives a complete body that turns out wrong: a bad
or cut-off download ends every reader with an error (the connection is aborted).

Across worker processes the spool file itself coordinates: it has a fixed name per blob,
and the process holding an exclusive lock on it (flock) is the one downloading. Every
other process follows: it streams the same file as it grows, and knows the fill is done
when the lock is free and the blob has been published.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import tempfile
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager

from entrepot.oci.digest import Digest, DigestVerifier
from entrepot.registry.streams import pump

log = logging.getLogger("entrepot.proxy.fetch")

_READ_CHUNK = 4 << 20
_EARLY_SYNC = 32 << 20
_FOLLOW_POLL = 0.01  # seconds between a follower's looks at the leader's progress


class FetchFailed(Exception):
    """The shared download failed; ``cause`` is what the first client should be told."""

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class Spool:
    """Where a download lands: a local file path, and what to do with it once verified.

    ``published_path`` (when the spool is shared between processes) is where the blob is
    once published; another process seeing it there knows the fill succeeded.
    """

    def __init__(
        self,
        path: str,
        publish: Callable[[], Awaitable[None]],
        discard: Callable[[], Awaitable[None]],
        published_path: str | None = None,
    ) -> None:
        self.path = path
        self.publish = publish
        self.discard = discard
        self.published_path = published_path

    @property
    def size_path(self) -> str:
        return self.path + ".size"


OpenRemote = Callable[[], AbstractAsyncContextManager[tuple[int | None, AsyncIterator[bytes]]]]


class BlobFill:
    """One upstream download of one blob, shared by every reader."""

    def __init__(self, digest: Digest, spool: Spool, label: str = "") -> None:
        self.label = label or str(digest)  # "<upstream> <repository>@<digest>", for logs
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

    def _adopt_fd(self, fd: int) -> None:
        # One descriptor for the writer and every reader, closed when the last holder of
        # this fill lets go: the spool may be renamed (published) or unlinked (discarded)
        # while readers still stream from it.
        self._fd = fd
        weakref.finalize(self, _close_quietly, fd)

    async def wait_started(self) -> None:
        """Return once the upstream answered with a body; raise if it did not."""
        await self._started.wait()
        if self.error is not None and self.written == 0:
            raise self.error

    async def _advance(self, written: int) -> None:
        async with self._progress:
            self.written = written
            self._progress.notify_all()

    async def _finish(self, error: BaseException | None) -> None:
        if error is not None:
            self.error = error if isinstance(error, FetchFailed) else FetchFailed(str(error), error)
        self._started.set()
        async with self._progress:
            self.finished = True
            self._progress.notify_all()

    async def run(self, open_remote: OpenRemote, fd: int) -> None:
        """Download as the leader, holding the lock on ``fd`` (released on close)."""
        self._adopt_fd(fd)
        verifier = DigestVerifier(self.digest.algorithm)
        error: BaseException | None = None
        started = time.monotonic()
        try:
            async with open_remote() as (size, chunks):
                self.size = size
                if size is not None:
                    await asyncio.to_thread(_write_text, self.spool.size_path, str(size))
                self._started.set()
                await self._receive_and_write(chunks, verifier, fd)
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
            seconds = time.monotonic() - started
            log.info("filled %s: %d bytes in %.2fs", self.label, verifier.size, seconds)
        except BaseException as exc:
            error = exc
            log.warning("fill of %s failed after %d bytes: %s", self.label, self.written, exc)
            with contextlib.suppress(Exception):
                await self.spool.discard()
            with contextlib.suppress(OSError):
                os.unlink(self.spool.size_path)
            if not isinstance(exc, Exception):
                raise
        finally:
            # Releasing the lock tells followers in other processes that we are done.
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            await self._finish(error)

    async def _receive_and_write(
        self, chunks: AsyncIterator[bytes], verifier: DigestVerifier, fd: int
    ) -> None:
        unsynced = 0

        async def consume(data: bytes) -> None:
            nonlocal unsynced
            unsynced += len(data)
            # Sync as we go, so the fsync before publishing finds little left to do.
            sync = unsynced >= _EARLY_SYNC
            if sync:
                unsynced = 0
            await asyncio.to_thread(_hash_and_write, verifier, fd, data, sync)
            await self._advance(self.written + len(data))

        await pump(chunks, consume)

    async def follow(self, fd: int) -> None:
        """Stream another process's download of the same blob from the shared spool."""
        self._adopt_fd(fd)
        error: BaseException | None = None
        try:
            while True:
                size_text = await asyncio.to_thread(_read_text, self.spool.size_path)
                if size_text is not None and self.size is None:
                    self.size = int(size_text)
                    self._started.set()
                stat = await asyncio.to_thread(os.fstat, fd)
                if stat.st_size > self.written:
                    self._started.set()
                    await self._advance(stat.st_size)
                if await asyncio.to_thread(_lock_is_free, fd):
                    break
                await asyncio.sleep(_FOLLOW_POLL)
            published = self.spool.published_path
            stat = await asyncio.to_thread(os.fstat, fd)
            if published is None or not await asyncio.to_thread(os.path.exists, published):
                raise FetchFailed(f"the fill of {self.digest} by another worker failed")
            self.size = stat.st_size
            await self._advance(stat.st_size)
            self.verified = True
        except BaseException as exc:
            error = exc
            if not isinstance(exc, Exception):
                raise
        finally:
            await self._finish(error)

    def as_published(self, path: str) -> None:
        """This fill is already done: read the published blob."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._adopt_fd(fd)
        self.size = self.written = os.fstat(fd).st_size
        self.verified = self.finished = True
        self._started.set()

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


def _open_spool(path: str) -> int:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _lock_is_free(fd: int) -> bool:
    """Whether no process holds the exclusive lock (probing with a shared one)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    fcntl.flock(fd, fcntl.LOCK_UN)
    return True


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _hash_and_write(verifier: DigestVerifier, fd: int, data: bytes, sync: bool) -> None:
    # In a worker thread: hashlib and os.write both release the GIL on large buffers, so
    # the event loop keeps receiving while this runs.
    verifier.update(data)
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
    if sync:
        os.fdatasync(fd)


def _write_text(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip() or None
    except FileNotFoundError:
        return None


class BlobFiller:
    """At most one fill per key at a time in this process, and (for a shared spool) in
    all processes on this machine."""

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
        fill = BlobFill(key[2], spool, f"{key[0]} {key[1]}@{key[2]}")
        # A few small syscalls, inline: deciding who downloads must not yield, or two
        # tasks of this process could both decide to.
        fd = _open_spool(spool.path)
        if _try_lock(fd):
            published = spool.published_path
            if published is not None and os.path.exists(published):
                # Finished by another process after our caller looked: nothing to fetch.
                fcntl.flock(fd, fcntl.LOCK_UN)
                _close_quietly(fd)
                with contextlib.suppress(OSError):
                    os.unlink(spool.path)
                fill.as_published(published)
                return fill
            os.ftruncate(fd, 0)  # a crashed leader may have left bytes behind
            work = fill.run(open_remote, fd)
        else:
            work = fill.follow(fd)
        self._fills[key] = fill

        async def run() -> None:
            try:
                await work
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
