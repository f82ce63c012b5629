"""The shared, streaming cache fill: one download, many readers, nothing wrong served.
The fill goes through a filesystem driver (its lease and ingest); each BlobFiller stands
for a worker process (flock locks of two open files conflict within one process too)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from entrepot.oci.digest import Digest
from entrepot.proxy.fetch import BlobFiller, FetchFailed, Spool
from entrepot.storage.filesystem import FilesystemDriver


class FakeRemote:
    """An upstream body released chunk by chunk, counting how often it was opened."""

    def __init__(self, chunks: list[bytes], size: int | None = None) -> None:
        self.chunks = chunks
        self.size = size if size is not None else sum(map(len, chunks))
        self.opened = 0
        self.release = asyncio.Event()
        self.fail_after: int | None = None

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[tuple[int | None, AsyncIterator[bytes]]]:
        self.opened += 1

        async def body() -> AsyncIterator[bytes]:
            for index, chunk in enumerate(self.chunks):
                if index == 1:
                    await self.release.wait()
                if self.fail_after is not None and index >= self.fail_after:
                    raise ConnectionError("upstream went away")
                yield chunk

        yield self.size, body()


def spool(tmp_path: Path, published: list[str]) -> Spool:
    """A spool as the cache makes one: a lease and ingests under ``fill``, published to
    ``blobs/data``; ``published`` gets the published bytes (hex) each time."""
    driver = FilesystemDriver(tmp_path / "root")

    async def note_published() -> None:
        published.append((await driver.get_content("blobs/data")).hex())

    return Spool(driver, "fill/lease", "fill", "blobs/data", note_published)


def leftovers(tmp_path: Path) -> list[str]:
    """What the fills left under the spool's directory (nothing, once they are over)."""
    fill = tmp_path / "root" / "fill"
    return sorted(str(p.relative_to(fill)) for p in fill.rglob("*")) if fill.exists() else []


def digest_of(data: bytes) -> Digest:
    return Digest("sha256", hashlib.sha256(data).hexdigest())


async def collect(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in stream])


async def test_eight_readers_share_one_download(tmp_path: Path) -> None:
    chunks = [b"a" * 1000, b"b" * 1000, b"c" * 10]
    data = b"".join(chunks)
    remote = FakeRemote(chunks)
    filler = BlobFiller()
    published: list[str] = []
    key = ("up", "repo", digest_of(data))
    fills = [filler.start(key, spool(tmp_path, published), remote.open) for _ in range(8)]
    assert all(fill is fills[0] for fill in fills)
    await fills[0].wait_started()
    readers = [asyncio.create_task(collect(fill.read())) for fill in fills]
    await asyncio.sleep(0.05)
    remote.release.set()
    results = await asyncio.gather(*readers)
    assert results == [data] * 8
    assert remote.opened == 1
    assert len(published) == 1


async def test_last_byte_held_back_until_verified(tmp_path: Path) -> None:
    chunks = [b"x" * 100, b"y"]
    data = b"".join(chunks)
    remote = FakeRemote(chunks)
    fill = BlobFiller().start(("u", "r", digest_of(data)), spool(tmp_path, []), remote.open)
    await fill.wait_started()
    stream = fill.read()
    first = await anext(stream)
    assert len(first) == 99  # 100 arrived, the last is held back
    remote.release.set()
    rest = await collect(stream)
    assert first + rest == data


async def test_wrong_digest_fails_every_reader_and_publishes_nothing(tmp_path: Path) -> None:
    chunks = [b"good" * 10, b"evil"]
    remote = FakeRemote(chunks)
    remote.release.set()
    published: list[str] = []
    fill = BlobFiller().start(
        ("u", "r", digest_of(b"something else")), spool(tmp_path, published), remote.open
    )
    with pytest.raises(FetchFailed):
        await collect(fill.read())
    assert fill.task is not None
    await fill.task
    assert published == []
    assert not (tmp_path / "root" / "blobs" / "data").exists()
    assert leftovers(tmp_path) == []


async def test_cut_off_download_fails_readers(tmp_path: Path) -> None:
    chunks = [b"1" * 50, b"2" * 50, b"3" * 50]
    data = b"".join(chunks)
    remote = FakeRemote(chunks)
    remote.fail_after = 2
    remote.release.set()
    fill = BlobFiller().start(("u", "r", digest_of(data)), spool(tmp_path, []), remote.open)
    await fill.wait_started()
    with pytest.raises(FetchFailed):
        await collect(fill.read())


async def test_short_body_against_announced_size_fails(tmp_path: Path) -> None:
    data = b"z" * 10
    remote = FakeRemote([data], size=20)
    fill = BlobFiller().start(("u", "r", digest_of(data)), spool(tmp_path, []), remote.open)
    with pytest.raises(FetchFailed):
        await collect(fill.read())


