"""A folded walk (see StorageDriver.scan) in a process of its own: a garbage collection
walks the blobs and the repositories at once, each in a child on a CPU of its own, and
reads their objects as they come. ``python -m entrepot.storage.fswalk ROOT FOLD`` writes
them on stdout as ``marshal`` lists of (key, size, mtime, is_dir), each after its length;
FOLD names a module-level function (``module:name``) or is ``-`` for none.
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import marshal
import os
import struct
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import cast

from entrepot.storage.driver import FileInfo, Fold, StorageError
from entrepot.storage.fsops import _walk_folded, _walk_infos

Row = tuple[str, int, float, bool]


def fold_name(fold: Fold | None) -> str | None:
    """How the walking process finds ``fold`` again; None for one it cannot (a closure)."""
    if fold is None:
        return "-"
    module, name = getattr(fold, "__module__", None), getattr(fold, "__qualname__", "")
    if not module or "." in name or "<" in name:
        return None
    return f"{module}:{name}"


def _load(name: str) -> Fold | None:
    if name == "-":
        return None
    module, _, function = name.partition(":")
    return cast(Callable[[str], "str | None"], getattr(importlib.import_module(module), function))


# Objects per message from the walking process: the caller reads the first ones while
# the rest are walked.
BATCH = 8192
_LENGTH = struct.Struct("<I")


def batches(root: str, fold: Fold | None) -> Iterator[list[Row]]:
    walk = _walk_infos(root) if fold is None else _walk_folded(root, fold)
    rows = ((i.key, i.size, i.mtime, i.is_dir) for i in walk)
    while batch := list(itertools.islice(rows, BATCH)):
        yield batch


async def walk_apart(root: str, fold: str) -> AsyncIterator[list[FileInfo]]:
    """The objects under ``root`` (a path), walked by a child process, in batches."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        __name__,
        root,
        fold,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None and child.stderr is not None
    try:
        while header := await child.stdout.read(_LENGTH.size):
            if len(header) < _LENGTH.size:
                header += await child.stdout.readexactly(_LENGTH.size - len(header))
            body = await child.stdout.readexactly(_LENGTH.unpack(header)[0])
            yield [FileInfo(*row) for row in marshal.loads(body)]
        err = await child.stderr.read()
        await child.wait()
    finally:
        if child.returncode is None:  # stopped early or cancelled: the rest is not wanted
            child.kill()
            await child.wait()
    if child.returncode != 0:
        tail = err.decode(errors="replace").strip()[-500:]
        raise StorageError(f"walking {root} in a child process failed: {tail}")


def main(argv: list[str]) -> None:
    root, fold = argv
    for batch in batches(root, _load(fold)):
        body = marshal.dumps(batch)
        _write_all(sys.stdout.fileno(), _LENGTH.pack(len(body)) + body)


def _write_all(fd: int, data: bytes) -> None:
    """Write ``data`` whole with ``os.write``: a write to a full pipe that a stop signal
    interrupts (SIGSTOP, Ctrl-Z) returns part way, and ``sys.stdout.buffer`` then drops
    the rest of the message (CPython 3.11), which garbled the stream."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


if __name__ == "__main__":
    main(sys.argv[1:])
