"""The storage-driver contract (its keys, objects and errors: ``objects``, re-exported here).

A driver knows nothing of registries: it stores bytes under keys. "Directories" exist only
as prefixes of keys that have content; ``list`` returns the immediate children of a prefix.

Every driver passes tests/storage (the one contract suite). Drivers raise StorageNotFound
for a missing key and StorageError for anything else; callers never see OSError or an
SDK's exception.

Besides objects, a driver offers what a cache fill shared by several processes (and
replicas) needs: a *lease* (one holder at a time for a key, with a token others can read;
also what keeps background work such as garbage collection to one process of a fleet)
and an *ingest* (an object being written that others can read while it grows, published
atomically at another key once complete). See ``Lease`` and ``IngestWriter``.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from entrepot.storage.defaults import Folder, bounded, read_along, walk_by_listing
from entrepot.storage.objects import (
    Aside,
    FileInfo,
    Fold,
    Infos,
    Keys,
    LeaseLost,
    Moved,
    Reader,
    Records,
    Shard,
    Stats,
    StorageConflict,
    StorageError,
    StorageNotFound,
    below,
    check_key,
    check_names,
    in_shard,
    join_key,
)

if TYPE_CHECKING:
    from entrepot.storage.localwalk import LocalWalk

# The objects' names, read here with the contract.
__all__ = [
    "Aside",
    "FileInfo",
    "Fold",
    "Infos",
    "Keys",
    "LeaseLost",
    "Moved",
    "Reader",
    "Records",
    "Shard",
    "Stats",
    "StorageConflict",
    "StorageError",
    "StorageNotFound",
    "below",
    "check_key",
    "check_names",
    "in_shard",
    "join_key",
]


class StorageWriter(abc.ABC):
    """A streaming writer. Nothing written is visible at ``key`` until ``commit``;
    ``cancel`` discards everything written by this writer. With ``append=True`` the
    writer continues an existing object (resumable uploads) and what it writes is only
    guaranteed visible (and durable) at commit; a driver may expose it earlier (the
    filesystem driver appends in place). ``cancel`` after ``commit`` or ``cancel`` is a
    no-op, so it is safe in cleanup paths; ``write`` or ``commit`` after either raises
    StorageError. Every writer must end with ``commit`` or ``cancel``. One task at a time."""

    @property
    @abc.abstractmethod
    def size(self) -> int:
        """Total size of the object so far, including appended-to content."""

    @property
    def version(self) -> str | None:
        """After ``commit``: the ``FileInfo.version`` of the object this writer made
        (known without reading it back, so another writer's later object is never taken
        for it); None where the driver has no versions."""
        return None

    @abc.abstractmethod
    async def write(self, data: bytes) -> None: ...

    async def write_parts(self, parts: Sequence[bytes]) -> None:
        """Write ``parts`` one after the other, as ``write`` of their concatenation; a
        driver may write them without joining them (a copy of every byte)."""
        await self.write(b"".join(parts))

    @abc.abstractmethod
    async def commit(self, *, durable: bool = True) -> None:
        """Make what was written visible at the key. ``durable=False``, for an append
        writer: it need not be on disk yet (a crash may lose it, whole or a tail of it),
        until ``StorageDriver.sync`` of the key; a driver whose objects are durable once
        written ignores it."""

    @abc.abstractmethod
    async def cancel(self) -> None: ...


# Where a lease must be exclusive (``try_lease``): "store", among every process and
# replica using the store; "machine", at least among the processes of this machine, for
# work that may run once per machine (a cache fill) where that is cheaper (S3 without Redis
# keeps it in a lock file of this machine rather than in the bucket).
LeaseScope = Literal["store", "machine"]
LEASE_TTL = 30.0  # seconds, unless the holder asks for another time limit


class Lease(abc.ABC):
    """Held by one holder at a time within its scope (``LeaseScope``). ``token`` is this
    holder's, unique to this lease; others read it with ``StorageDriver.lease_holder``.
    A lease ends with ``release`` or with its holder: at once when its process dies where
    ``ttl`` is None (a lock file), else once the holder stops renewing it for ``ttl``
    seconds. While it is held the driver renews it in the background, every third of its
    ``ttl``; a holder that stalls past it (its loop blocked, its replica cut off) may lose
    it to another, which ``renew`` tells."""

    token: str
    ttl: float | None

    @abc.abstractmethod
    async def renew(self) -> None:
        """Extend the lease by its ``ttl`` now; LeaseLost if this holder no longer has it
        (released, or taken over). A holder about to write what the lease guards calls it
        first."""

    @abc.abstractmethod
    async def release(self) -> None:
        """Give the lease up (a no-op the second time); never frees another holder's."""

    async def wait_lost(self) -> None:
        """Return once this holder has lost the lease (its background renewal or a
        ``renew`` found it taken over or lapsed); a lease without a time limit is never
        lost while its process lives, so by default this waits forever."""
        await asyncio.Event().wait()


