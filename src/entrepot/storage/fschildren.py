"""Walk children (fswalk) from the driver's side: started, read, stopped while a collection
rests (walks_stopped), killed when no longer wanted. Apart from fswalk, which the children
run, so that they start without asyncio.
"""

from __future__ import annotations

import asyncio
import contextlib
import marshal
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import IO, Any, Protocol

from entrepot.storage.earlywalks import RUN_WALKER, WalkChild
from entrepot.storage.fswalk import END, LENGTH, WAIT, local_argv, shard_arg, told_message
from entrepot.storage.objects import FileInfo, Shard, StorageError


class Writer(Protocol):
    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...


class Child(Protocol):
    """A walk child as this module reads it: an asyncio one, or an EarlyChild."""

    @property
    def pid(self) -> int: ...

    @property
    def stdin(self) -> Writer | None: ...

    @property
    def stdout(self) -> asyncio.StreamReader | None: ...

    @property
    def stderr(self) -> asyncio.StreamReader | None: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...

    def kill(self) -> None: ...


def fold_name(fold: Callable[..., object] | None) -> str | None:
    """How the walking process finds ``fold`` (or a local walk) again; None for one it
    cannot (a closure)."""
    if fold is None:
        return "-"
    module, name = getattr(fold, "__module__", None), getattr(fold, "__qualname__", "")
    if not module or "." in name or "<" in name:
        return None
    return f"{module}:{name}"


async def walk_apart(
    root: str,
    fold: str,
    reading: tuple[str, str, str] | None = None,
    shard: Shard | None = None,
) -> AsyncIterator[list[FileInfo]]:
    """The objects under ``root`` (a path), walked by a child process, in batches; with
    ``reading`` (a module-level Reader's name, the store's root path, the walk's prefix
    in it), each carries the bytes the reader names, read by the child; with ``shard``,
    only those below its top-level entries."""
    argv = [root, fold, shard_arg(shard), *(reading or ())]
    async for rows in _from_child(argv, root):
        yield [FileInfo(*row) for row in rows]


async def walk_local_apart(
    base: str,
    prefix: str,
    walk: str,
    args: tuple[str, ...],
    shard: Shard | None,
    spares: WalkSpares | None = None,
) -> AsyncIterator[list[Any]]:
    """The batches of the local walk named ``walk`` (see localwalk) over the store at
    ``base`` (a path), walked by a child process: one of ``spares`` if there is one, the
    one told this very walk first."""
    argv = local_argv(base, prefix, walk, args, shard)
    spare, told = (None, False) if spares is None else spares.take(argv)
    async for batch in _from_child(argv, f"{base}/{prefix}", spare, told, spares):
        yield batch


async def _from_child(
    argv: list[str],
    where: str,
    spare: Child | None = None,
    told: bool = False,
    spares: WalkSpares | None = None,
) -> AsyncIterator[Any]:
    """Each message of a child running fswalk with ``argv``: ``spare`` (see
    WalkSpares) told them now, or already (``told``), or one started now. A spare that
    ends its walk (fswalk.END) goes back to ``spares`` for another."""
    if told:
        child: Child | None = spare
    else:
        child = await _told(spare, argv) if spare is not None else None
    if child is None:
        child = await _spawn(argv)
    assert child.stdout is not None and child.stderr is not None
    # Read while the rows come: a child that fills the stderr pipe would wait for it.
    errors = asyncio.ensure_future(_tail(child.stderr))
    walker = Stoppable(child.pid)
    walked = False  # to its END: the child waits for another walk
    try:
        while header := await child.stdout.read(LENGTH.size):
            if len(header) < LENGTH.size:
                header += await child.stdout.readexactly(LENGTH.size - len(header))
            size = LENGTH.unpack(header)[0]
            if size == END:
                walked = True
                break
            yield marshal.loads(await child.stdout.readexactly(size))
        if not walked:
            err = await errors
            await child.wait()
    finally:
        walker.close()
        errors.cancel()
        if walked:
            await (spares.reuse(child) if spares is not None else _stopped(child))
        elif child.returncode is None:  # stopped early or cancelled: the rest is not wanted
            await _stopped(child)
    if walked:
        return
    if child.returncode != 0:
        tail = err.decode(errors="replace").strip()[-500:]
        raise StorageError(f"walking {where} in a child process failed: {tail}")


async def _spawn(argv: list[str], *, stdin: int = asyncio.subprocess.DEVNULL) -> Child:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        RUN_WALKER,
        *argv,
        stdin=stdin,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _told(spare: Child, argv: list[str]) -> Child | None:
    """``spare`` once sent its walk's ``argv``; None if it ended meanwhile."""
    assert spare.stdin is not None
    try:
        spare.stdin.write(told_message(argv))
        await spare.stdin.drain()
    except ConnectionError:
        await _stopped(spare)
        return None
    return spare


async def _stopped(child: Child) -> None:
    with contextlib.suppress(ProcessLookupError):
        child.kill()
    await child.wait()


