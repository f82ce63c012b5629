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
import functools
import itertools
import os
import stat as stat_mod
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from entrepot.storage import earlywalks
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
    StorageConflict,
    StorageDriver,
    StorageError,
    StorageNotFound,
    StorageWriter,
    check_key,
    check_names,
)
from entrepot.storage.fsbulk import BulkHelpers, HelpersGone
from entrepot.storage.fsbulkops import MISSING as _MISSING
from entrepot.storage.fsbulkops import OPS as BULK_OPS
from entrepot.storage.fschildren import WalkSpares, fold_name, walk_apart, walk_local_apart
from entrepot.storage.fsops import (
    TMP_PREFIX,
    WALK_BATCH_FIRST,
    WALK_BATCH_MAX,
    _delete,
    _get,
    _list,
    _move,
    _open_append,
    _open_read,
    _open_tmp,
    _pread_full,
    _put,
    _put_new,
    _remove_empty,
    _sync,
    _take,
    _tally,
    _walk_folded,
    _walk_infos,
    _walk_keys,
)
from entrepot.storage.fswriters import (
    FilesystemIngest,
    FilesystemWriter,
    _close_opened,
    _open_ingest,
    _run,
    _storage_error,
)
from entrepot.storage.leases import FlockLeases
from entrepot.storage.localwalk import LocalWalk, walk_disk
from entrepot.storage.smallfiles import SmallFiles, stat_is_live

__all__ = ["FilesystemDriver"]

Item = TypeVar("Item")

# Bulk stats, moves and deletes: split in BULK_THREADS chunks of at least BULK_CHUNK keys,
# one thread hop each. The kernel renames and unlinks in parallel, but each call takes the
# GIL back: more threads than CPUs only fight over it (a collection's 55,600 deletes took
# 1.7 times as long in 512-key chunks on the default executor's 6 threads).
BULK_THREADS = 2
BULK_CHUNK = 512


# A bulk call's chunks, and what each chunk's call returned.
_Chunks = list[list[Any]]
_Results = list[Any]


