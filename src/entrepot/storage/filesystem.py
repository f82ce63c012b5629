"""The filesystem driver. Key "a/b/c" is the file <root>/a/b/c, exactly as in registry:2's
filesystem driver, so an existing registry:2 data directory is used as is.

Blocking calls run in the loop's default executor, one hop per operation (per chunk for
streams; writers buffer small writes), except whole reads of small objects and stat,
which are cheaper inline than a thread hop. Whole-object writes go to a ".tmp-<random>" file
beside the target, which is fsynced, renamed into place and its directory fsynced: a key
holds the old or the new bytes even across a crash. Temp files are never listed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import itertools
import os
import shutil
import stat as stat_mod
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar, TypeVarTuple

from entrepot.storage.driver import (
    FileInfo,
    Fold,
    Infos,
    IngestState,
    IngestWriter,
    Keys,
    Lease,
    Moved,
    StorageConflict,
    StorageDriver,
    StorageError,
    StorageNotFound,
    StorageWriter,
    below,
    check_key,
)
from entrepot.storage.leases import FlockLeases
from entrepot.storage.writeback import Writeback

__all__ = ["FilesystemDriver"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

TMP_PREFIX = ".tmp-"
# A writer gathers writes smaller than this before handing them to a thread.
WRITE_BUFFER = 256 * 1024

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC
# Errors that mean "no object at this key" for operations on an existing object: a missing
# path, a path through a file, or a directory where an object was expected.
_MISSING = (FileNotFoundError, NotADirectoryError, IsADirectoryError)


# ---- blocking helpers: they run in a worker thread ------------------------------------


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems cannot fsync a directory
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _makedirs(directory: str, parents: bool = True) -> None:
    """mkdir -p that fsyncs the parent of every directory it creates."""
    try:
        os.mkdir(directory)
    except FileNotFoundError:
        if not parents:
            raise
        _makedirs(os.path.dirname(directory))  # ends at "/", which exists
        _makedirs(directory, parents=False)
        return
    except FileExistsError:
        if os.path.isdir(directory):  # made by a concurrent writer
            return
        raise
    _fsync_dir(os.path.dirname(directory))


def _open_tmp(path: str) -> tuple[int, str]:
    """Create a fresh temp file beside ``path`` (making parents); return (fd, tmp path)."""
    directory = os.path.dirname(path)
    tmp = f"{directory}/{TMP_PREFIX}{os.urandom(12).hex()}"
    try:
        fd = os.open(tmp, _NEW_FILE, 0o666)
    except FileNotFoundError:
        _makedirs(directory)
        fd = os.open(tmp, _NEW_FILE, 0o666)
    return fd, tmp


def _write_all(fd: int, *parts: bytes | bytearray) -> None:
    for part in parts:
        view = memoryview(part)
        while view:
            view = view[os.write(fd, view) :]


def _write_all_and_flush(
    fd: int, writeback: Writeback, end: int, *parts: bytes | bytearray
) -> None:
    _write_all(fd, *parts)
    writeback.written(fd, end)


def _finish_new(fd: int, tmp: str, path: str, *parts: bytes | bytearray) -> None:
    """Write, fsync and close ``fd`` (the temp file ``tmp``), then rename it to ``path``.
    On any failure the temp file is removed and nothing changes at ``path``."""
    try:
        try:
            _write_all(fd, *parts)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(os.path.dirname(path))


def _put(path: str, data: bytes) -> None:
    fd, tmp = _open_tmp(path)
    _finish_new(fd, tmp, path, data)


def _put_new(path: str, data: bytes) -> bool:
    """Write a temp file, then hard-link it at ``path``: link() fails if ``path`` exists,
    so the object appears whole or not at all, and only once."""
    fd, tmp = _open_tmp(path)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    _fsync_dir(os.path.dirname(path))
    return True


def _get(path: str) -> bytes:
    # os.open and os.read rather than open(): a link is read on every manifest and blob
    # request, and the file object costs more than the system calls.
    fd = os.open(path, os.O_RDONLY | _CLOEXEC)
    try:
        data = os.read(fd, 1 << 16)
        if not data:
            return data
        parts = [data]
        while more := os.read(fd, 1 << 20):
            parts.append(more)
        return data if len(parts) == 1 else b"".join(parts)
    finally:
        os.close(fd)


def _pread_full(fd: int, size: int, offset: int) -> bytes:
    """Up to ``size`` bytes at ``offset``; fewer only at end of file."""
    data = os.pread(fd, size, offset)
    while 0 < len(data) < size:  # a short read before the end: rare, but allowed
        more = os.pread(fd, size - len(data), offset + len(data))
        if not more:
            break
        data += more
    return data


def _open_read(path: str, offset: int, size: int) -> tuple[int, bytes]:
    """Open ``path`` and read the first chunk. Returns fd -1 when the stream is complete
    (the file is then already closed), so a small object costs one thread hop."""
    fd = os.open(path, os.O_RDONLY | _CLOEXEC)
    try:
        data = _pread_full(fd, size, offset) if size else b""
    except BaseException:
        os.close(fd)
        raise
    if len(data) < size or not size:
        os.close(fd)
        return -1, data
    return fd, data


def _open_append(path: str) -> tuple[int, int]:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | _CLOEXEC)
    try:
        return fd, os.fstat(fd).st_size
    except BaseException:
        os.close(fd)
        raise


def _end_append(
    fd: int, start: int, commit: bool, flush: Callable[[int], None], *parts: bytes | bytearray
) -> None:
    """Commit (write ``parts``, then ``flush``: fsync, or start their writeback) or
    cancel (truncate back to ``start``, fsync); then close. A commit that fails (a full
    disk) is cancelled too: the object keeps only what earlier commits wrote, never a
    partly written tail."""
    try:
        if commit:
            try:
                _write_all(fd, *parts)
                flush(fd)
                return
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
                raise
        os.ftruncate(fd, start)
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | _CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _close_unlink(fd: int, tmp: str) -> None:
    try:
        os.close(fd)
    finally:
        os.unlink(tmp)


def _list(path: str) -> list[str]:
    with os.scandir(path) as entries:
        names = [e.name for e in entries if not e.name.startswith(TMP_PREFIX)]
    names.sort()
    return names


def _sorted_entries(path: str) -> list[str]:
    """A directory's entries in key order: a directory sorts as "name/", which is where
    the keys below it sort. [] for a directory gone meanwhile (or not a directory)."""
    try:
        # A directory's link count is 2 + its subdirectories (ext4, xfs, tmpfs; not btrfs):
        # when every entry is a directory, os.listdir is enough, and much cheaper than a
        # DirEntry per entry (it is most of the time of listing 100,000 repositories).
        links = os.stat(path).st_nlink
        names = os.listdir(path)
        if links == len(names) + 2:
            entries = [f"{name}/" for name in names]
            entries.sort()
            return entries
        if links == 2:  # no subdirectory (a blob's folder, a link's): files only
            entries = [name for name in names if not name.startswith(TMP_PREFIX)]
            entries.sort()
            return entries
        with os.scandir(path) as scan:
            entries = []
            for entry in scan:
                if entry.name.startswith(TMP_PREFIX):
                    continue
                try:
                    entries.append(f"{entry.name}/" if entry.is_dir() else entry.name)
                except OSError:  # gone meanwhile
                    continue
    except (FileNotFoundError, NotADirectoryError):
        return []
    entries.sort()
    return entries


def _walk_keys(root: str, after: str, collapse: str) -> Iterator[str]:
    """The keys under ``root`` in lexical order (see StorageDriver.walk), depth first with
    a stack of open listings (cheaper than nested generators)."""
    stack = [(root + "/", "", iter(_sorted_entries(root)))]
    while stack:
        path, rel, entries = stack[-1]
        for name in entries:
            key = rel + name
            if name[-1] != "/" or (collapse and name.startswith(collapse)):
                if key > after:
                    yield key
            elif not below(after, key):
                stack.append((path + name, key, iter(_sorted_entries(path + name))))
                break
        else:
            stack.pop()


def _take(items: Iterator[T], count: int) -> list[T]:
    return list(itertools.islice(items, count))


def _walk_infos(root: str) -> Iterator[FileInfo]:
    """The objects under ``root`` with size and mtime, in key order: as ``_walk_keys``, but
    one os.scandir per directory (its entry types need no stat) and a stat per file."""
    stack = [("", iter(_scan_entries(root)))]
    while stack:
        rel, entries = stack[-1]
        for name, entry in entries:
            if name[-1] == "/":
                stack.append((rel + name, iter(_scan_entries(entry.path))))
                break
            try:
                st = entry.stat()
            except (FileNotFoundError, NotADirectoryError):
                continue  # deleted meanwhile
            yield FileInfo(rel + name, st.st_size, st.st_mtime, False)
        else:
            stack.pop()


def _walk_folded(root: str, fold: Fold) -> Iterator[FileInfo]:
    """As ``_walk_infos``, with ``fold`` (see StorageDriver.scan): a folded directory costs
    one stat of the object named in its place, or none; an empty directory entered is
    reported as one."""
    stack = [(root + "/", "", iter(_sorted_entries(root)))]
    while stack:
        path, rel, entries = stack[-1]
        for name in entries:
            key = rel + name
            if name[-1] == "/":
                leaf = fold(key)
                if leaf is None:
                    inner = _sorted_entries(path + name)
                    if inner:
                        stack.append((path + name, key, iter(inner)))
                        break
                elif leaf:
                    try:
                        st = os.stat(path + name + leaf)
                    except (FileNotFoundError, NotADirectoryError):
                        pass
                    else:
                        if not stat_mod.S_ISDIR(st.st_mode):
                            yield FileInfo(key + leaf, st.st_size, st.st_mtime, False)
                            continue
                yield FileInfo(key, 0, 0.0, True)
                continue
            try:
                st = os.stat(path + name)
            except (FileNotFoundError, NotADirectoryError):
                continue  # deleted meanwhile
            yield FileInfo(key, st.st_size, st.st_mtime, False)
        else:
            stack.pop()


def _scan_entries(path: str) -> list[tuple[str, os.DirEntry[str]]]:
    """A directory's entries in key order (a directory as "name/"); [] once gone."""
    try:
        with os.scandir(path) as scan:
            entries = []
            for entry in scan:
                if entry.name.startswith(TMP_PREFIX):
                    continue
                try:
                    entries.append((f"{entry.name}/" if entry.is_dir() else entry.name, entry))
                except OSError:  # gone meanwhile
                    continue
    except (FileNotFoundError, NotADirectoryError):
        return []
    entries.sort(key=lambda item: item[0])
    return entries


