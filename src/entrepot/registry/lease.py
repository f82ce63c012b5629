"""Garbage collection's lease: the servers' scheduled runs and the command take it, so one
collection runs at a time over a store. It is the storage driver's lease of scope "store"
(storage/driver.py ``Lease``): a lock file on a filesystem, Redis where configured, else
objects in the bucket; renewed while held, lost by a holder that stalls past its time
limit: ``while_held`` then stops the collection."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from entrepot.storage import Lease, LeaseLost

T = TypeVar("T")

# Not "entrepot/gc/lease": older versions kept their lease's generations in that folder.
GC_LEASE = "entrepot/gc/lock"
GC_LEASE_TTL = 60.0  # seconds; renewed every third of it


async def while_held(lease: Lease, work: Awaitable[T]) -> T:
    """Run ``work`` while ``lease`` is held: cancel it and raise LeaseLost as soon as the
    lease's own renewal finds it lost (its holder stalled past the time limit and another
    may have taken over), so two collections never sweep at once."""
    task = asyncio.ensure_future(work)
    lost = asyncio.create_task(lease.wait_lost())
    try:
        await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise LeaseLost(f"the lease {GC_LEASE} was lost while collecting")
        return task.result()
    finally:
        lost.cancel()
        if not task.done():
            task.cancel()  # the caller was cancelled (the server or command is stopping)
