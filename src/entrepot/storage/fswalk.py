"""A folded walk (see StorageDriver.scan) in a process of its own (started and read by
fschildren; this module imports nothing that loads asyncio): a garbage collection
walks the blobs and the repositories at once, each in a child on a CPU of its own, and
reads their objects as they come. ``python -m entrepot.storage.fswalk ROOT FOLD SHARD`` writes
them as ``marshal`` lists of (key, size, mtime, is_dir), each after its length, on the fd
that was its stdout, which it then points at its stderr: a warning a library prints
cannot corrupt them. FOLD names a module-level function (``module:name``) or is ``-``;
SHARD is ``INDEX/COUNT`` (see driver.Shard) or ``-``.
With ``--local BASE PREFIX WALK SHARD ARGS...`` it writes the batches of the local walk
WALK (``module:name``, see localwalk) instead. With ``--wait MODULE`` it imports MODULE and
then reads either form of argv from stdin, walk after walk (see WAIT).
With ``READ BASE PREFIX`` (a Reader, see StorageDriver.scan_apart; the store's root path;
the walk's key in it) each row also has a version (None) and the bytes READ names.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import itertools
import marshal
import os
import struct
import sys
from collections.abc import Callable, Iterator
from typing import Any, cast

from entrepot.storage.fsbulkops import MISSING as _MISSING
from entrepot.storage.fsbulkops import read_exactly, write_all
from entrepot.storage.fsops import _get, _walk_folded, _walk_infos
from entrepot.storage.localwalk import LocalWalk, walk_disk
from entrepot.storage.objects import Fold, Reader, Shard, check_key

# (key, size, mtime, is_dir), and with a reader (version: None, data)
Row = tuple[Any, ...]
Reading = tuple[Reader, str, str]  # the reader, the store's root path, the walk's prefix


def _load(name: str) -> Fold | None:
    if name == "-":
        return None
    return cast(Callable[[str], "str | None"], _load_function(name))


def _load_function(name: str) -> object:
    module, _, function = name.partition(":")
    return getattr(importlib.import_module(module), function)


# argv[0] of a child running a local walk (see localwalk), not a fold's walk.
LOCAL = "--local"
# argv[0] of a spare (fschildren.WalkSpares): ``WAIT MODULE`` imports MODULE, then reads
# each walk's argv from stdin (told_message), walks it and writes END after its batches,
# until stdin ends: a collection's re-check is walked by the children that walked its mark
# (two Python starts and imports fewer, ~0.1 s of a CPU where the main process works
# alone).
WAIT = "--wait"
# A message of no length: the walk is done (its batches are never empty messages).
END = 0
# Objects per message from the walking process: the caller reads the first ones while
# the rest are walked.
BATCH = 8192
LENGTH = struct.Struct("<I")
# What the pipe to the caller holds (Linux's most without privileges; 64 KiB by default):
# a mark's walks begin before the collector's event loop reads them (registry.gchead),
# and a repository walk's batch is 147 KB on the bench store.
PIPE_SIZE = 1 << 20


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


def _private_stdout() -> int:
    """A descriptor of the process's stdout for the rows alone: fd 1, and ``sys.stdout``,
    now write to stderr. A pipe is made to hold PIPE_SIZE."""
    sys.stdout.flush()
    out = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    with contextlib.suppress(OSError):  # not a pipe, or over the user's pipe allowance
        fcntl.fcntl(out, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    return out


def main(argv: list[str]) -> None:
    if argv[0] != WAIT:
        _walk(argv, _private_stdout())
        return
    importlib.import_module(argv[1])
    out = _private_stdout()
    while (told := _read_told(0)) is not None:  # fd 0 (a fork's sys.stdin may be a stand-in)
        _walk(marshal.loads(told), out)
        write_all(out, LENGTH.pack(END))  # walked; waits for the next walk


def told_message(argv: list[str]) -> bytes:
    """What tells a spare (WAIT) its next walk's ``argv``."""
    body = marshal.dumps(argv)
    return LENGTH.pack(len(body)) + body


def _read_told(fd: int) -> bytes | None:
    """The next walk's argv as told (told_message); None at the end of stdin."""
    header = read_exactly(fd, LENGTH.size)
    return (read_exactly(fd, LENGTH.unpack(header)[0]) or None) if header else None


def _walk(argv: list[str], out: int) -> None:
    """The walk ``argv`` names, its batches written to ``out``."""
    found: Iterator[list[Any]]
    if argv[0] == LOCAL:
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
    for batch in found:
        body = marshal.dumps(batch)
        write_all(out, LENGTH.pack(len(body)) + body)


def local_argv(
    base: str, prefix: str, walk: str, args: tuple[str, ...], shard: Shard | None
) -> list[str]:
    """A child's argv for the local walk named ``walk`` (``module:name``) over the store at
    ``base`` (a path) under ``prefix``."""
    return [LOCAL, base, prefix, walk, shard_arg(shard), *args]


def shard_arg(shard: Shard | None) -> str:
    return "-" if shard is None else f"{shard[0]}/{shard[1]}"


def _parse_shard(part: str) -> Shard | None:
    if part == "-":
        return None
    index, _, count = part.partition("/")
    return (int(index), int(count))


if __name__ == "__main__":
    main(sys.argv[1:])