def _chunks(items: list[Item]) -> list[list[Item]]:
    size = max(BULK_CHUNK, -(-len(items) // BULK_THREADS))
    return [items[i : i + size] for i in range(0, len(items), size)]


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


async def _in_batches(prefix: str, items: Iterator[Item]) -> AsyncGenerator[list[Item], None]:
    """A walk's items, taken in a worker thread a batch per hop (growing from
    WALK_BATCH_FIRST to WALK_BATCH_MAX); nothing stays open between batches."""
    size = WALK_BATCH_FIRST
    while True:
        batch = await _run(prefix, True, _take, items, size)
        if batch:
            yield batch
        if len(batch) < size:
            return
        size = min(size * 4, WALK_BATCH_MAX)


def _next_batch(batches: Iterator[Records]) -> Records | None:
    return next(batches, None)


class FilesystemDriver(StorageDriver):
    """Objects are files under ``rootdirectory``; prefixes are directories.

    Behaviour beyond the contract, matching registry:2's filesystem driver: ``delete``
    leaves emptied parent directories in place, so ``stat`` may report a directory with
    nothing under it and ``list`` of an existing empty directory returns ``[]``.
    The root is created on first write, not here.
    """

    name = "filesystem"
    appends_in_place = True  # O_APPEND on the upload's file
    folder_mtimes = True
    walks_apart = True
    walks_local = True

    def __init__(self, rootdirectory: str | Path) -> None:
        root = os.fspath(rootdirectory)
        if not root:
            raise ValueError("rootdirectory must not be empty")
        self._root = os.path.abspath(root)
        self._prefix = self._root if self._root.endswith("/") else self._root + "/"
        # A lease is a lock file at its key: every process using this root meets there.
        self.leases = FlockLeases(self._root)
        self._read_whole = SmallFiles().read if stat_is_live(self._root) else _get
        self._helpers: BulkHelpers | None = None  # see bulk_apart
        self._spares: WalkSpares | None = None  # see prepare_walks

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

    def _checked(self, keys: Sequence[str]) -> list[str]:
        """``keys``, each found valid as ``_bulk_path`` finds it, all at once, in C: the
        keys joined by "/\x01/" (which keeps one key's end from meeting the next one's
        start; a key may hold a \x01) are searched once for what a key wrapped in "/" is
        searched for there, the first key's start and the last one's end looked at alone.
        Not joined to the root: the bulk calls by folder send them so, and join the root
        to each parent folder once (making 55,600 paths was 0.03-0.04 s of a CPU each in a
        collection's set-aside and deletes). Wrapped whole instead (two copies of 3.7 MB
        for the bench store's 55,600 blob folders), and with a count of its separators,
        the check cost three times as much, with the helpers waiting for it."""
        if not keys:
            return []
        joined = "/\x01/".join(keys)
        if (
            keys[0][:1] in ("", "/", ".")
            or keys[-1][-1:] in ("", "/")
            or "\x00" in joined  # these three: one character's search (memchr)
            or "\\" in joined
            or ("." in joined and "/." in joined)
            or "//" in joined
        ):
            for key in keys:
                self._bulk_path(key)  # the one at fault raises
        return list(keys)

    def _bulk_paths(self, keys: Sequence[str]) -> list[str]:
        """``_bulk_path`` of each key (``_checked``), joined to the root all at once."""
        if not keys:
            return []
        prefix = self._prefix
        return (prefix + f"\x00{prefix}".join(self._checked(keys))).split("\x00")

    async def get_content(self, key: str) -> bytes:
        # Inline, not in a thread: the objects read whole are links and manifests, a few
        # hundred bytes from the page cache, and a thread hop costs several times the read
        # (it was most of a manifest request's time). Small ones kept, checked by a stat.
        try:
            return self._read_whole(self._path(key))
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

    async def exists(self, key: str) -> bool:
        # access() is the same path walk as stat() without building a stat_result (about
        # half a blob HEAD's stat); a miss is stat'ed for its precise error.
        if os.access(self._path(key, root_ok=True), os.F_OK):
            return True
        return await super().exists(key)

    async def list(self, prefix: str) -> list[str]:
        return await _run(prefix, True, _list, self._path(prefix, root_ok=True))

    async def walk(
        self, prefix: str, *, after: str = "", collapse: str = ""
    ) -> AsyncGenerator[Keys, None]:
        """os.scandir in a worker thread, a batch of keys per thread hop. The generator
        holds no open directory between batches, so a caller may stop at any time."""
        keys = _walk_keys(self._path(prefix, root_ok=True), after, collapse)
        async for batch in _in_batches(prefix, keys):
            yield batch

    async def scan(self, prefix: str, *, fold: Fold | None = None) -> AsyncGenerator[Infos, None]:
        """A walk in a worker thread, a batch of objects per thread hop."""
        root = self._path(prefix, root_ok=True)
        infos = _walk_infos(root) if fold is None else _walk_folded(root, fold)
        async for batch in _in_batches(prefix, infos):
            yield batch

    async def scan_apart(
        self,
        prefix: str,
        *,
        fold: Fold | None = None,
        read: Reader | None = None,
        shard: Shard | None = None,
    ) -> AsyncGenerator[Infos, None]:
        """The walk, and the reads ``read`` names, in a child process (see fswalk)."""
        name = fold_name(fold)
        reader = None if read is None else fold_name(read)
        if name is None or (read is not None and reader is None):  # a closure: walked here
            async for batch in super().scan_apart(prefix, fold=fold, read=read, shard=shard):
                yield batch
            return
        reading = None if reader is None else (reader, self._root, prefix)
        async for batch in walk_apart(self._path(prefix, root_ok=True), name, reading, shard):
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
        """A batch per thread hop, or apart in a child process (see fswalk)."""
        name = fold_name(walk)
        if name is None:
            raise StorageError(f"a local walk must be a module-level function, not {walk!r}")
        if prefix:
            check_key(prefix)
        if apart and self.walks_apart:
            found = walk_local_apart(self._root, prefix, name, args, shard, self._spares)
            async for records in found:
                yield records
            return
        batches = walk_disk(self._root, prefix, walk, args, shard)
        while (batch := await _run(prefix, True, _next_batch, batches)) is not None:
            yield batch

    async def stat_many(self, keys: Sequence[str]) -> Stats:
        """A chunk of keys per thread hop (or helper process: see bulk_apart)."""
        chunks = _chunks(self._bulk_paths(keys))
        done = await self._bulk("stat", keys[0] if keys else "", True, chunks)
        return [
            None if st is None else FileInfo(key, *st)
            for key, st in zip(keys, itertools.chain.from_iterable(done), strict=True)
        ]

    async def move_many(self, moves: Sequence[tuple[str, str]], *, sync: bool = True) -> Moved:
        done = await self._bulk("move", *self._move_chunks(moves), sync)
        return [moved for chunk in done for moved in chunk]

    async def move_stale_in(
        self,
        folders: Sequence[str],
        src: str,
        dst: str,
        older_than: float,
        *,
        sync: bool = True,
    ) -> Aside:
        key, chunks = self._folder_chunks(folders, src, dst)
        done = await self._bulk(
            "aside", key, False, chunks, src, dst, older_than, sync, self._prefix
        )
        return [answer for chunk in done for answer in chunk]

    async def delete_many(self, keys: Sequence[str]) -> None:
        paths = [self._bulk_path(key) for key in keys if "/" in key]
        top = [key for key in keys if "/" not in key]  # their folder is the root: kept
        await self._bulk("delete", keys[0] if keys else "", False, _chunks(paths))
        for key in top:
            with contextlib.suppress(StorageNotFound):
                await self.delete(key)

    async def remove_empty_folders(self, keys: Sequence[str]) -> None:
        paths = [self._path(key) for key in keys]
        await _run(keys[0] if keys else "", False, _remove_empty, paths)

    async def delete_in(self, folders: Sequence[str], name: str) -> None:
        key, chunks = self._folder_chunks(folders, name)
        await self._bulk("delete_in", key, False, chunks, name, self._prefix)

    def _folder_chunks(self, folders: Sequence[str], *names: str) -> tuple[str, _Chunks]:
        """``_bulk``'s key and chunks for a call by folders and names: one key a folder
        sent (relative to the root, sent with them), the helpers (or threads) join the
        names, each checked here once."""
        check_names(*names)
        for name in names:
            _check_key(name)  # no temp file's name either
        return (folders[0] if folders else ""), _chunks(self._checked(folders))

    def _move_chunks(self, moves: Sequence[tuple[str, str]]) -> tuple[str, bool, _Chunks]:
        """``_bulk``'s key, missing and chunks for moving each (src, dst) pair."""
        pairs = [(self._bulk_path(src), self._bulk_path(dst)) for src, dst in moves]
        return (moves[0][0] if moves else ""), False, _chunks(pairs)

    async def _bulk(
        self, op: str, key: str, missing: bool, chunks: _Chunks, *args: Any
    ) -> _Results:
        """``fsbulkops.OPS[op](chunk, *args)`` for each chunk, at once: in the helper
        processes while there are some (bulk_apart), else in threads; OSError as
        StorageError (``key`` and ``missing`` as in ``_run``)."""
        fn = BULK_OPS[op]
        if self._helpers is None or not self._helpers.available:
            return list(await asyncio.gather(*(_run(key, missing, fn, c, *args) for c in chunks)))
        calls = [self._helpers.call(op, (chunk, *args)) for chunk in chunks]
        # Every chunk's call ended (none left running) before an error is raised.
        done: _Results = list(await asyncio.gather(*calls, return_exceptions=True))
        for n, result in enumerate(done):
            if isinstance(result, HelpersGone):  # the last one ended: in a thread
                done[n] = await _run(key, missing, fn, chunks[n], *args)
            elif isinstance(result, OSError):
                raise _storage_error(result, key, missing) from result
            elif isinstance(result, BaseException):
                raise result
        return done

    async def prepare_walks(self, walk: LocalWalk, count: int) -> None:
        """Spare walk children (fschildren.WalkSpares), with ``walk``'s module imported."""
        if self._spares is not None:
            await self._spares.start(count, walk.__module__)

    @contextlib.asynccontextmanager
    async def bulk_apart(self) -> AsyncIterator[None]:
        """Bulk calls in two helper processes (fsbulk) for the block: a collection's
        hundred thousand stats, moves and deletes took twice as long in two threads,
        which mostly waited for each other's GIL. Spare walk children (prepare_walks)
        only within it: they end with it."""
        if self._helpers is not None:  # nested: the outer block's helpers serve
            yield
            return
        helpers = self._helpers = BulkHelpers(BULK_THREADS)
        spares = self._spares = WalkSpares()
        try:
            await spares.adopt(earlywalks.taken())
            await helpers.start()
            yield
        finally:
            self._helpers = self._spares = None
            await spares.stop()
            await helpers.stop()

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

    async def tally(self, key: str) -> None:
        await _run(key, False, _tally, self._path(key))

    async def try_lease(
        self, key: str, *, ttl: float = LEASE_TTL, scope: LeaseScope = "store"
    ) -> Lease | None:
        self._path(key)  # one machine's disk: every scope is its lock files
        return await self.leases.acquire(key, ttl)

    async def lease_holder(self, key: str, *, scope: LeaseScope = "store") -> str | None:
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
