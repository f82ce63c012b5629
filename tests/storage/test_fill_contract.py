"""The contract's leases and ingests (what a shared cache fill is built on), on every
driver: the filesystem, S3 with leases among this machine's processes, and S3 with leases
in Redis (shared by every replica); leases of the scope a fill asks for (proxy/fetch.py).
Two drivers on one store stand for two processes or replicas."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from entrepot.proxy.fetch import FILL
from entrepot.storage import StorageDriver, StorageNotFound
from tests.storage.conftest import two_drivers_on_one_store

MiB = 1024 * 1024
INGEST = "repositories/r/_uploads/fill-x/token-1"
DST = "blobs/sha256/ab/abcd/data"


@pytest.fixture(params=["filesystem", "s3", "s3-redis"])
async def two_drivers(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[StorageDriver, StorageDriver]]:
    """Two drivers on one store, as two processes (or, with Redis, replicas) would have."""
    kind = request.param
    async with two_drivers_on_one_store(
        request, tmp_path, kind, own_machines=kind == "s3-redis"
    ) as drivers:
        yield drivers


# ---- leases ----------------------------------------------------------------------------


async def test_one_holder_at_a_time_and_others_see_its_token(
    two_drivers: tuple[StorageDriver, StorageDriver],
) -> None:
    one, other = two_drivers
    assert await other.lease_holder("fills/a/lease", scope=FILL) is None
    lease = await one.try_lease("fills/a/lease", scope=FILL)
    assert lease is not None and lease.token
    assert await other.try_lease("fills/a/lease", scope=FILL) is None
    assert await one.try_lease("fills/a/lease", scope=FILL) is None  # not re-entrant either
    assert await other.lease_holder("fills/a/lease", scope=FILL) == lease.token
    # Another name is another lease.
    second = await other.try_lease("fills/b/lease", scope=FILL)
    assert second is not None and second.token != lease.token
    await second.release()

    await lease.release()
    await lease.release()  # a no-op the second time
    assert await other.lease_holder("fills/a/lease", scope=FILL) is None
    again = await other.try_lease("fills/a/lease", scope=FILL)
    assert again is not None and again.token != lease.token
    assert await one.lease_holder("fills/a/lease", scope=FILL) == again.token
    await again.release()


async def test_concurrent_tries_elect_exactly_one(
    two_drivers: tuple[StorageDriver, StorageDriver],
) -> None:
    one, other = two_drivers
    leases = await asyncio.gather(
        *(d.try_lease("fills/race/lease", scope=FILL) for d in [one, other] * 4)
    )
    held = [lease for lease in leases if lease is not None]
    assert len(held) == 1
    await held[0].release()


async def test_a_lease_is_not_an_object(two_drivers: tuple[StorageDriver, StorageDriver]) -> None:
    one, _ = two_drivers
    lease = await one.try_lease("fills/c/lease", scope=FILL)
    assert lease is not None
    await lease.release()
    with pytest.raises(StorageNotFound):
        await one.stat("fills/c/lease")


# ---- ingests -----------------------------------------------------------------------------


async def wait_readable(driver: StorageDriver, key: str, at_least: int) -> int:
    deadline = time.monotonic() + 60
    while True:
        state = await driver.ingested(key)
        if state is not None and state.readable >= at_least:
            return state.readable
        assert time.monotonic() < deadline, f"{key}: {state} never reached {at_least} bytes"
        await asyncio.sleep(0.05)


async def read_ingest(driver: StorageDriver, key: str, offset: int, length: int) -> bytes:
    return b"".join([c async for c in driver.read_ingest(key, offset, length)])


async def test_an_ingest_is_read_while_it_grows_then_published_whole(
    two_drivers: tuple[StorageDriver, StorageDriver],
) -> None:
    writer_side, reader_side = two_drivers
    data = os.urandom(12 * MiB + 12345)
    writer = await writer_side.ingest(INGEST, DST, len(data))
    half = len(data) // 2
    for start in range(0, half, 256 * 1024):
        await writer.write(data[start : min(start + 256 * 1024, half)])
    assert writer.size == half

    # Another process sees the announced size and reads what is readable so far.
    readable = await wait_readable(reader_side, INGEST, 1)
    assert readable <= writer.readable <= half
    state = await reader_side.ingested(INGEST)
    assert state is not None and state.size == len(data)
    assert await read_ingest(reader_side, INGEST, 0, readable) == data[:readable]
    assert await read_ingest(reader_side, INGEST, 100, readable - 200) == data[100 : readable - 100]
    with pytest.raises(StorageNotFound):
        await reader_side.stat(DST)  # nothing at the destination until published

    # The rest in writes of any size, as a cache fill's batches come: one bigger than the
    # 1 MiB a filesystem ingest writes a system call, a short one.
    cuts = [half, half + 3 * MiB + 7, half + 3 * MiB + 24]
    for start, end in itertools.pairwise(cuts):
        await writer.write(data[start:end])
    # Then as a fill writes what it received meanwhile: several buffers at once, each also
    # given to the digest (in order), and the last byte alone.
    cuts = [cuts[-1], cuts[-1] + 256 * 1024, cuts[-1] + 256 * 1024 + 5, len(data) - 1]
    parts = [data[start:end] for start, end in itertools.pairwise(cuts)]
    seen = hashlib.sha256()
    await writer.write_parts(parts, seen.update)
    assert seen.digest() == hashlib.sha256(data[cuts[0] : cuts[-1]]).digest()
    await writer.write_parts([data[-1:]], seen.update)
    assert writer.size == len(data)
    await wait_readable(reader_side, INGEST, 4 * MiB)  # more became readable as it grew
    await writer.publish()

    assert await reader_side.get_content(DST) == data
    assert await reader_side.ingested(INGEST) is None
    # Gone, or (S3: a local copy a reader already had) the published bytes.
    with contextlib.suppress(StorageNotFound):
        assert await read_ingest(reader_side, INGEST, 0, 10) == data[:10]
    # Nothing of the ingest is left: its parent holds nothing else.
    with pytest.raises(StorageNotFound):
        await reader_side.stat(INGEST)


async def test_an_unknown_size_is_announced_as_such(
    two_drivers: tuple[StorageDriver, StorageDriver],
) -> None:
    one, other = two_drivers
    writer = await one.ingest(INGEST, DST)
    await writer.write(b"x" * (2 * MiB))
    await wait_readable(other, INGEST, 1)
    state = await other.ingested(INGEST)
    assert state is not None and state.size is None
    await writer.publish()
    assert (await other.stat(DST)).size == 2 * MiB


async def test_a_cancelled_ingest_leaves_nothing(
    two_drivers: tuple[StorageDriver, StorageDriver],
) -> None:
    one, other = two_drivers
    await one.put_content("repositories/r/_uploads/keep", b"unrelated")
    writer = await one.ingest(INGEST, DST, 20 * MiB)
    data = os.urandom(8 * MiB)
    for start in range(0, len(data), MiB):
        await writer.write(data[start : start + MiB])
    await wait_readable(other, INGEST, 1)
    await writer.cancel()
    await writer.cancel()  # a no-op the second time

    assert await other.ingested(INGEST) is None
    with pytest.raises(StorageNotFound):
        await other.stat(DST)
    with pytest.raises(StorageNotFound):
        await other.stat(INGEST)
    with pytest.raises(StorageNotFound):
        await read_ingest(one, INGEST, 0, 1)  # the writer's machine: gone at once
    # Gone, or (S3: a local copy the other machine had taken) bytes that were readable.
    with contextlib.suppress(StorageNotFound):
        assert await read_ingest(other, INGEST, 0, 1) == data[:1]
    assert [k async for batch in other.walk("") for k in batch] == ["repositories/r/_uploads/keep"]


async def test_publishing_replaces_what_is_at_the_destination(
    two_drivers: tuple[StorageDriver, StorageDriver],
) -> None:
    one, other = two_drivers
    await one.put_content(DST, b"old")
    writer = await one.ingest(INGEST, DST, 3)
    await writer.write(b"new")
    assert await other.get_content(DST) == b"old"
    await writer.publish()
    assert await other.get_content(DST) == b"new"
