"""pump: chunks are consumed in order, in batches, and errors on either side surface."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from entrepot.registry.streams import pump, pump_batches


async def body(parts: list[bytes], fail_at: int | None = None) -> AsyncIterator[bytes]:
    for index, part in enumerate(parts):
        if fail_at == index:
            raise ConnectionError("client went away")
        await asyncio.sleep(0)
        yield part


async def test_everything_arrives_in_order_batched_while_consuming() -> None:
    parts = [bytes([i]) * 1000 for i in range(50)]
    seen: list[bytes] = []

    async def slow_consume(data: bytes) -> None:
        seen.append(data)
        await asyncio.sleep(0.005)  # chunks gather meanwhile

    await pump(body(parts), slow_consume)
    assert b"".join(seen) == b"".join(parts)
    assert len(seen) < len(parts)  # batched, not one call per chunk


async def test_sender_error_stops_and_raises() -> None:
    consumed: list[bytes] = []

    async def consume(data: bytes) -> None:
        consumed.append(data)

    with pytest.raises(ConnectionError):
        await pump(body([b"a", b"b", b"c"], fail_at=2), consume)


async def test_consumer_error_stops_receiving_and_raises() -> None:
    received = 0

    async def counting() -> AsyncIterator[bytes]:
        nonlocal received
        for _ in range(1000):
            received += 1
            await asyncio.sleep(0)
            yield b"x" * 100

    async def broken(data: bytes) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        await pump(counting(), broken, max_pending=1000)
    assert received < 1000


async def test_backpressure_bounds_what_is_held() -> None:
    held: list[int] = []
    gate = asyncio.Event()

    async def consume(data: bytes) -> None:
        held.append(len(data))
        await gate.wait()

    parts = [b"y" * 100] * 100
    task = asyncio.create_task(pump(body(parts), consume, max_pending=500))
    await asyncio.sleep(0.05)
    assert sum(held) <= 600  # one batch in the consumer; the sender waits for it
    gate.set()
    await task
    assert sum(held) == 10_000


async def test_batches_are_the_received_chunks_at_least_min_batch_bytes_but_the_last() -> None:
    parts = [bytes([i]) * 100 for i in range(25)]
    batches: list[list[bytes]] = []

    async def consume(batch: list[bytes]) -> None:
        batches.append(batch)

    await pump_batches(body(parts), consume, min_batch=1000)

    assert [part for batch in batches for part in batch] == parts  # the objects, unjoined
    assert all(sum(map(len, batch)) >= 1000 for batch in batches[:-1])
    assert len(batches) <= 3


async def test_a_min_batch_above_max_pending_still_drains() -> None:
    parts = [b"z" * 100] * 50
    seen = 0

    async def consume(batch: list[bytes]) -> None:
        nonlocal seen
        seen += sum(map(len, batch))

    await asyncio.wait_for(
        pump_batches(body(parts), consume, max_pending=300, min_batch=10_000), 60
    )
    assert seen == 5000