async def test_reader_going_away_does_not_cancel_the_fill(tmp_path: Path) -> None:
    chunks = [b"p" * 500, b"q" * 500]
    data = b"".join(chunks)
    remote = FakeRemote(chunks)
    published: list[str] = []
    filler = BlobFiller()
    fill = filler.start(("u", "r", digest_of(data)), spool(tmp_path, published), remote.open)
    await fill.wait_started()
    impatient = asyncio.create_task(collect(fill.read()))
    await asyncio.sleep(0.02)
    impatient.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await impatient
    remote.release.set()
    assert fill.task is not None
    await fill.task
    assert fill.verified
    assert published == [data.hex()]
    assert filler.active(("u", "r", digest_of(data))) is None


async def test_range_read_of_an_in_flight_fill(tmp_path: Path) -> None:
    chunks = [bytes(range(256)), bytes(range(256))]
    data = b"".join(chunks)
    remote = FakeRemote(chunks)
    remote.release.set()
    fill = BlobFiller().start(("u", "r", digest_of(data)), spool(tmp_path, []), remote.open)
    await fill.wait_started()
    assert await collect(fill.read(10, 20)) == data[10:30]
    assert await collect(fill.read(500)) == data[500:]


async def test_reader_that_arrives_after_publish_still_reads(tmp_path: Path) -> None:
    chunks = [b"late" * 100, b"!"]
    data = b"".join(chunks)
    remote = FakeRemote(chunks)
    remote.release.set()
    published: list[str] = []
    fill = BlobFiller().start(("u", "r", digest_of(data)), spool(tmp_path, published), remote.open)
    assert fill.task is not None
    await fill.task
    # The ingest is gone once published; a reader holding the fill reads the blob.
    assert leftovers(tmp_path) == []
    assert published == [data.hex()]
    assert await collect(fill.read()) == data
    assert await collect(fill.read(3, 5)) == data[3:8]


async def test_range_ending_before_the_blob_end_waits_for_verification(tmp_path: Path) -> None:
    chunks = [b"r" * 100, b"s" * 100]
    data = b"".join(chunks)
    remote = FakeRemote(chunks)
    fill = BlobFiller().start(("u", "r", digest_of(data)), spool(tmp_path, []), remote.open)
    await fill.wait_started()
    stream = fill.read(0, 50)
    first = await anext(stream)
    assert len(first) == 49  # all 50 have arrived, but the last waits for the digest check
    remote.release.set()
    assert first + await collect(stream) == data[:50]


async def test_two_worker_processes_share_one_download(tmp_path: Path) -> None:
    # Each BlobFiller stands for a worker process: they meet at the lease.
    chunks = [b"w" * 3000, b"x" * 3000]
    data = b"".join(chunks)
    remote = FakeRemote(chunks)
    published: list[str] = []
    key = ("u", "r", digest_of(data))
    leader = BlobFiller().start(key, spool(tmp_path, published), remote.open)
    follower = BlobFiller().start(key, spool(tmp_path, published), remote.open)
    assert leader is not follower
    await leader.wait_started()
    readers = [asyncio.create_task(collect(f.read())) for f in (leader, follower)]
    await asyncio.sleep(0.05)
    remote.release.set()
    assert await asyncio.gather(*readers) == [data, data]
    assert remote.opened == 1
    assert len(published) == 1
    # A third worker arriving after the fill finds the published blob, downloads nothing.
    late = BlobFiller().start(key, spool(tmp_path, published), remote.open)
    assert await collect(late.read()) == data
    assert remote.opened == 1
    assert leftovers(tmp_path) == []


async def test_follower_fails_when_the_leading_worker_fails(tmp_path: Path) -> None:
    chunks = [b"1" * 100, b"2" * 100]
    remote = FakeRemote(chunks)
    published: list[str] = []
    key = ("u", "r", digest_of(b"not these bytes"))
    leader = BlobFiller().start(key, spool(tmp_path, published), remote.open)
    follower = BlobFiller().start(key, spool(tmp_path, published), remote.open)
    remote.release.set()
    with pytest.raises(FetchFailed):
        await collect(follower.read())
    assert leader.task is not None
    await leader.task
    assert published == []
    assert leftovers(tmp_path) == []


# --- waiting for the verified blob (settle): a client of a fill about to end gets the file


async def test_a_fast_fill_settles_into_the_verified_blob(tmp_path: Path) -> None:
    chunks = [b"f" * 4096, b"g" * 4096]
    data = b"".join(chunks)
    remote = FakeRemote(chunks)
    remote.release.set()
    published: list[str] = []
    key = ("u", "r", digest_of(data))
    leader = BlobFiller().start(key, spool(tmp_path, published), remote.open)
    follower = BlobFiller().start(key, spool(tmp_path, published), remote.open)  # a 2nd worker
    await leader.wait_started()
    await follower.wait_started()
    # Generous bound: only the fill's own pace decides, not this machine's load.
    assert await leader.settle(60.0)
    assert await follower.settle(60.0)
    assert (tmp_path / "root" / "blobs" / "data").read_bytes() == data
    assert published == [data.hex()]
    assert remote.opened == 1


