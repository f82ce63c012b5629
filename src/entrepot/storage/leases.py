"""Where drivers keep their leases (see ``driver.Lease``): a lock file on this machine
(``FlockLeases``: the processes of one machine; a process that dies lets go at once),
Redis (``storage.redisleases``: every replica that shares the Redis server), or objects in
the store itself (``storage.objectleases``: every replica, on plain S3). The last two
have a time limit and renew it while held (``RenewedLease``)."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import fcntl
import logging
import os
import uuid

from entrepot.storage.driver import Lease, LeaseLost, StorageError

__all__ = ["FlockLeases", "Leases", "RenewedLease", "new_token"]

log = logging.getLogger("entrepot.storage.leases")


def new_token() -> str:
    return uuid.uuid4().hex


class Leases(abc.ABC):
    """A lease service: names are strings chosen by the driver (unique per store)."""

    # Whether holders on other machines (replicas) take part, or only this machine's.
    across_machines: bool = False

    @abc.abstractmethod
    async def acquire(self, name: str, ttl: float) -> Lease | None: ...

    @abc.abstractmethod
    async def holder(self, name: str) -> str | None: ...

    async def close(self) -> None:  # noqa: B027 - an optional hook
        """Release connections."""


class RenewedLease(Lease):
    """A lease with a time limit, renewed by a background task every third of it until
    released or lost (two renewals in a row may fail). Subclasses say how to extend it
    (``_extend``: False once another holder has it) and let it go (``_drop``)."""

    ttl: float

    def __init__(self, name: str, token: str, ttl: float) -> None:
        self.name = name
        self.token = token
        self.ttl = ttl
        self._held = True
        self._lost = asyncio.Event()
        self._renewal: asyncio.Task[None] | None = asyncio.create_task(self._keep())

    @abc.abstractmethod
    async def _extend(self) -> bool: ...

    @abc.abstractmethod
    async def _drop(self) -> None: ...

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                await self.renew()
            except LeaseLost:
                log.warning("lease %s lapsed; another holder may take over", self.name)
                return
            except StorageError as exc:
                log.warning("cannot renew lease %s: %s", self.name, exc)

    async def renew(self) -> None:
        if self._held and not await self._extend():
            self._held = False
            self._lost.set()
        if not self._held:
            raise LeaseLost(f"lease {self.name} is no longer held by {self.token}")

    async def wait_lost(self) -> None:
        await self._lost.wait()

    async def release(self) -> None:
        if self._renewal is None:
            return
        self._renewal.cancel()
        self._renewal = None
        if self._held:
            self._held = False
            # Shielded: a cancelled holder still lets go now rather than at the time limit.
            with contextlib.suppress(StorageError, asyncio.CancelledError):
                await asyncio.shield(self._drop())


class _FlockLease(Lease):
    ttl = None  # held until released or its process dies

    def __init__(self, fd: int, path: str, token: str) -> None:
        self._fd = fd
        self._path = path
        self.token = token

    async def renew(self) -> None:
        if self._fd < 0:
            raise LeaseLost(f"lease file {self._path} was released")

    async def release(self) -> None:
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        # Unlink while still locked: a process that opens the name afterwards makes a new
        # file; one that opened this one before finds it unlocked and, like every new
        # holder, first checks whether the work is done.
        with contextlib.suppress(OSError):
            os.unlink(self._path)
        with contextlib.suppress(OSError):
            os.close(fd)  # closing releases the flock
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(self._path))  # only if nothing else is in it


class FlockLeases(Leases):
    """A lease is an exclusive flock on the file ``<directory>/<name>``, which holds the
    holder's token. A few small syscalls each, inline: deciding who holds a lease must
    not wait for a thread. No time limit: the kernel lets go when the holder dies."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    async def acquire(self, name: str, ttl: float) -> Lease | None:
        path = self._path(name)
        try:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except FileNotFoundError:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StorageError(f"lease file {path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        token = new_token()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, token.encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise StorageError(f"lease file {path}: {exc.strerror or exc}") from exc
        return _FlockLease(fd, path, token)

    async def holder(self, name: str) -> str | None:
        try:
            fd = os.open(self._path(name), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"lease file {self._path(name)}: {exc.strerror or exc}") from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return os.pread(fd, 64, 0).decode(errors="replace")
            return None  # nobody holds it (we held it shared for a moment)
        finally:
            os.close(fd)
