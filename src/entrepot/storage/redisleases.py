"""Leases in Redis (registry:2's ``redis`` section): one holder across every replica that
shares the Redis server, for cache fills and background work alike. A lease is the key
``<prefix><name>`` set with NX to the holder's token and a time limit, renewed while held
(so a replica that dies lets go within the limit); renewal and release touch the key only
while it still holds our token.

Every call is bounded by ``ANSWER_WITHIN`` whatever ``redis.readtimeout`` says (registry:2's
default, 0, is no limit): a hung Redis (stopped, or a network that drops packets) must not
stall a cache fill, which goes ahead without a lease instead. A failed call is tried once
more at once (a pooled connection Redis closed), not after redis-py's growing back-off."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from entrepot.storage.driver import Lease, StorageError
from entrepot.storage.leases import Leases, RenewedLease, new_token

__all__ = ["RedisLeases", "RedisSettings"]

T = TypeVar("T")
PING_WITHIN = 5.0  # start-up: the longest the check that Redis answers waits

# The longest a lease call waits for Redis: a lease is worth a moment, not a stalled fill.
ANSWER_WITHIN = 1.5
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"  # noqa: E501
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"  # noqa: E501


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """What the client needs, already validated (the config layer maps registry:2's keys)."""

    host: str
    port: int = 6379
    password: str | None = None
    db: int = 0
    tls: bool = False
    dial_timeout: float | None = None
    read_timeout: float | None = None
    write_timeout: float | None = None
    max_connections: int | None = None

    @property
    def address(self) -> str:
        return f"redis at {self.host}:{self.port} db {self.db}"

    def client(self) -> aioredis.Redis:
        # redis-py has one timeout for reads and writes: the longer of the two.
        timeouts = [t for t in (self.read_timeout, self.write_timeout) if t]
        return aioredis.Redis(
            host=self.host,
            port=self.port,
            password=self.password,
            db=self.db,
            ssl=self.tls,
            socket_connect_timeout=self.dial_timeout or None,
            socket_timeout=max(timeouts) if timeouts else None,
            max_connections=self.max_connections or None,
            retry=Retry(NoBackoff(), 1),
        )


class _RedisLease(RenewedLease):
    def __init__(self, leases: RedisLeases, key: str, token: str, ttl: float) -> None:
        self._leases = leases
        super().__init__(f"{key} ({leases.address})", token, ttl)
        self._key = key

    async def _extend(self) -> bool:
        kept = await self._leases.call(
            self._key,
            self._leases.redis.eval(_RENEW, 1, self._key, self.token, int(self.ttl * 1000)),
        )
        return bool(kept)

    async def _drop(self) -> None:
        # Unreleased, it lapses within its time limit.
        with contextlib.suppress(StorageError):
            await self._leases.call(
                self._key, self._leases.redis.eval(_RELEASE, 1, self._key, self.token)
            )


class RedisLeases(Leases):
    across_machines = True

    def __init__(self, settings: RedisSettings, prefix: str) -> None:
        self.address = settings.address
        self.redis = settings.client()
        self.prefix = prefix

    def error(self, exc: Exception, name: str) -> StorageError:
        return StorageError(f"{self.address}: lease {name}: {exc}")

    async def call(self, name: str, command: Awaitable[T]) -> T:
        """``command``'s answer within ``ANSWER_WITHIN``, or a StorageError naming Redis."""
        try:
            async with asyncio.timeout(ANSWER_WITHIN):
                return await command
        except TimeoutError:
            raise StorageError(
                f"{self.address}: lease {name}: no answer within {ANSWER_WITHIN:g}s "
                "(is Redis hung or unreachable?)"
            ) from None
        except RedisError as exc:
            raise self.error(exc, name) from exc

    async def acquire(self, name: str, ttl: float) -> Lease | None:
        key = self.prefix + name
        token = new_token()
        taken = await self.call(name, self.redis.set(key, token, nx=True, px=int(ttl * 1000)))
        return _RedisLease(self, key, token, ttl) if taken else None

    async def holder(self, name: str) -> str | None:
        value = await self.call(name, self.redis.get(self.prefix + name))
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    async def close(self) -> None:
        with contextlib.suppress(RedisError):
            await self.redis.aclose()


def ping(settings: RedisSettings) -> str | None:
    """Why Redis cannot be used, naming it, or None (for start-up; blocking)."""

    async def check() -> None:
        client = settings.client()
        try:
            async with asyncio.timeout(PING_WITHIN):
                await client.ping()
        finally:
            await client.aclose()

    try:
        asyncio.run(check())
    except TimeoutError:
        return f"{settings.address}: no answer within {PING_WITHIN:g}s (is Redis hung?)"
    except (RedisError, OSError) as exc:
        return f"{settings.address}: {exc}"
    return None
