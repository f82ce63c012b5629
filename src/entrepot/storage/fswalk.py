"""A folded walk (see StorageDriver.scan) in a process of its own: a garbage collection
walks the blobs and the repositories at once, each in a child on a CPU of its own, and
reads their objects as they come. ``python -m entrepot.storage.fswalk ROOT FOLD SHARD`` writes
them as ``marshal`` lists of (key, size, mtime, is_dir), each after its length, on the fd
that was its stdout, which it then points at its stderr: a warning a library prints
cannot corrupt them. FOLD names a module-level function (``module:name``) or is ``-``;
SHARD is ``INDEX/COUNT`` (see driver.Shard) or ``-``.
With ``--local BASE PREFIX WALK SHARD ARGS...`` it writes the batches of the local walk
WALK (``module:name``, see localwalk) instead.
With ``READ BASE PREFIX`` (a Reader, see StorageDriver.scan_apart; the store's root path;
the walk's key in it) each row also has a version (None) and the bytes READ names.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import itertools
import marshal
import os
import signal
import struct
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, cast

from entrepot.storage.driver import FileInfo, Fold, Reader, Shard, StorageError, check_key
from entrepot.storage.fsbulkops import MISSING as _MISSING
from entrepot.storage.fsops import _get, _walk_folded, _walk_infos
from entrepot.storage.localwalk import LocalWalk, walk_disk

# (key, size, mtime, is_dir), and with a reader (version: None, data)
Row = tuple[Any, ...]
Reading = tuple[Reader, str, str]  # the reader, the store's root path, the walk's prefix


def fold_name(fold: Callable[..., object] | None) -> str | None:
    """How the walking process finds ``fold`` (or a local walk) again; None for one it
    cannot (a closure)."""
    if fold is None:
        return "-"
    module, name = getattr(fold, "__module__", None), getattr(fold, "__qualname__", "")
    if not module or "." in name or "<" in name:
        return None
    return f"{module}:{name}"


def _load(name: str) -> Fold | None:
    if name == "-":
        return None
    return cast(Callable[[str], "str | None"], _load_function(name))


def _load_function(name: str) -> object:
    module, _, function = name.partition(":")
    return getattr(importlib.import_module(module), function)


# argv[0] of a child running a local walk (see localwalk), not a fold's walk.
_LOCAL = "--local"
# Objects per message from the walking process: the caller reads the first ones while
# the rest are walked.
BATCH = 8192
_LENGTH = struct.Struct("<I")


def batches(
    root: str, fold: Fold | None, reading: Reading | None = None, shard: Shard | None = None
) -> Iterator[list[Row]]:
    walk = _walk_infos(root, shard) if fold is None else _walk_folded(root, fold, shard)
    rows: Iterator[Row] = ((i.key, i.size, i.mtime, i.is_dir) for i in walk)
    if reading is not None:
        rows = _read_along(rows, *reading)
    while batch := list(itertools.islice(rows, BATCH)):
        yield batch


def _read_along(rows: Iterator[Row], read: Reader, base: str, prefix: str) -> Iterator[Row]:
    """Each row with (no version, the bytes ``read`` names: None for none)."""
    above = f"{prefix}/" if prefix else ""
    for row in rows:
        key = read(above + row[0])
        data = None
        if key is not None:
            check_key(key)
            with contextlib.suppress(*_MISSING):
                data = _get(f"{base}/{key}")
        yield (*row, None, data)


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
    argv = [root, fold, _shard_arg(shard), *(reading or ())]
    async for rows in _from_child(argv, root):
        yield [FileInfo(*row) for row in rows]


async def walk_local_apart(
    base: str, prefix: str, walk: str, args: tuple[str, ...], shard: Shard | None
) -> AsyncIterator[list[Any]]:
    """The batches of the local walk named ``walk`` (see localwalk) over the store at
    ``base`` (a path), walked by a child process."""
    argv = [_LOCAL, base, prefix, walk, _shard_arg(shard), *args]
    async for batch in _from_child(argv, f"{base}/{prefix}"):
        yield batch


def _shard_arg(shard: Shard | None) -> str:
    return "-" if shard is None else f"{shard[0]}/{shard[1]}"


async def _from_child(argv: list[str], where: str) -> AsyncIterator[Any]:
    """Each message of a child ``python -m`` this module with ``argv``."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        __name__,
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None and child.stderr is not None
    # Read while the rows come: a child that fills the stderr pipe would wait for it.
    errors = asyncio.ensure_future(_tail(child.stderr))
    walker = Stoppable(child.pid)
    try:
        while header := await child.stdout.read(_LENGTH.size):
            if len(header) < _LENGTH.size:
                header += await child.stdout.readexactly(_LENGTH.size - len(header))
            body = await child.stdout.readexactly(_LENGTH.unpack(header)[0])
            yield marshal.loads(body)
        err = await errors
        await child.wait()
    finally:
        walker.close()
        if child.returncode is None:  # stopped early or cancelled: the rest is not wanted
            child.kill()
            await child.wait()
        errors.cancel()
    if child.returncode != 0:
        tail = err.decode(errors="replace").strip()[-500:]
        raise StorageError(f"walking {where} in a child process failed: {tail}")


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


def _private_stdout() -> int:
    """A descriptor of the process's stdout for the rows alone: fd 1, and ``sys.stdout``,
    now write to stderr."""
    sys.stdout.flush()
    out = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def main(argv: list[str]) -> None:
    found: Iterator[list[Any]]
    if argv[0] == _LOCAL:
        base, prefix, walk, part, *args = argv[1:]
        local = cast(LocalWalk, _load_function(walk))
        found = walk_disk(base, prefix, local, tuple(args), _parse_shard(part))
    else:
        root, fold, part, *rest = argv
        reading = None
        if rest:
            read, base, prefix = rest
            reading = (cast(Reader, _load(read)), base, prefix)
        found = batches(root, _load(fold), reading, _parse_shard(part))
    out = _private_stdout()
    for batch in found:
        body = marshal.dumps(batch)
        _write_all(out, _LENGTH.pack(len(body)) + body)


def _parse_shard(part: str) -> Shard | None:
    if part == "-":
        return None
    index, _, count = part.partition("/")
    return (int(index), int(count))


def _write_all(fd: int, data: bytes) -> None:
    """Write ``data`` whole with ``os.write``: a write to a full pipe that a stop signal
    interrupts (SIGSTOP, Ctrl-Z) returns part way, and ``sys.stdout.buffer`` then drops
    the rest of the message (CPython 3.11), which garbled the stream."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


if __name__ == "__main__":
    main(sys.argv[1:])