def _move_all(moves: list[tuple[str, str, str]], sync: bool) -> Moved:
    moved = []
    for src, dst, key in moves:
        try:
            _move(src, dst, key, sync)
        except StorageNotFound:
            moved.append(False)
        else:
            moved.append(True)
    return moved


def _delete_files(paths: list[str]) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except _MISSING:
            continue
        # Its folder too, once empty; rmdir refuses one a writer has put something in.
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(path))


def _move(src: str, dst: str, src_key: str, sync: bool) -> None:
    try:
        os.replace(src, dst)
    except (FileNotFoundError, NotADirectoryError):
        if not os.path.lexists(src):
            raise StorageNotFound(src_key) from None
        _makedirs(os.path.dirname(dst))
        os.replace(src, dst)
    if sync:
        _fsync_dir(os.path.dirname(dst))


def _delete(path: str) -> None:
    if stat_mod.S_ISDIR(os.lstat(path).st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


# ---- async side -------------------------------------------------------------------------

# A walk hands the first batch of this many keys to the loop, then batches growing to
# WALK_BATCH_MAX: a short walk (a catalog page) stops early, a long one (the whole
# catalog) costs a few hundred thread hops, not one per directory.
WALK_BATCH_FIRST = 256
WALK_BATCH_MAX = 16384
# Bulk moves and deletes: this many per thread hop, several hops at once (the kernel
# renames and unlinks in parallel; the GIL is released meanwhile).
BULK_CHUNK = 512


# Keys found valid, remembered (about 350 bytes each); uploads bring new keys on every
# request, so only the recently used ones are kept.
CHECKED_KEYS_CACHE_SIZE = 4096


@functools.lru_cache(maxsize=CHECKED_KEYS_CACHE_SIZE)
def _check_key(key: str) -> None:
    """The contract's key rules, and no segment naming a temp file."""
    check_key(key)
    for segment in key.split("/"):
        if segment.startswith(TMP_PREFIX):
            raise StorageError(f"invalid key: {key!r}")


# Errors that only freeing space fixes: the message tells the operator so.
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


class FilesystemIngest(_ThreadedFile, IngestWriter):
    """See ``FilesystemDriver.ingest``: every write goes to the file at once (others read
    it), written back as it goes (storage/writeback.py, as an upload): the disk works
    while the next bytes arrive, and the fsync at publishing finds little left."""

    def __init__(self, key: str, directory: str, target: str, fd: int) -> None:
        self._key = key
        self._error_path = ""
        self._directory = directory
        self._target = target
        self._fd = fd
        self._size = 0
        self._writeback = Writeback(0)
        self._closed = False

    @property
    def size(self) -> int:
        return self._size

    @property
    def readable(self) -> int:
        return self._size

    async def write(self, data: bytes) -> None:
        if self._closed:
            raise StorageError(f"{self._key}: ingest already published or cancelled")
        end = self._size + len(data)
        await self._call(_write_all_and_flush, self._fd, self._writeback, end, data)
        self._size = end

    async def publish(self) -> None:
        if self._closed:
            raise StorageError(f"{self._key}: ingest already published or cancelled")
        self._closed = True
        await self._call(_publish_ingest, self._fd, self._directory, self._target, self._key)

    async def cancel(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._settle()
        await self._call(_cancel_ingest, self._fd, self._directory)


class FilesystemDriver(StorageDriver):
    """Objects are files under ``rootdirectory``; prefixes are directories.

    Behaviour beyond the contract, matching registry:2's filesystem driver: ``delete``
    leaves emptied parent directories in place, so ``stat`` may report a directory with
    nothing under it and ``list`` of an existing empty directory returns ``[]``.
    The root is created on first write, not here.
    """

    name = "filesystem"
    appends_in_place = True  # O_APPEND on the upload's file

    def __init__(self, rootdirectory: str | Path) -> None:
        root = os.fspath(rootdirectory)
        if not root:
            raise ValueError("rootdirectory must not be empty")
        self._root = os.path.abspath(root)
        self._prefix = self._root if self._root.endswith("/") else self._root + "/"
        # A lease is a lock file at its key: every process using this root meets there.
        self.leases = FlockLeases(self._root)

    @property
    def rootdirectory(self) -> str:
        return self._root

    def __repr__(self) -> str:
        return f"FilesystemDriver({self._root!r})"

    def _path(self, key: str, root_ok: bool = False) -> str:
        """The absolute path for ``key``, or StorageError for a key that could escape the
        root or name a temp file: absolute, empty segments, "." or "..", NUL, backslash."""
        if not key:
            if root_ok:
                return self._root
            raise StorageError("invalid key: empty")
        _check_key(key)
        return self._prefix + key

    def _bulk_path(self, key: str) -> str:
        """``_path`` for the many distinct keys of a bulk call, which would only fill and
        flush its cache: a key with no empty or dot-led segment (temp files' included),
        NUL or backslash needs no closer look."""
        wrapped = f"/{key}/"
        if "//" in wrapped or "/." in wrapped or "\x00" in key or "\\" in key:
            return self._path(key)
        return self._prefix + key

    async def get_content(self, key: str) -> bytes:
        # Inline, not in a thread: the objects read whole are links and manifests, a few
        # hundred bytes from the page cache, and a thread hop costs several times the read
        # (it was most of a manifest request's time).
        try:
            return _get(self._path(key))
        except OSError as exc:
            raise _storage_error(exc, key, True) from exc

    async def put_content(self, key: str, data: bytes) -> None:
        path = self._path(key)
        await _run(key, False, _put, path, data, path=path)

    async def put_new(self, key: str, data: bytes) -> bool:
        return await _run(key, False, _put_new, self._path(key), data)

    async def read(
        self, key: str, offset: int = 0, length: int | None = None, chunk_size: int = 1 << 20
    ) -> AsyncIterator[bytes]:
        """An offset at or past the end of the object yields nothing (no error)."""
        if offset < 0 or (length is not None and length < 0) or chunk_size <= 0:
            raise ValueError("offset and length must be >= 0 and chunk_size > 0")
        path = self._path(key)
        remaining = -1 if length is None else length  # -1: to the end
        size = chunk_size if remaining < 0 else min(chunk_size, remaining)
        loop = asyncio.get_running_loop()
        opening = loop.run_in_executor(None, _open_read, path, offset, size)
        try:
            fd, data = await asyncio.shield(opening)
        except OSError as exc:
            raise _storage_error(exc, key, missing=True) from exc
        except asyncio.CancelledError:
            opening.add_done_callback(_close_opened)
            raise
        inflight: asyncio.Future[bytes] | None = None
        try:
            while True:
                if data:
                    yield data
                offset += len(data)
                remaining -= len(data) if remaining >= 0 else 0
                if fd < 0 or len(data) < size or remaining == 0:
                    return
                size = chunk_size if remaining < 0 else min(chunk_size, remaining)
                inflight = loop.run_in_executor(None, _pread_full, fd, size, offset)
                try:
                    data = await asyncio.shield(inflight)
                except OSError as exc:
                    raise _storage_error(exc, key, missing=False) from exc
        finally:
            if fd >= 0:  # if a cancelled pread still runs, close when it ends
                if inflight is not None and not inflight.done():
                    inflight.add_done_callback(lambda _: os.close(fd))
                else:
                    os.close(fd)

    async def writer(self, key: str, append: bool = False) -> StorageWriter:
        """A streaming writer for ``key``.

        ``append=False``: writes go to a temp file beside the key; ``commit`` fsyncs it
        and renames it over the key (atomic), ``cancel`` deletes it.

        ``append=True``: continues the existing object at ``key`` (StorageNotFound if there
        is none). To avoid copying it, the file is opened in append mode and written in
        place: appended bytes may be visible to readers before ``commit``, which fsyncs
        (``durable=False``: starts writing the tail back, and ``sync`` waits for it);
        ``cancel`` truncates the file back to its size when the writer was opened. A crash
        before ``commit`` or ``cancel`` can leave extra bytes at the end: the resumable
        upload layer must trust its own recorded offset, as registry:2 does.

        Writes smaller than WRITE_BUFFER are gathered in memory before going to disk.
        Callers must finish every writer with ``commit`` or ``cancel``.
        """
        path = self._path(key)
        if append:
            fd, size = await _run(key, True, _open_append, path)
            return FilesystemWriter(key, path, fd, None, size)
        fd, tmp = await _run(key, False, _open_tmp, path)
        return FilesystemWriter(key, path, fd, tmp, 0)

    async def stat(self, key: str) -> FileInfo:
        # Inline for the same reason as get_content: one stat is cheaper than a thread hop.
        try:
            st = os.stat(self._path(key, root_ok=True))
        except OSError as exc:
            raise _storage_error(exc, key, True) from exc
        is_dir = stat_mod.S_ISDIR(st.st_mode)
        return FileInfo(key=key, size=0 if is_dir else st.st_size, mtime=st.st_mtime, is_dir=is_dir)

    async def list(self, prefix: str) -> list[str]:
        return await _run(prefix, True, _list, self._path(prefix, root_ok=True))

    async def walk(
        self, prefix: str, *, after: str = "", collapse: str = ""
    ) -> AsyncGenerator[Keys, None]:
        """os.scandir in a worker thread, a batch of keys per thread hop. The generator
        holds no open directory between batches, so a caller may stop at any time."""
        keys = _walk_keys(self._path(prefix, root_ok=True), after, collapse)
        size = WALK_BATCH_FIRST
        while True:
            batch = await _run(prefix, True, _take, keys, size)
            if batch:
                yield batch
            if len(batch) < size:
                return
            size = min(size * 4, WALK_BATCH_MAX)

    async def scan(self, prefix: str, *, fold: Fold | None = None) -> AsyncGenerator[Infos, None]:
        """A walk in a worker thread, a batch of objects per thread hop."""
        root = self._path(prefix, root_ok=True)
        infos = _walk_infos(root) if fold is None else _walk_folded(root, fold)
        size = WALK_BATCH_FIRST
        while True:
            batch = await _run(prefix, True, _take, infos, size)
            if batch:
                yield batch
            if len(batch) < size:
                return
            size = min(size * 4, WALK_BATCH_MAX)

    async def move_many(self, moves: Sequence[tuple[str, str]], *, sync: bool = True) -> Moved:
        items = [(self._bulk_path(src), self._bulk_path(dst), src) for src, dst in moves]
        chunks = [items[i : i + BULK_CHUNK] for i in range(0, len(items), BULK_CHUNK)]
        done = await asyncio.gather(
            *(_run(chunk[0][2], False, _move_all, chunk, sync) for chunk in chunks)
        )
        return [moved for chunk in done for moved in chunk]

    async def delete_many(self, keys: Sequence[str]) -> None:
        paths = [self._bulk_path(key) for key in keys if "/" in key]
        top = [key for key in keys if "/" not in key]  # their folder is the root: kept
        chunks = [paths[i : i + BULK_CHUNK] for i in range(0, len(paths), BULK_CHUNK)]
        await asyncio.gather(*(_run(c[0], False, _delete_files, c) for c in chunks))
        for key in top:
            with contextlib.suppress(StorageNotFound):
                await self.delete(key)

    async def move(
        self, src: str, dst: str, *, sync: bool = True, if_version: str | None = None
    ) -> None:
        if if_version is not None:  # files have no versions: none can match
            raise StorageConflict(f"{src}: no object of version {if_version!r}")
        await _run(src, False, _move, self._path(src), self._path(dst), src, sync)

    async def delete(self, key: str) -> None:
        await _run(key, True, _delete, self._path(key))

    async def sync(self, key: str) -> None:
        await _run(key, True, _sync, self._path(key))

    async def try_lease(self, key: str) -> Lease | None:
        self._path(key)
        return await self.leases.acquire(key)

    async def lease_holder(self, key: str) -> str | None:
        self._path(key)
        return await self.leases.holder(key)

    async def ingest(self, key: str, dst: str, size: int | None = None) -> IngestWriter:
        """The ingest is the directory ``key`` with the file ``data``, written in place
        (readers read what is there), and ``size``; publishing renames ``data`` to
        ``dst``, so a reader holding it open keeps reading the same bytes."""
        directory, target = self._path(key), self._path(dst)
        fd = await _run(key, False, _open_ingest, directory, size)
        return FilesystemIngest(key, directory, target, fd)

    async def ingested(self, key: str) -> IngestState | None:
        # Inline, like stat: a follower asks every few milliseconds.
        directory = self._path(key)
        try:
            readable = os.stat(f"{directory}/data").st_size
            text = _get(f"{directory}/size").strip()
        except OSError as exc:
            if isinstance(exc, _MISSING):
                return None
            raise _storage_error(exc, key, True) from exc
        return IngestState(readable, int(text) if text else None)

    def read_ingest(self, key: str, offset: int, length: int) -> AsyncIterator[bytes]:
        return self.read(f"{key}/data", offset, length, chunk_size=4 << 20)

    def local_path(self, key: str) -> str:
        return self._path(key)
