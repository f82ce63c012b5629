"""Where drivers keep their leases (see ``driver.Lease``): a lock file on this machine
(``FlockLeases``: the processes of one machine; a process that dies lets go at once), or
Redis (``storage.redisleases``: every replica that shares the Redis server)."""

from __future__ import annotations

import abc
import contextlib
import fcntl
import os
import uuid

from entrepot.storage.driver import Lease, StorageError

__all__ = ["FlockLeases", "Leases", "new_token"]


def new_token() -> str:
    return uuid.uuid4().hex


class Leases(abc.ABC):
    """A lease service: names are strings chosen by the driver (unique per store)."""

    # What an operator gets, for the start-up log ("one machine", "every replica ...").
    scope: str = ""
    # Whether holders on other machines (replicas) take part, or only this machine's.
    across_machines: bool = False

    @abc.abstractmethod
    async def acquire(self, name: str) -> Lease | None: ...

    @abc.abstractmethod
    async def holder(self, name: str) -> str | None: ...

    async def close(self) -> None:  # noqa: B027 - an optional hook
        """Release connections."""


class _FlockLease(Lease):
    def __init__(self, fd: int, path: str, token: str) -> None:
        self._fd = fd
        self._path = path
        self.token = token

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
    not wait for a thread."""

    scope = "the processes of this machine (a lock file)"

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    async def acquire(self, name: str) -> Lease | None:
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
