"""The contract's leases of scope "store" (what keeps background work to one process of a
fleet: garbage collection, eviction, the usage meter, prefetch, compaction) on every
driver: the filesystem (lock files), S3 alone (objects in the bucket) and S3 with Redis.
Two drivers stand for two replicas: on S3 each has its own machine (its own lock files and
mirrors), so only what the bucket or Redis shares can keep them apart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from entrepot.proxy.cache import ProxyCache
from entrepot.proxy.janitor import CacheJanitor
from entrepot.registry.local import LocalRegistry
from entrepot.storage import Lease, LeaseLost, StorageDriver
from tests.storage.conftest import two_drivers_on_one_store

TTL = 1.0  # seconds: short, so that expiry shows within a test


@pytest.fixture(params=["filesystem", "s3", "s3-redis"])
async def replicas(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[StorageDriver, StorageDriver]]:
    async with two_drivers_on_one_store(
        request, tmp_path, request.param, own_machines=True
    ) as drivers:
        yield drivers


async def take(driver: StorageDriver, key: str) -> Lease:
    lease = await driver.try_lease(key, ttl=TTL)
    assert lease is not None, f"{key} should be free"
    return lease


async def test_one_holder_among_replicas_until_released(
    replicas: tuple[StorageDriver, StorageDriver],
) -> None:
    one, other = replicas
    assert await other.lease_holder("work/gc") is None
    lease = await take(one, "work/gc")
    assert await other.try_lease("work/gc", ttl=TTL) is None
    assert await one.try_lease("work/gc", ttl=TTL) is None  # not re-entrant either
    assert await other.lease_holder("work/gc") == lease.token
    await lease.renew()
    assert await other.lease_holder("work/gc") == lease.token

    await lease.release()
    await lease.release()  # a no-op the second time
    with pytest.raises(LeaseLost):
        await lease.renew()  # released: nothing to renew
    assert await other.lease_holder("work/gc") is None
    again = await take(other, "work/gc")
    assert again.token != lease.token
    assert await one.lease_holder("work/gc") == again.token
    await again.release()


async def test_racing_replicas_elect_exactly_one(
    replicas: tuple[StorageDriver, StorageDriver],
) -> None:
    one, other = replicas
    tries = [d.try_lease("work/race", ttl=TTL) for d in [one, other] * 4]
    held = [lease for lease in await asyncio.gather(*tries) if lease is not None]
    assert len(held) == 1
    await held[0].release()


async def test_a_held_lease_is_renewed_past_its_time_limit(
    replicas: tuple[StorageDriver, StorageDriver],
) -> None:
    one, other = replicas
    lease = await take(one, "work/meter")
    if lease.ttl is not None:  # a lock file has no time limit to outlive
        await asyncio.sleep(2 * lease.ttl)  # renewed in the background meanwhile
    assert await other.try_lease("work/meter", ttl=TTL) is None
    assert await other.lease_holder("work/meter") == lease.token
    await lease.renew()
    await lease.release()


async def test_a_holder_that_stalls_past_its_time_limit_loses_the_lease(
    replicas: tuple[StorageDriver, StorageDriver],
) -> None:
    one, other = replicas
    stalled = await take(one, "work/janitor")
    # The holder's replica stalls (its event loop blocked: nothing renews) for longer than
    # the time limit; a lock file stays held while its process lives.
    time.sleep(1.5 * TTL)  # noqa: ASYNC251 - the stall is the point
    taken = await other.try_lease("work/janitor", ttl=TTL)
    if stalled.ttl is None:
        assert taken is None
        await stalled.renew()
        await stalled.release()
        return
    assert taken is not None
    with pytest.raises(LeaseLost):
        await stalled.renew()
    await asyncio.wait_for(stalled.wait_lost(), 5)  # what a collection stops on
    # Only the holder renews or releases: the old one's release leaves the new one's.
    await stalled.release()
    assert await one.lease_holder("work/janitor") == taken.token
    await taken.renew()
    await taken.release()
    assert await one.lease_holder("work/janitor") is None


async def test_two_janitors_on_two_replicas_without_redis_do_not_sweep_at_once(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    async with two_drivers_on_one_store(request, tmp_path, "s3", own_machines=True) as drivers:
        janitors = [
            CacheJanitor(ProxyCache(LocalRegistry(driver)), ["docker.io"], maxsize=1 << 30)
            for driver in drivers
        ]
        swept = await asyncio.gather(*(janitor.sweep_once() for janitor in janitors))
        assert [result is not None for result in swept].count(True) == 1
        # Once the first is done, the other replica's turn comes.
        assert await janitors[1].sweep_once() is not None
        assert await janitors[0].sweep_once() is not None