@dataclass(frozen=True, slots=True)
class IngestState:
    """How far an ingest is: ``readable`` bytes can be read (``read_ingest``); ``size`` is
    the size its writer announced, None when unknown."""

    readable: int
    size: int | None


class IngestWriter(abc.ABC):
    """An object being written that any process or replica can read while it grows: the
    first ``readable`` bytes (``StorageDriver.ingested``, ``read_ingest``) never change.
    ``publish`` makes the bytes the object at its destination at once, whole and durable,
    and removes the ingest; ``cancel`` removes it: nothing written is left visible,
    neither at the destination nor at the ingest's key. One task at a time."""

    @property
    @abc.abstractmethod
    def size(self) -> int:
        """Bytes written so far."""

    @property
    @abc.abstractmethod
    def readable(self) -> int:
        """Bytes others can read so far (at most ``size``)."""

    @abc.abstractmethod
    async def write(self, data: bytes) -> None: ...

    async def write_parts(self, parts: Sequence[bytes], see: Callable[[bytes], object]) -> None:
        """Write ``parts`` in order and give each to ``see`` (a digest's update), here in
        a thread while the parts are written joined. A driver that writes in a thread
        does both there, part by part: one hand-off, each part hashed while in cache."""
        await asyncio.gather(asyncio.to_thread(_each, see, parts), self.write(b"".join(parts)))

    @abc.abstractmethod
    async def publish(self) -> None: ...

    @abc.abstractmethod
    async def cancel(self) -> None:
        """Discard everything; a no-op after ``publish`` or ``cancel``."""


def _each(see: Callable[[bytes], object], parts: Sequence[bytes]) -> None:
    for part in parts:
        see(part)