class WalkSpares:
    """Walk children started ahead (fswalk's WAIT), each waiting for its walk's
    arguments: a walk that takes one starts without a Python's start and imports between
    its call and its first batch (80 ms of a CPU each). One whose walk ended comes back
    (``reuse``) for the next: a collection's mark walks its re-check too; where none is
    back, it starts them while it computes what its mark found (prepare_walks)."""

    def __init__(self) -> None:
        self._ready: list[Child] = []
        # Spares already walking (earlywalks.tell): their walk's argv, by pid.
        self._walking: dict[int, list[str]] = {}
        self._stopped = False

    async def adopt(self, children: list[tuple[WalkChild, list[str] | None]]) -> None:
        """Walk children started before the event loop (earlywalks), spares from now;
        those told a walk already are taken only for that walk."""
        for child, argv in children:
            self._ready.append(await EarlyChild.attached(child))
            if argv is not None:
                self._walking[child.pid] = argv

    async def start(self, count: int, preload: str) -> None:
        """At least ``count`` spares, each with the module ``preload`` imported."""
        while len(self._ready) < count:
            self._ready.append(await _spawn([WAIT, preload], stdin=asyncio.subprocess.PIPE))

    def take(self, argv: list[str]) -> tuple[Child | None, bool]:
        """The spare walking ``argv`` already, and True; else one waiting for a walk (None:
        none), and False. One walking another walk is not taken: ``stop`` ends it."""
        for child in self._ready:
            if self._walking.get(child.pid) == argv:
                self._ready.remove(child)
                return child, True
        for child in reversed(self._ready):
            if child.pid not in self._walking:
                self._ready.remove(child)
                return child, False
        return None, False

    async def reuse(self, child: Child) -> None:
        """A spare whose walk ended, waiting for another (killed once these stopped)."""
        self._walking.pop(child.pid, None)
        if self._stopped:
            await _stopped(child)
        else:
            self._ready.append(child)

    async def stop(self) -> None:
        """Kill the spares no walk took."""
        self._stopped = True
        spares, self._ready = self._ready, []
        for spare in spares:
            await _stopped(spare)


class EarlyChild:
    """A walk child forked before the event loop (earlywalks), read as an asyncio one: its
    stdout and stderr through the event loop, its few bytes of stdin written at once."""

    def __init__(self, forked: WalkChild) -> None:
        self._forked = forked
        self.pid = forked.pid
        self.stdin: Writer | None = _PipeWriter(forked.stdin)
        self.stdout: asyncio.StreamReader | None = None
        self.stderr: asyncio.StreamReader | None = None

    @classmethod
    async def attached(cls, forked: WalkChild) -> EarlyChild:
        child = cls(forked)
        child.stdout = await _reader(forked.stdout)
        child.stderr = await _reader(forked.stderr)
        return child

    @property
    def returncode(self) -> int | None:
        return self._forked.returncode

    async def wait(self) -> int:
        if self._forked.returncode is not None:
            return self._forked.returncode
        return await asyncio.to_thread(self._forked.wait)

    def kill(self) -> None:
        self._forked.kill()


async def _reader(pipe: IO[bytes]) -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(loop=loop)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    return reader


class _PipeWriter:
    """A spare's stdin: its walk's arguments (a few hundred bytes) fit the pipe at once."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self._pipe = pipe

    def write(self, data: bytes) -> None:
        self._pipe.write(data)

    async def drain(self) -> None:
        self._pipe.flush()

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError):
            self._pipe.close()


class Stoppable:
    """A running walk child (or bulk helper), by a pidfd where there is one: a signal to
    it can never reach another process that took its pid once it ended."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.fd: int | None = None
        with contextlib.suppress(AttributeError, OSError):
            self.fd = os.pidfd_open(pid)
        if self.fd is not None:
            _walkers.add(self)

    def signal(self, signum: int) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):  # ended meanwhile
                signal.pidfd_send_signal(self.fd, signum)

    def close(self) -> None:
        _walkers.discard(self)
        if self.fd is not None:
            self.signal(signal.SIGCONT)  # stopped by walks_stopped, killed below or ended
            os.close(self.fd)
            self.fd = None


_walkers: set[Stoppable] = set()


@contextlib.contextmanager
def walks_stopped() -> Iterator[None]:
    """Every walk child of this process, and bulk helper (fsbulk), stopped (SIGSTOP) for
    the block: a collection that rests on a busy machine rests its walks too (they would
    walk on until their pipe is full) and a bulk call under way. Where pidfds are missing,
    they go on."""
    stopped = list(_walkers)
    for walker in stopped:
        walker.signal(signal.SIGSTOP)
    try:
        yield
    finally:
        for walker in stopped:
            walker.signal(signal.SIGCONT)


async def _tail(stream: asyncio.StreamReader, keep: int = 4096) -> bytes:
    """The last ``keep`` bytes of ``stream``, read to its end."""
    tail = b""
    while chunk := await stream.read(65536):
        tail = (tail + chunk)[-keep:]
    return tail
