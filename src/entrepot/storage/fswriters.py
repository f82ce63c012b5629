"""The filesystem driver's streaming writers: ``FilesystemWriter`` (uploads, appended in
place, written back as they arrive and synced once) and ``FilesystemIngest`` (cache fills,
readable while they grow, published whole or cancelled to nothing); and ``_run``, which
runs a blocking operation in a thread and maps its OSError to the storage errors."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import os
import shutil
from collections.abc import Callable, Sequence

from entrepot.storage.driver import (
    IngestWriter,
    StorageError,
    StorageNotFound,
    StorageWriter,
)
from entrepot.storage.fsbulkops import MISSING as _MISSING
from entrepot.storage.fsbulkops import makedirs as _makedirs
from entrepot.storage.fsops import (
    _NEW_FILE,
    WRITE_BUFFER,
    T,
    Ts,
    _close_unlink,
    _end_append,
    _finish_new,
    _move,
    _write_all_and_flush,
)
from entrepot.storage.writeback import Writeback

_FULL = (errno.ENOSPC, errno.EDQUOT)


def _storage_error(exc: OSError, key: str, missing: bool, path: str = "") -> StorageError:
    if missing and isinstance(exc, _MISSING):
        return StorageNotFound(key)
    # The OS path tells the operator which directory to fix: the one the OS names, else
    # the file written (a failed write or fsync names none), else the key.
    where = exc.filename or path or key
    reason = exc.strerror or str(exc)
    if exc.errno in _FULL:
        reason += " (free space on that filesystem; writes fail until then)"
    return StorageError(f"{where}: {reason}")


async def _run(key: str, missing: bool, fn: Callable[[*Ts], T], *args: *Ts, path: str = "") -> T:
    """Run ``fn(*args)`` in the default executor, mapping OSError to Storage*. ``missing``
    says whether a missing path means StorageNotFound (reads) or StorageError (writes);
    ``path`` is the file named in the error when the OS names none."""
    try:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)
    except OSError as exc:
        raise _storage_error(exc, key, missing, path) from exc


def _close_opened(fut: asyncio.Future[tuple[int, bytes]]) -> None:
    """Close the fd an abandoned ``_open_read`` opened."""
    if not fut.cancelled() and fut.exception() is None:
        fd = fut.result()[0]
        if fd >= 0:
            os.close(fd)


class _ThreadedFile:
    """An open file that worker threads write to, one call at a time. Each call is
    shielded: the thread owns the fd while it runs, so a cancelled caller cannot have the
    file closed under it (``_settle`` waits for that thread first)."""

    _key: str
    _error_path: str  # the path named in errors ("": the OS's filename, else the key)
    _inflight: asyncio.Future[None] | None = None

    async def _call(self, fn: Callable[[*Ts], None], *args: *Ts) -> None:
        fut = asyncio.get_running_loop().run_in_executor(None, fn, *args)
        self._inflight = fut
        try:
            await asyncio.shield(fut)
        except OSError as exc:
            raise _storage_error(exc, self._key, False, self._error_path) from exc

    async def _settle(self) -> None:
        if self._inflight is not None and not self._inflight.done():
            await asyncio.wait([self._inflight])


class FilesystemWriter(_ThreadedFile, StorageWriter):
    """See ``FilesystemDriver.writer``. One task at a time may use a writer."""

    def __init__(self, key: str, path: str, fd: int, tmp: str | None, size: int) -> None:
        self._key = key
        self._path = path
        self._error_path = path
        self._fd = fd
        self._tmp = tmp  # None in append mode
        self._start = size
        self._size = size
        self._buf = bytearray()
        self._writeback = Writeback(size)
        self._closed = False
        self._broken = False

    @property
    def size(self) -> int:
        return self._size

    def _check_usable(self) -> None:
        if self._closed:
            raise StorageError(f"{self._key}: writer already committed or cancelled")
        if self._broken:
            raise StorageError(f"{self._key}: an earlier write failed; cancel the writer")

    async def write(self, data: bytes) -> None:
        await self.write_parts((data,))

    async def write_parts(self, parts: Sequence[bytes]) -> None:
        """One thread hop for all of ``parts``, written as they are (not joined)."""
        self._check_usable()
        n = sum(len(part) for part in parts)
        if n == 0:
            return
        if len(self._buf) + n < WRITE_BUFFER:
            for part in parts:
                self._buf += part
            self._size += n
            return
        buf, self._buf = self._buf, bytearray()
        self._broken = True  # until the write is known to have completed
        # Written back as it goes (see writeback): the disk works while the next bytes
        # arrive, and the fsync at commit (what makes the object durable) finds little.
        end = self._size + n
        await self._call(_write_all_and_flush, self._fd, self._writeback, end, buf, *parts)
        self._broken = False
        self._size = end

    async def commit(self, *, durable: bool = True) -> None:
        self._check_usable()
        self._closed = True
        buf, self._buf = self._buf, bytearray()
        if self._tmp is None:
            # Not durable yet: the disk writes the tail while the client sends its next
            # request, and FilesystemDriver.sync waits for it (a new object is always
            # synced: its rename must not reach the disk before its bytes).
            flush = (
                os.fsync if durable else functools.partial(self._writeback.written, end=self._size)
            )
            await self._call(_end_append, self._fd, self._start, True, flush, buf)
        else:
            await self._call(_finish_new, self._fd, self._tmp, self._path, buf)

    async def cancel(self) -> None:
        """Discard what this writer wrote. A no-op once committed or cancelled."""
        if self._closed:
            return
        self._closed = True
        self._buf = bytearray()
        await self._settle()
        if self._tmp is None:
            await self._call(_end_append, self._fd, self._start, False, os.fsync)
        else:
            await self._call(_close_unlink, self._fd, self._tmp)


# A cache fill writes at most this much per system call: writing 256 MiB to a new file
# on this machine's ext4 took 0.11-0.50 s of CPU 16 MiB a call, 0.11-0.13 s 1 MiB a call.
_INGEST_PIECE = 1 << 20


def _see_write_and_flush(
    fd: int, writeback: Writeback, end: int, parts: Sequence[bytes], see: Callable[[bytes], object]
) -> None:
    for part in parts:
        see(part)
        view = memoryview(part)
        while view:
            view = view[os.write(fd, view[:_INGEST_PIECE]) :]
    writeback.written(fd, end)


def _ignore(_: bytes) -> None:
    pass


def _open_ingest(directory: str, size: int | None) -> int:
    _makedirs(directory)
    with open(f"{directory}/size", "w") as f:
        f.write("" if size is None else str(size))
    return os.open(f"{directory}/data", _NEW_FILE, 0o644)


def _publish_ingest(fd: int, directory: str, target: str, key: str) -> None:
    """Sync, rename into place; the ingest's directory goes whatever happens."""
    try:
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        _move(f"{directory}/data", target, key, True)  # a published blob survives a crash
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _cancel_ingest(fd: int, directory: str) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
    shutil.rmtree(directory, ignore_errors=True)


