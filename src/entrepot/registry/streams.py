"""Receiving a body while the previous part is still being stored."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

MAX_PENDING = 16 << 20  # received but not yet consumed: beyond this, stop receiving


async def pump(
    chunks: AsyncIterator[bytes],
    consume: Callable[[bytes], Awaitable[None]],
    max_pending: int = MAX_PENDING,
) -> None:
    """``pump_batches`` with each batch joined into one bytes object."""

    async def consume_joined(parts: list[bytes]) -> None:
        await consume(b"".join(parts))  # one part: that object itself, not a copy

    await pump_batches(chunks, consume_joined, max_pending)


async def pump_batches(
    chunks: AsyncIterator[bytes],
    consume: Callable[[list[bytes]], Awaitable[None]],
    max_pending: int = MAX_PENDING,
    min_batch: int = 0,
) -> None:
    """Feed ``chunks`` to ``consume`` in batches (lists of chunks, in order): while one
    batch is consumed (hashed and written, typically in threads), the next chunks
    gather. A fast sender then costs few thread hops, and a slow one still gets each
    chunk consumed as soon as it arrives, or once ``min_batch`` bytes arrived (fewer,
    larger batches: thread hops cost CPU). An error on either side stops both and is
    raised here."""
    min_batch = min(min_batch, max_pending)
    pending: list[bytes] = []
    pending_bytes = 0
    wake = asyncio.Event()
    drained = asyncio.Event()
    receiving = True

    async def consume_loop() -> None:
        nonlocal pending, pending_bytes
        try:
            while True:
                await wake.wait()
                wake.clear()
                while pending and (pending_bytes >= min_batch or not receiving):
                    batch = pending
                    pending, pending_bytes = [], 0
                    drained.set()
                    await consume(batch)
                if not receiving:
                    return
        finally:
            drained.set()  # a failed consumer must not leave the receiver waiting

    consumer = asyncio.create_task(consume_loop())
    try:
        async for chunk in chunks:
            if not chunk:
                continue
            pending.append(chunk)
            pending_bytes += len(chunk)
            if pending_bytes >= min_batch:
                wake.set()
            if consumer.done():
                break  # the consumer failed; awaiting it below raises why
            if pending_bytes >= max_pending:
                drained.clear()
                await drained.wait()
    except BaseException:
        consumer.cancel()
        with contextlib.suppress(BaseException):
            await consumer
        raise
    receiving = False
    wake.set()
    await consumer