class StorageDriver(abc.ABC):
    """About ten methods; see tests/storage for the behaviour each must have."""

    name: str = "abstract"
    # How often a reader following an ingest (or waiting on a lease) looks again: cheap
    # on a local disk, a request each on an object store.
    follow_interval: float = 0.01
    # Whether ``writer(key, append=True)`` adds the new bytes to the object where it is
    # (a local file), or, False, must copy the whole object into a new one first (S3
    # objects cannot grow): chunked uploads then keep each chunk as an object of its own.
    # Every driver says which (no default).
    appends_in_place: bool
    # Whether a folder's mtime moves whenever an entry is added to it or removed from it
    # (directories on a disk): a reader can then tell that nothing was added under a
    # folder since a time without listing it. False: no folders (object storage).
    folder_mtimes: bool = False
    # scan_apart walks in a process of its own: walks of several shards at once take as
    # many CPUs. False: scan_apart is scan (object storage: listings, not CPU).
    walks_apart: bool = False
    # walk_local runs a caller's walk where the objects are (a disk). False: it cannot.
    walks_local: bool = False

    @abc.abstractmethod
    async def get_content(self, key: str) -> bytes:
        """The whole object. For small objects (links, manifests). StorageNotFound if the
        key is missing or is a prefix rather than an object."""

    @abc.abstractmethod
    async def put_content(self, key: str, data: bytes) -> None:
        """Atomically replace the object: readers see the old or the new bytes, never a mix."""

    @abc.abstractmethod
    async def put_new(self, key: str, data: bytes) -> bool:
        """Store ``data`` at ``key`` only if no object is there: True if stored, False if
        one already was (left unchanged). Atomic: of callers racing on one key, exactly one
        gets True (a lease is taken this way: S3's ``If-None-Match: *``, a hard link on a
        filesystem)."""

    @abc.abstractmethod
    def read(
        self, key: str, offset: int = 0, length: int | None = None, chunk_size: int = 1 << 20
    ) -> AsyncIterator[bytes]:
        """Stream ``length`` bytes (or to the end) from ``offset``, in chunks of at most
        ``chunk_size``. Raises StorageNotFound on first iteration if the key is missing or
        is a prefix. Reading at or past the end yields nothing (no error)."""

    @abc.abstractmethod
    async def writer(self, key: str, append: bool = False) -> StorageWriter:
        """A writer that creates or replaces ``key`` at commit; with ``append=True`` one that
        continues the existing object (StorageNotFound if there is none)."""

    @abc.abstractmethod
    async def stat(self, key: str) -> FileInfo:
        """Size and mtime of an object, or is_dir for a prefix with content below it."""

    async def exists(self, key: str) -> bool:
        """Whether ``stat`` would find ``key``, StorageError as it would raise one: a
        driver may answer it more cheaply (no FileInfo)."""
        try:
            await self.stat(key)
        except StorageNotFound:
            return False
        return True

    @abc.abstractmethod
    async def list(self, prefix: str) -> list[str]:
        """Names (not full keys) of the immediate children of ``prefix``, sorted; "" lists
        the top level. Raises StorageNotFound when nothing is stored under the prefix or
        it is an object. A driver with real directories (filesystem, like registry:2's)
        returns [] for a directory left empty by ``delete``: treat [] like not found."""

    async def walk(
        self, prefix: str, *, after: str = "", collapse: str = ""
    ) -> AsyncGenerator[Keys, None]:
        """Keys of every object under ``prefix``, relative to it, in lexical order, in
        batches; only keys greater than ``after``. Lazy: a caller that stops early has not
        paid for the rest of the tree. A missing prefix yields nothing.

        With ``collapse`` set, a directory whose name starts with it is not entered: it
        is yielded once as its relative path plus "/" (where its keys would sort), so the
        caller learns it exists without listing what is inside. A driver with real
        directories may so report an empty one. Flat stores list everything under the
        prefix in one paged listing (S3: ListObjectsV2 without a delimiter, StartAfter)
        and fold the keys below a collapsed directory into it; this default walks with
        ``list`` and ``stat``, one call each per entry."""
        async for batch in walk_by_listing(self, prefix, "", after, collapse):
            yield batch

    async def scan(self, prefix: str, *, fold: Fold | None = None) -> AsyncGenerator[Infos, None]:
        """Every object under ``prefix`` with its size and mtime (``FileInfo.key`` relative
        to the prefix), in lexical order, in batches: what a collection of the whole store
        reads. A missing prefix yields nothing. Flat stores get the sizes and times with
        the listing (S3's ListObjectsV2); this default stats every key ``walk`` finds.

        With ``fold``, a directory for which it names a key is reported by that one object
        (or, when there is none, as the directory: its key ending in "/", ``is_dir``), so
        a driver with real directories need not open it: a registry's link and blob
        folders hold one file each. Such a driver also reports a directory it enters
        that holds nothing, as a directory."""
        folder = Folder(fold) if fold is not None else None
        async for keys in self.walk(prefix):
            found: list[FileInfo] = []
            for rel in keys:
                try:
                    info = await self.stat(join_key(prefix, rel))
                except StorageNotFound:
                    continue  # deleted meanwhile
                found.append(FileInfo(rel, info.size, info.mtime, False, info.version))
            if folder is not None:
                found = folder.feed(found)
            if found:
                yield found
        if folder is not None and (rest := folder.flush()):
            yield rest

    async def scan_apart(
        self,
        prefix: str,
        *,
        fold: Fold | None = None,
        read: Reader | None = None,
        shard: Shard | None = None,
    ) -> AsyncGenerator[Infos, None]:
        """``scan``, walked apart from the caller where the driver can (a driver with real
        directories: in a process of its own, on another CPU), so that the caller's own
        work, another scan, goes on alongside. A ``fold`` (and ``read``) must then be a
        module-level function; any other is walked as ``scan`` walks. Object storage:
        ``scan``. With ``read``, each object found for which it names a key carries that
        object's bytes (``FileInfo.data``), read apart too where the walk is (a link, a
        manifest: what the caller would read next). With ``shard``, only what is below its
        top-level entries."""
        if read is None:
            async for batch in self._scan_shard(prefix, fold, shard):
                yield batch
            return
        # A batch's reads go on while the next batch is listed.
        reading: asyncio.Future[Infos] | None = None
        try:
            async for batch in self._scan_shard(prefix, fold, shard):
                done, reading = (
                    reading,
                    asyncio.ensure_future(read_along(self, prefix, batch, read)),
                )
                if done is not None:
                    yield await done
            if reading is not None:
                yield await reading
        finally:
            if reading is not None:
                reading.cancel()

    async def _scan_shard(
        self, prefix: str, fold: Fold | None, shard: Shard | None
    ) -> AsyncGenerator[Infos, None]:
        async for batch in self.scan(prefix, fold=fold):
            if shard is not None:
                batch = [i for i in batch if in_shard(i.key.partition("/")[0], shard)]
            if batch:
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
        """The batches of ``walk`` (see localwalk: a module-level function) over the store,
        run where the objects are: in a worker thread, or with ``apart`` where
        ``walks_apart``, in a process of its own; with ``shard``, its view's ``mine`` says
        which entries (top-level ones, or those the walk shares by) are the walk's. Only
        where ``walks_local``."""
        raise StorageError(f"the {self.name} storage driver cannot walk locally")
        yield []  # unreached: an async generator, as a driver's that can

    async def prepare_walks(self, walk: LocalWalk, count: int) -> None:
        """A hint, within bulk_apart: ``count`` walks apart of ``walk`` follow soon. A
        driver whose walks apart start processes starts them now, while the caller
        computes; others do nothing."""
        return

    @contextlib.asynccontextmanager
    async def bulk_apart(self) -> AsyncIterator[None]:
        """For the block, the bulk calls (stat_many, move_many, delete_many) may run in
        helper processes of the driver's (a collection's command, which makes a hundred
        thousand); a driver without them does nothing."""
        yield

    async def stat_many(self, keys: Sequence[str]) -> Stats:
        """``stat`` of each key, in the keys' order, None for a missing one: what a
        collection checks of many objects (or directories) at once."""

        async def one(key: str) -> FileInfo | None:
            try:
                return await self.stat(key)
            except StorageNotFound:
                return None

        return await bounded([one(key) for key in keys])

    async def move_many(self, moves: Sequence[tuple[str, str]], *, sync: bool = True) -> Moved:
        """``move`` for each (src, dst) pair, in any order or at once; for each, whether
        its source existed (a missing one is skipped, not an error)."""

        async def one(src: str, dst: str) -> bool:
            try:
                await self.move(src, dst, sync=sync)
            except StorageNotFound:
                return False
            return True

        return await bounded([one(src, dst) for src, dst in moves])

    async def move_stale_in(
        self,
        folders: Sequence[str],
        src: str,
        dst: str,
        older_than: float,
        *,
        sync: bool = True,
    ) -> Aside:
        """For each folder key: ``<folder>/<src>``'s size and mtime (None: missing, or a
        directory), and whether it moved to ``<folder>/<dst>`` (as ``move_many``): only an
        object last written at or before ``older_than`` moves. ``src`` and ``dst`` are
        names (one segment each). A collection sets each unreferenced blob that no push
        wrote within its grace window aside so: in one call where a stat and a move were
        two, and named by its folder, where two whole keys a blob, made, checked and
        answered, cost more than the moves. This default stats them all, then moves."""
        check_names(src, dst)
        moves = [(f"{folder}/{src}", f"{folder}/{dst}") for folder in folders]
        infos = await self.stat_many([source for source, _ in moves])
        stale = [
            n
            for n, info in enumerate(infos)
            if info and not info.is_dir and info.mtime <= older_than
        ]
        moved = await self.move_many([moves[n] for n in stale], sync=sync) if stale else []
        answers: Aside = [
            (None if info is None or info.is_dir else (info.size, info.mtime), False)
            for info in infos
        ]
        for n, ok in zip(stale, moved, strict=True):
            answers[n] = (answers[n][0], ok)
        return answers

    async def delete_many(self, keys: Sequence[str]) -> None:
        """Delete the objects at ``keys`` (objects, not prefixes), in any order or at once;
        a missing one is skipped. A driver with real directories also removes the
        directory that held each key when that leaves it empty (a blob's folder, a layer
        link's), as ``delete`` of that directory would, but never one that still holds
        something written meanwhile."""

        async def one(key: str) -> None:
            with contextlib.suppress(StorageNotFound):
                await self.delete(key)

        await bounded([one(key) for key in keys])

    async def remove_empty_folders(self, keys: Sequence[str]) -> None:
        """Remove each folder at ``keys`` that holds nothing, in the order given (the
        deepest first, to remove a tree's empty folders), never one that holds something
        (written meanwhile) and without error for one missing: where ``delete`` of a
        folder would take what a writer put in it since the caller looked. A driver with
        real directories removes them; object storage has none, and does nothing."""
        for key in keys:
            check_key(key)

    async def delete_in(self, folders: Sequence[str], name: str) -> None:
        """``delete_many`` of ``<folder>/<name>`` for each folder key, ``name`` one segment:
        a collection deletes each blob it set aside so, named by its folder (one key a
        blob, not a key built and checked per object, as move_stale_in)."""
        check_names(name)
        await self.delete_many([f"{folder}/{name}" for folder in folders])

    @abc.abstractmethod
    async def move(
        self, src: str, dst: str, *, sync: bool = True, if_version: str | None = None
    ) -> None:
        """Atomically move an object to ``dst``, replacing what was there.
        StorageNotFound (with ``key == src``) if ``src`` is missing. ``sync=False``: the
        move need not be durable when this returns (a crash may undo it), for a caller to
        whom either state is fine (garbage collection's quarantine): it spares a local
        disk a directory fsync per move. With ``if_version`` (a ``FileInfo.version``),
        only the object of that version moves: if ``src`` is another by then,
        StorageConflict, ``src`` is left and nothing is at ``dst``."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Delete an object or everything under a prefix. StorageNotFound if neither exists."""

    async def tally(self, key: str) -> None:
        """Add one byte to the object at ``key`` (made where missing), so that its size
        counts the calls of every process, none lost where they race (a file opened to
        append). Not durable: a count that a crash loses counted nothing still wanted.
        Where ``folder_mtimes`` (a disk); elsewhere NotImplementedError (an object cannot
        grow in place: the caller counts there in another way, or not at all)."""
        raise NotImplementedError(f"the {self.name} storage keeps no tallies")

    @abc.abstractmethod
    async def try_lease(
        self, key: str, *, ttl: float = LEASE_TTL, scope: LeaseScope = "store"
    ) -> Lease | None:
        """The lease named ``key`` within ``scope``, or None at once when another holder
        has it. ``ttl``: how long it outlives a holder that stops renewing it, where it is
        not a lock file (see ``Lease``). ``key`` names no object: leases and objects do
        not meet; the two scopes' leases of one key are two leases."""

    @abc.abstractmethod
    async def lease_holder(self, key: str, *, scope: LeaseScope = "store") -> str | None:
        """The current holder's token, None when nobody holds the lease, or "" for a
        holder that has not recorded its token yet (look again)."""

    @abc.abstractmethod
    async def ingest(self, key: str, dst: str, size: int | None = None) -> IngestWriter:
        """A new ingest at ``key`` (a key no other ingest uses), published to ``dst``;
        ``size`` is announced to followers (``ingested``)."""

    @abc.abstractmethod
    async def ingested(self, key: str) -> IngestState | None:
        """How far the ingest at ``key`` is; None when there is none (not started yet,
        published or cancelled)."""

    @abc.abstractmethod
    def read_ingest(self, key: str, offset: int, length: int) -> AsyncIterator[bytes]:
        """Stream ``length`` bytes from ``offset`` of the ingest at ``key``; they must be
        readable already. Once the ingest is published or cancelled: StorageNotFound (a
        published one is then read at its destination), or, where the driver keeps a
        local copy that this machine had already read (S3), the bytes that were readable
        before, which never change. Whether an ingest was published is learnt from its
        lease and its destination, never from this."""

    def local_path(self, key: str) -> str | None:
        """A local file path for ``key`` when the driver keeps objects on a local disk,
        so the HTTP server can send the file zero-copy; None otherwise (the caller then
        streams with ``read``). It does not check that the key exists."""
        return None

    async def redirect_url(self, key: str) -> str | None:
        """A time-limited URL at which a client can fetch ``key`` directly from the
        backend (a presigned URL), or None when the driver has none (the caller then
        streams). registry:2 redirects blob GETs to such URLs. It does not check that the
        key exists."""
        return None

    async def sync(self, key: str) -> None:  # noqa: B027 - objects are durable as written
        """Make the object at ``key`` durable, as it is now (after append writers that
        committed with ``durable=False``). StorageError if that failed: what was written
        since the last sync may not be on disk. May raise StorageNotFound if there is no
        object. A driver whose objects are durable once written does nothing."""

    async def close(self) -> None:  # noqa: B027 - an optional hook, not abstract
        """Release connections and background resources."""
