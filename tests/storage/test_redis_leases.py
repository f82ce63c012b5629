"""Leases in Redis beyond the contract: a time limit, renewed while held, so a replica
that dies lets go; and only the holder can renew or release."""

from __future__ import annotations

import asyncio
import uuid

from entrepot.storage.redisleases import RedisLeases
from tests.redisserver import RedisServer

TTL = 0.6  # seconds


def leases(redis_server: RedisServer, prefix: str) -> RedisLeases:
    return RedisLeases(redis_server.settings(), prefix)


async def test_a_held_lease_outlives_its_time_limit_and_a_dead_holders_lapses(
    redis_server: RedisServer,
) -> None:
    prefix = f"entrepot:test:{uuid.uuid4().hex}:"
    alive, dying, other = (leases(redis_server, prefix) for _ in range(3))
    try:
        kept = await alive.acquire("kept", TTL)
        lost = await dying.acquire("lost", TTL)
        assert kept is not None and lost is not None
        # The holder of "lost" dies: its client goes, nothing renews or releases.
        await dying.close()
        dying.redis = other.redis.__class__(  # a client that can no longer reach Redis
            host="127.0.0.1", port=1, socket_connect_timeout=0.2
        )
        await asyncio.sleep(TTL * 3)
        assert await other.holder("kept") == kept.token  # renewed all along
        assert await other.holder("lost") is None  # lapsed: another may take over
        taken = await other.acquire("lost", TTL)
        assert taken is not None
        # The old holder comes back: its release does not free what another now holds.
        dying.redis = redis_server.settings().client()
        await lost.release()
        assert await other.holder("lost") == taken.token
        await taken.release()
        await kept.release()
        assert await other.holder("kept") is None
    finally:
        for service in (alive, dying, other):
            await service.close()