# A fill asks the disk to make what it wrote durable every this many bytes, in a thread
# of its own while the next bytes arrive: the fsync at publishing (which clients waiting
# for the blob wait for) then finds only the rest. On this machine's disk an fsync of 256
# MiB already written back (sync_file_range) took up to 0.3-0.4 s: the device's flush.
_FLUSH_EVERY = 32 << 20


class FilesystemIngest(_ThreadedFile, IngestWriter):
    """See ``FilesystemDriver.ingest``: every write goes to the file at once (others read
    it), written back as it goes (storage/writeback.py, as an upload) and made durable
    ``_FLUSH_EVERY`` bytes at a time in the background: the disk works while the next
    bytes arrive, and the fsync at publishing finds little left."""

    def __init__(self, key: str, directory: str, target: str, fd: int) -> None:
        self._key = key
        self._error_path = ""
        self._directory = directory
        self._target = target
        self._fd = fd
        self._size = 0
        self._writeback = Writeback(0)
        self._flushed = 0  # bytes an fdatasync was started for
        self._flush: asyncio.Future[None] | None = None
        self._closed = False

    @property
    def size(self) -> int:
        return self._size

    @property
    def readable(self) -> int:
        return self._size

    async def write(self, data: bytes) -> None:
        await self.write_parts((data,), _ignore)

    async def write_parts(self, parts: Sequence[bytes], see: Callable[[bytes], object]) -> None:
        """Each part seen (hashed) and written in the same thread, one hand-off for all."""
        if self._closed:
            raise StorageError(f"{self._key}: ingest already published or cancelled")
        end = self._size + sum(len(part) for part in parts)
        await self._call(_see_write_and_flush, self._fd, self._writeback, end, parts, see)
        self._size = end
        if end - self._flushed >= _FLUSH_EVERY and (self._flush is None or self._flush.done()):
            await self._flushing_done()  # raises what the previous one failed with
            self._flushed = end
            loop = asyncio.get_running_loop()
            self._flush = loop.run_in_executor(None, os.fdatasync, self._fd)

    async def _flushing_done(self) -> None:
        """Wait for the background fdatasync, if any; raise its error."""
        flush, self._flush = self._flush, None
        if flush is None:
            return
        try:
            await asyncio.shield(flush)  # the thread uses the fd: never close it under it
        except OSError as exc:
            raise _storage_error(exc, self._key, False) from exc

    async def publish(self) -> None:
        if self._closed:
            raise StorageError(f"{self._key}: ingest already published or cancelled")
        self._closed = True
        try:
            await self._flushing_done()
        except BaseException:
            await self._call(_cancel_ingest, self._fd, self._directory)
            raise
        await self._call(_publish_ingest, self._fd, self._directory, self._target, self._key)

    async def cancel(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._settle()
        with contextlib.suppress(StorageError):
            await self._flushing_done()
        await self._call(_cancel_ingest, self._fd, self._directory)
