"""Coalesced, streaming blob fills from an upstream.

The first client of an uncached blob starts ONE download; every client of the same blob
(the first included) streams the bytes as they arrive. The download runs in its own task,
so a client that goes away does not cancel what the others share. The blob enters the
cache only after its digest and size are checked; until then each reader holds back the
final byte, so no client ever receives a complete body that turns out wrong: a bad or
cut-off download ends every reader with an error (the connection is aborted). A reader
that would rather have the whole verified blob (sent as a file, without Python per chunk)
can ``settle``: wait for it while the fill's pace says it ends soon.

Everything goes through the storage driver's contract (storage/driver.py). Across
processes and replicas a *lease* per blob and repository elects the one that downloads
(the leader); the leader writes an *ingest* named after its lease token, which the
others (followers) read as it grows, and publishes it as the blob. A follower knows the
fill is over when the lease is no longer the leader's: the blob is then published (done)
or not (the fill failed). On a local disk the lease is a lock file and the ingest a file
read in place; on S3 the lease is in Redis (or a lock file of this machine) and the
ingest part objects (storage/s3ingest.py), which each machine reads once into a local
copy its processes share.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from entrepot.oci.digest import Digest, DigestVerifier
from entrepot.registry.streams import pump_batches
from entrepot.storage import StorageDriver, StorageError, StorageNotFound
from entrepot.storage.driver import IngestWriter, LeaseScope

log = logging.getLogger("entrepot.proxy.fetch")

_READ_CHUNK = 4 << 20
_GATHER = 0.1  # longest a streamed reader waits for a block to fill before sending less
_SETTLE_LOOK = 0.05  # how often a waiting client looks at a fill that makes no progress
# A fill's pace is judged only after this long (or half the wait, if shorter) of progress:
# its first moments (connections opening, the other clients' requests, first imports) are
# much slower than the rest, and a client that streams because of them slows the fill.
_JUDGE_AFTER = 1.0
# A fill's lease: among this machine's processes at least (on S3 without Redis, each
# replica fills on its own rather than pay requests to the bucket for every fill's lease).
FILL: LeaseScope = "machine"
_TRIES = 50  # a lease that keeps changing hands while we look (a fill ends, another starts)


# While fills go ahead without a lease (the lease service fails), this often at most a
# reminder: a pull of many blobs is one failure, not a warning per blob.
UNLEASED_REMINDER = 60.0


class Unleased:
    """The fills of this process that went ahead without a lease: one warning when it
    starts, a reminder with the count at most every ``UNLEASED_REMINDER`` seconds while it
    lasts, one line when leases work again."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.count = 0  # fills without a lease since the last line
        self.said: float | None = None  # when the last line was (None: leases work)

    def failed(self, label: str, exc: Exception) -> None:
        now = self.clock()
        self.count += 1
        if self.said is None:
            log.warning(
                "%s: no lease (%s); downloading without one (other fills meanwhile do too, "
                "and are counted, not each logged)",
                label,
                exc,
            )
        elif now - self.said >= UNLEASED_REMINDER:
            log.warning(
                "still no fill leases: %d fills went ahead without one in %.0fs; the latest, "
                "%s: %s",
                self.count,
                now - self.said,
                label,
                exc,
            )
        else:
            return
        self.said, self.count = now, 0

    def worked(self) -> None:
        if self.said is None:
            return
        log.info("fill leases work again (%d more fills went without one)", self.count)
        self.said, self.count = None, 0


unleased = Unleased()


class FetchFailed(Exception):
    """The shared download failed; ``cause`` is what the first client should be told."""

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


@dataclass(frozen=True)
class Spool:
    """Where the fill of one blob meets, as storage keys: ``lease`` elects the leader,
    ``base``/<leader's token> is its ingest, ``dst`` the blob's data. ``published``
    runs once the leader's bytes are at ``dst`` (it links the blob into the repository)."""

    driver: StorageDriver
    lease: str
    base: str
    dst: str
    published: Callable[[], Awaitable[None]]

    def ingest_key(self, token: str) -> str:
        return f"{self.base}/{token}"


OpenRemote = Callable[[], AbstractAsyncContextManager[tuple[int | None, AsyncIterator[bytes]]]]