class PacedRemote:
    """An upstream that sends a chunk per ``pace`` seconds of a much bigger announced body,
    then stops until released: a slow download, certainly still running when released."""

    def __init__(self, chunk: bytes, sent_before_hold: int, size: int, pace: float) -> None:
        self.chunk, self.count, self.size, self.pace = chunk, sent_before_hold, size, pace
        self.release = asyncio.Event()

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[tuple[int | None, AsyncIterator[bytes]]]:
        async def body() -> AsyncIterator[bytes]:
            for _ in range(self.count):
                yield self.chunk
                await asyncio.sleep(self.pace)
            await self.release.wait()
            yield b"\0" * (self.size - self.count * len(self.chunk))

        yield self.size, body()


async def test_a_slow_fill_does_not_settle_and_its_readers_stream(tmp_path: Path) -> None:
    # 64 KiB per 20 ms of 1 GiB announced: many minutes to go, so once settle has seen
    # the pace for a second it gives up (long before its bound of 10 minutes) and the
    # reader streams what has arrived.
    remote = PacedRemote(b"s" * 65536, sent_before_hold=10, size=1 << 30, pace=0.02)
    fill = BlobFiller().start(("u", "r", digest_of(b"unknown")), spool(tmp_path, []), remote.open)
    await fill.wait_started()
    waiting = asyncio.create_task(fill.settle(600.0))
    done, _ = await asyncio.wait([waiting], timeout=120)
    assert done, "settle kept a reader waiting for a fill with minutes to go"
    assert waiting.result() is False
    assert not fill.finished
    first = await anext(fill.read())
    assert first and set(first) == {ord("s")}
    assert fill.task is not None
    fill.task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await fill.task


async def test_a_reader_chasing_the_fill_reads_whole_blocks(tmp_path: Path) -> None:
    # 8 MiB arriving 64 KiB at a time: a reader that took every piece as it arrived would
    # pay a thread hop, a file open and a send for each of 128; it reads 4 MiB blocks.
    piece, count = b"c" * 65536, 128
    data = piece * count + b"\0"
    remote = PacedRemote(piece, sent_before_hold=count, size=len(data), pace=0.002)
    remote.release.set()
    fill = BlobFiller().start(("u", "r", digest_of(data)), spool(tmp_path, []), remote.open)
    await fill.wait_started()
    blocks = [chunk async for chunk in fill.read()]
    assert b"".join(blocks) == data
    assert len(blocks) <= 8, [len(b) for b in blocks]


class SlowStartRemote:
    """An upstream whose first chunks trickle (as a download's first moments do, while
    connections open and the other clients' requests arrive), then the rest comes at once."""

    def __init__(self, trickle: list[bytes], rest: bytes, pace: float) -> None:
        self.trickle, self.rest, self.pace = trickle, rest, pace
        self.data = b"".join(trickle) + rest

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[tuple[int | None, AsyncIterator[bytes]]]:
        async def body() -> AsyncIterator[bytes]:
            for chunk in self.trickle:
                yield chunk
                await asyncio.sleep(self.pace)
            yield self.rest

        yield len(self.data), body()


async def test_a_fill_with_a_slow_start_still_settles_into_the_file(tmp_path: Path) -> None:
    # 4 KiB per 20 ms, then 16 MiB at once: the first moments' pace says ~80 s to go, more
    # than twice the bound, but one slow start must not send the clients to streaming
    # (where they would slow the fill down for real): the pace is judged after a while.
    remote = SlowStartRemote([b"t" * 4096] * 5, b"u" * (16 << 20), pace=0.02)
    published: list[str] = []
    key = ("u", "r", digest_of(remote.data))
    fill = BlobFiller().start(key, spool(tmp_path, published), remote.open)
    await fill.wait_started()
    assert await fill.settle(20.0)
    assert (tmp_path / "root" / "blobs" / "data").read_bytes() == remote.data
    assert len(published) == 1


async def test_a_stalled_fill_settles_no_longer_than_its_bound(tmp_path: Path) -> None:
    remote = FakeRemote([b"h" * 1000, b"i" * 1000])  # holds after its first chunk
    data = b"".join(remote.chunks)
    fill = BlobFiller().start(("u", "r", digest_of(data)), spool(tmp_path, []), remote.open)
    await fill.wait_started()
    assert await fill.settle(0.2) is False
    assert not fill.finished
    remote.release.set()
    assert await collect(fill.read()) == data


async def test_a_failing_fill_fails_the_settling_readers(tmp_path: Path) -> None:
    remote = FakeRemote([b"good" * 10, b"evil"])
    remote.release.set()
    published: list[str] = []
    key = ("u", "r", digest_of(b"something else"))
    leader = BlobFiller().start(key, spool(tmp_path, published), remote.open)
    follower = BlobFiller().start(key, spool(tmp_path, published), remote.open)
    for fill in (leader, follower):
        with pytest.raises(FetchFailed):
            await fill.wait_started()  # raises if the fill failed before this one joined
            await fill.settle(60.0)
    assert published == []
    assert not (tmp_path / "root" / "blobs" / "data").exists()
    assert leftovers(tmp_path) == []
