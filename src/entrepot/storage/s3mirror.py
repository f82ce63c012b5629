"""Machine-local mirrors of S3 ingests (see ``s3ingest``): the clients of one replica read
a cache fill from one local file instead of each reading the part objects back from S3.

A mirror is the file ``<directory>/<name>`` (the name a hash of the ingest's key) holding
the ingest's first bytes in order; the bytes below its size never change. One *feeder*
at a time appends to it, holding an exclusive flock on ``<name>.lock``: the leader's own
process while it downloads (it writes each byte it receives, so its machine never reads
its own parts back), or, on another replica, a reader that needs bytes the file does not
have yet: it takes the lock, appends the parts S3 has by then, and lets go. Every process
reading a mirror keeps it open under a shared flock; the leader removes it once the fill
ends (readers keep what they opened), on other machines the last process to close it
(idle for ``IDLE_CLOSE``: an exclusive flock then succeeds) removes it. A mirror removed
before it was complete (the ingest ended first) makes its readers read the blob instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

__all__ = ["Mirror", "Mirrors", "mirror_directory"]

log = logging.getLogger("entrepot.storage.s3")

IDLE_CLOSE = 60.0  # seconds a process keeps a mirror open after its last use
STALE = 3600.0  # a mirror (or lock file) unchanged this long and held by none is removed
READ_CHUNK = 4 << 20


def mirror_directory(endpoint: str, bucket: str, root: str) -> str:
    name = hashlib.sha256(f"{endpoint}\n{bucket}\n{root}".encode()).hexdigest()[:24]
    # One per user, as the lease directory (storage/s3.py).
    return os.path.join(tempfile.gettempdir(), f"entrepot-mirrors-{os.geteuid()}", name)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _pread(fd: int, offset: int, length: int) -> bytes:
    return os.pread(fd, length, offset)


class Mirror:
    """One mirror, open in this process (see the module docstring)."""

    def __init__(self, mirrors: Mirrors, name: str, fd: int) -> None:
        self._mirrors = mirrors
        self.name = name
        self.path = os.path.join(mirrors.directory, name)
        self.fd = fd
        self.lock_fd = -1  # >= 0 while this process feeds it
        self._timer: asyncio.TimerHandle | None = None

    @property
    def size(self) -> int:
        return os.fstat(self.fd).st_size

    @property
    def dropped(self) -> bool:
        """Removed (by the leader once the fill ended, or as incomplete)."""
        return os.fstat(self.fd).st_nlink == 0

    @property
    def feeding(self) -> bool:
        return self.lock_fd >= 0

    def try_feed(self) -> bool:
        """Become its feeder unless another (process or task) is."""
        if self.lock_fd >= 0:
            return False
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.lock_fd = fd
        return True

    def stop_feeding(self) -> None:
        if self.lock_fd >= 0:
            fd, self.lock_fd = self.lock_fd, -1
            os.close(fd)

    def drop(self) -> None:
        """Remove it from the directory; processes that have it open keep reading."""
        for path in (self.path, self.path + ".lock"):
            with contextlib.suppress(OSError):
                os.unlink(path)

    async def append(self, data: bytes | memoryview) -> None:
        await asyncio.to_thread(_write_all, self.fd, data)

    async def read(self, offset: int, length: int) -> AsyncIterator[bytes]:
        end = offset + length
        while offset < end:
            data = await asyncio.to_thread(_pread, self.fd, offset, min(end - offset, READ_CHUNK))
            if not data:
                raise OSError(errno.EIO, f"mirror {self.path} is shorter than its size")
            offset += len(data)
            yield data

    def touch(self) -> None:
        """Keep it open for IDLE_CLOSE more seconds."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(IDLE_CLOSE, self.close)

    def close(self) -> None:
        if self.feeding:  # its feeder's writes keep it open
            self.touch()
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._mirrors.opened.get(self.name) is self:
            del self._mirrors.opened[self.name]
        with contextlib.suppress(OSError):
            # Nobody else has it open (our shared lock becomes exclusive): remove it.
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.drop()
        os.close(self.fd)


class Mirrors:
    """The mirrors of one store on this machine, and those this process has open."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.opened: dict[str, Mirror] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` (a feeder's) in a task of its own, kept until it ends."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    def _name(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()[:40]

    def create(self, key: str) -> Mirror | None:
        """A new mirror of ``key`` that this process feeds (the leader's), or None when
        the local directory cannot take it (then the ingest goes without one)."""
        name = self._name(key)
        path = os.path.join(self.directory, name)
        try:
            os.makedirs(self.directory, exist_ok=True)
            with contextlib.suppress(OSError):
                self._sweep()
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC)
        except OSError as exc:
            log.warning("no local mirror for %s at %s: %s", key, path, exc)
            return None
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # a new file: nobody else has it
        mirror = Mirror(self, name, fd)
        if not mirror.try_feed():  # a new file: only a stale lock file could hold it
            mirror.close()
            return None
        self.opened[name] = mirror
        mirror.touch()
        return mirror

    def _sweep(self) -> None:
        """Remove mirrors left by processes that died (nobody has them open) long ago."""
        now = time.time()
        with os.scandir(self.directory) as entries:
            stale = [e.path for e in entries if now - e.stat().st_mtime > STALE]
        for path in stale:
            with contextlib.suppress(OSError):
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    os.unlink(path)
                finally:
                    os.close(fd)

    def open(self, key: str, create: bool) -> Mirror | None:
        """The mirror of ``key`` (kept open for IDLE_CLOSE after each use): already open
        here, else from the directory, else (``create``) a new empty one; None if there is
        none or it cannot be made."""
        name = self._name(key)
        mirror = self.opened.get(name)
        if mirror is None:
            path = os.path.join(self.directory, name)
            flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
            try:
                if create:
                    os.makedirs(self.directory, exist_ok=True)
                    flags |= os.O_CREAT
                fd = os.open(path, flags, 0o600)
            except FileNotFoundError:
                return None
            except OSError as exc:
                log.warning("no local mirror for %s at %s: %s", key, path, exc)
                return None
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:  # its last reader is removing it
                os.close(fd)
                return None
            mirror = self.opened[name] = Mirror(self, name, fd)
        mirror.touch()
        return mirror

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # no thread writes to a closed fd
        for mirror in list(self.opened.values()):
            mirror.stop_feeding()
            mirror.close()