class BlobFill:
    """One upstream download of one blob, shared by every reader."""

    def __init__(self, digest: Digest, spool: Spool, label: str = "") -> None:
        self.label = label or str(digest)  # "<upstream> <repository>@<digest>", for logs
        self.digest = digest
        self.spool = spool
        self.size: int | None = None
        self.written = 0  # bytes readers can read
        self.finished = False
        self.verified = False
        self.error: FetchFailed | None = None
        self.ingest_key: str | None = None
        # (loop time, bytes readable) at the first progress: the rate is measured from it.
        self._first_progress: tuple[float, int] | None = None
        self._started = asyncio.Event()
        self._progress = asyncio.Condition()
        self.task: asyncio.Task[None] | None = None

    async def wait_started(self) -> None:
        """Return once the upstream answered with a body; raise if it did not."""
        await self._started.wait()
        if self.error is not None and self.written == 0:
            raise self.error

    async def _advance(self, written: int) -> None:
        async with self._progress:
            if self._first_progress is None:
                self._first_progress = (asyncio.get_running_loop().time(), written)
            self.written = written
            self._progress.notify_all()

    async def _finish(self, error: BaseException | None) -> None:
        if error is not None:
            self.error = error if isinstance(error, FetchFailed) else FetchFailed(str(error), error)
        self._started.set()
        async with self._progress:
            self.finished = True
            self._progress.notify_all()

    async def run(self, open_remote: OpenRemote) -> None:
        """Lead or follow, whichever the lease says; the task shared by every reader."""
        error: BaseException | None = None
        try:
            await self._coordinate(open_remote)
        except BaseException as exc:
            error = exc
            if not isinstance(exc, Exception):
                raise
        finally:
            await self._finish(error)

    async def _coordinate(self, open_remote: OpenRemote) -> None:
        driver, spool = self.spool.driver, self.spool
        for _ in range(_TRIES):
            try:
                lease = await driver.try_lease(spool.lease, scope=FILL)
                token = None if lease else await driver.lease_holder(spool.lease, scope=FILL)
            except StorageError as exc:
                # Safe without it (publishing is atomic, the bytes are the same): at worst
                # another process or replica downloads the blob too. (A lease service that
                # hangs gives up within its own bound: storage/redisleases.py.)
                unleased.failed(self.label, exc)
                await self._lead(open_remote, f"unleased-{uuid.uuid4().hex}")
                return
            unleased.worked()
            if lease is not None:
                try:
                    if await self._published():
                        return  # another leader finished after our caller looked
                    await self._lead(open_remote, lease.token)
                finally:
                    await lease.release()
                return
            if token:
                await self._follow(token)
                return
            await asyncio.sleep(driver.follow_interval)  # changing hands: look again
        raise FetchFailed(f"could not join the fill of {self.digest}: its lease keeps changing")

    async def _published(self) -> bool:
        """Whether the blob is at its destination; if so, read it from there."""
        try:
            info = await self.spool.driver.stat(self.spool.dst)
        except StorageNotFound:
            return False
        self.size = info.size
        self.verified = True
        self._started.set()
        await self._advance(info.size)
        return True

    async def _lead(self, open_remote: OpenRemote, token: str) -> None:
        """Download, verify, publish."""
        verifier = DigestVerifier(self.digest.algorithm)
        started = time.monotonic()
        writer: IngestWriter | None = None
        try:
            async with open_remote() as (size, chunks):
                self.size = size
                key = self.spool.ingest_key(token)
                writer = await self.spool.driver.ingest(key, self.spool.dst, size)
                self.ingest_key = key
                self._started.set()
                await self._receive_and_write(chunks, verifier, writer)
            actual = verifier.digest()
            if actual != self.digest:
                raise FetchFailed(f"upstream sent bytes with digest {actual}, not {self.digest}")
            if self.size is not None and verifier.size != self.size:
                raise FetchFailed(
                    f"upstream sent {verifier.size} bytes of {self.digest}, announced {self.size}"
                )
            self.size = verifier.size
            await writer.publish()
            await self.spool.published()
            self.verified = True
            await self._advance(verifier.size)
            seconds = time.monotonic() - started
            log.info("filled %s: %d bytes in %.2fs", self.label, verifier.size, seconds)
        except BaseException as exc:
            log.warning("fill of %s failed after %d bytes: %s", self.label, self.written, exc)
            if writer is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(writer.cancel())
            raise

    async def _receive_and_write(
        self, chunks: AsyncIterator[bytes], verifier: DigestVerifier, writer: IngestWriter
    ) -> None:
        watcher: asyncio.Task[None] | None = None

        async def watch() -> None:
            # A driver may make bytes readable after ``write`` returned (S3 stores parts
            # in the background): readers must not wait for the next chunk to see them.
            while True:
                await asyncio.sleep(self.spool.driver.follow_interval)
                if writer.readable > self.written:
                    await self._advance(writer.readable)

        async def consume(parts: list[bytes]) -> None:
            nonlocal watcher
            # The buffers received meanwhile, not joined (a copy on the event loop's
            # thread), hashed and written by the driver with one thread hand-off.
            await writer.write_parts(parts, verifier.update)
            await self._advance(writer.readable)
            if watcher is None and writer.readable < writer.size:
                watcher = asyncio.create_task(watch())

        try:
            await pump_batches(chunks, consume)
        finally:
            if watcher is not None:
                watcher.cancel()

    async def _follow(self, token: str) -> None:
        """Read another process's (or replica's) download as it grows."""
        driver, spool = self.spool.driver, self.spool
        key = self.ingest_key = spool.ingest_key(token)
        while True:
            state = await driver.ingested(key)
            if state is not None:
                if self.size is None and state.size is not None:
                    self.size = state.size
                self._started.set()
                if state.readable > self.written:
                    await self._advance(state.readable)
            if await driver.lease_holder(spool.lease, scope=FILL) != token:
                break
            await asyncio.sleep(driver.follow_interval)
        if not await self._published():
            raise FetchFailed(f"the fill of {self.digest} by another worker or replica failed")

    async def settle(self, within: float) -> bool:
        """Wait up to ``within`` seconds for the verified blob: True once it is verified
        and published; False when ``within`` has passed, when the fill has no announced
        size, or as soon as its pace clearly says it cannot end in time (it would need
        more than twice ``within``; judged once it has made progress for a while); the
        caller then streams it as it arrives. Raises the fill's error if it fails
        meanwhile. Waiting costs a client its first byte, never its last: a streamed
        reader gets the last byte once the fill is verified too."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        hopeless = deadline + within
        judge_after = min(_JUDGE_AFTER, within / 2)
        async with self._progress:
            while True:
                if self.error is not None:
                    raise self.error
                if self.verified:
                    return True
                now = loop.time()
                if self.finished or self.size is None or now >= deadline:
                    return False
                if self._expected_end(self.size, now, judge_after) > hopeless:
                    return False
                # Look again at the next progress, or soon if there is none (a stalled
                # upstream must not hold the client for the whole bound).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._progress.wait(), min(_SETTLE_LOOK, deadline - now))

    def _expected_end(self, size: int, now: float, judge_after: float) -> float:
        """When the download should end at the rate it has had since its first progress;
        ``now`` (no verdict) until it has made progress for ``judge_after`` seconds."""
        if self._first_progress is None:
            return now  # no rate yet: the deadline bounds the wait
        since, first = self._first_progress
        if self.written <= first or now - since < judge_after:
            return now
        rate = (self.written - first) / (now - since)
        return now + max(size - self.written, 0) / rate

    async def read(self, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """Stream the blob from ``offset`` as it arrives; the last byte only once verified.
        Bytes are sent in blocks of ``_READ_CHUNK`` while the fill runs (or what came in
        ``_GATHER`` seconds, if less): each block costs a thread hop, a file open and a
        send, so a reader chasing the download must not take every buffer it receives."""
        end = None if length is None else offset + length
        loop = asyncio.get_running_loop()
        position = offset
        while end is None or position < end:
            async with self._progress:
                gather_until: float | None = None
                while True:
                    if self.error is not None:
                        raise self.error
                    limit = self.written if self.verified else max(self.written - 1, 0)
                    if end is not None:
                        # A range's last byte, too, waits until the whole blob is verified.
                        limit = min(limit, end if self.verified else end - 1)
                    if position < limit:
                        if self._block_ready(position, limit, end):
                            break
                        now = loop.time()
                        gather_until = gather_until or now + _GATHER
                        if now >= gather_until:
                            break
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._progress.wait(), gather_until - now)
                        continue
                    if self.verified:
                        return
                    await self._progress.wait()
            want = min(limit - position, _READ_CHUNK)
            async for chunk in self._read_range(position, want):
                position += len(chunk)
                yield chunk

    def _block_ready(self, position: int, limit: int, end: int | None) -> bool:
        """Whether a reader at ``position`` should read up to ``limit`` now: a whole block,
        or all it will get before the fill ends (its last byte waits for the digest)."""
        if limit - position >= _READ_CHUNK or self.verified or self.finished:
            return True
        last = end if end is not None else self.size
        return last is not None and limit >= last - 1

    async def _read_range(self, offset: int, length: int) -> AsyncIterator[bytes]:
        """Bytes the fill has made readable: from the ingest while it lasts, else (once
        published) from the blob."""
        driver = self.spool.driver
        read = 0
        if self.ingest_key is not None:
            with contextlib.suppress(StorageNotFound):  # published or cancelled meanwhile
                async for chunk in driver.read_ingest(self.ingest_key, offset, length):
                    read += len(chunk)
                    yield chunk
            if read == length:
                return
        try:
            async for chunk in driver.read(self.spool.dst, offset + read, length - read):
                read += len(chunk)
                yield chunk
        except StorageNotFound:
            pass
        if read < length:
            if self.error is not None:
                raise self.error
            raise FetchFailed(f"the fill of {self.digest} ended before its bytes were stored")


class BlobFiller:
    """At most one fill per key at a time in this process; the lease makes it one for
    every process (and replica) sharing the lease."""

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
        self._fills[key] = fill  # before any await: the tasks of this process meet here

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
