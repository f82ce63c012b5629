"""The filesystem driver's bulk calls (stat, move and delete of many paths) as plain loops
of system calls, with the standard library alone: they run in the driver's worker threads,
or, for a collection's hundred thousand calls, in helper processes (fsbulk) that run this
file by its path (``python -I -S fsbulkops.py``): importing nothing of Entrepot, one
starts in milliseconds. Two threads of one process spent most of such a loop waiting for
each other's GIL; two processes do not.

As a process: an empty message once started, then requests on stdin and replies on
stdout, each a ``marshal`` body after its length; a request is ``(op, args)`` (see OPS),
a reply ``(True, result)`` or ``(False, (errno, strerror, filename))`` for an OSError.
"""

from __future__ import annotations

import errno
import marshal
import os
import stat as stat_mod
import struct
import sys

# Not imported when run: typing and contextlib were a third of a helper's start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

# "No object at this key" for operations on an existing object: a missing path, a path
# through a file, or a directory where an object was expected.
MISSING = (FileNotFoundError, NotADirectoryError, IsADirectoryError)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)

Stat = tuple[int, float, bool]  # size (0 for a directory), mtime, is a directory


def fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems cannot fsync a directory
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def makedirs(directory: str, parents: bool = True) -> None:
    """mkdir -p that fsyncs the parent of every directory it creates."""
    try:
        os.mkdir(directory)
    except FileNotFoundError:
        if not parents:
            raise
        makedirs(os.path.dirname(directory))  # ends at "/", which exists
        makedirs(directory, parents=False)
        return
    except FileExistsError:
        if os.path.isdir(directory):  # made by a concurrent writer
            return
        raise
    fsync_dir(os.path.dirname(directory))


def stat_all(paths: list[str]) -> list[Stat | None]:
    """(size, mtime, is a directory) of each path, or None."""
    return [_stat(path) for path in paths]


def _stat(path: str) -> Stat | None:
    try:
        st = os.stat(path)
    except MISSING:
        return None
    is_dir = stat_mod.S_ISDIR(st.st_mode)
    return (0 if is_dir else st.st_size, st.st_mtime, is_dir)


def move_stale(
    folders: list[str], src: str, dst: str, older_than: float, sync: bool, root: str = ""
) -> list[tuple[tuple[int, float] | None, bool]]:
    """Each ``<folder>/<src>``'s (size, mtime) (None: missing, or a directory), and whether
    it moved to ``<folder>/<dst>``: a file last written at or before ``older_than`` (see
    StorageDriver.move_stale_in)."""
    done: list[tuple[tuple[int, float] | None, bool]] = []
    with _Parents(root) as parents:
        for folder in folders:
            fd, name = parents.of(folder)
            if fd < 0 or sync:
                path = root + folder
                done.append(_move_stale_one(f"{path}/{src}", f"{path}/{dst}", older_than, sync))
                continue
            source = f"{name}/{src}"
            try:
                st = os.stat(source, dir_fd=fd)
            except MISSING:
                done.append((None, False))
                continue
            except OSError as exc:
                raise _at(exc, root + folder, src) from None
            if stat_mod.S_ISDIR(st.st_mode):
                done.append((None, False))
                continue
            found = (st.st_size, st.st_mtime)
            if st.st_mtime > older_than:
                done.append((found, False))
                continue
            try:
                os.replace(source, f"{name}/{dst}", src_dir_fd=fd, dst_dir_fd=fd)
            except MISSING:  # gone meanwhile, or dst's folder missing: as by path
                path = root + folder
                moved = move_one(f"{path}/{src}", f"{path}/{dst}", sync)
                done.append((found, moved))
                continue
            except OSError as exc:
                raise _at(exc, root + folder, src) from None
            done.append((found, True))
    return done


def _move_stale_one(
    source: str, target: str, older_than: float, sync: bool
) -> tuple[tuple[int, float] | None, bool]:
    found = _stat(source)
    if found is None or found[2]:
        return (None, False)
    stale = found[1] <= older_than
    return ((found[0], found[1]), stale and move_one(source, target, sync))


class _Parents:
    """The folder that a run of paths share, opened once, so that a call walks only the
    last components of a path (the store's path is a dozen deep): a collection's
    set-aside spent a third less in the kernel. The paths come sorted, so each folder is
    opened once. ``of`` answers -1 for a folder it cannot open: its paths are then used
    whole, as before, and fail or succeed as they would have."""

    def __init__(self, root: str = "") -> None:
        self.root = root  # what each path given is relative to ("": none)
        self.path: str | None = None
        self.fd = -1

    def __enter__(self) -> _Parents:
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()

    def of(self, path: str) -> tuple[int, str]:
        parent, _, name = path.rpartition("/")
        if parent != self.path:
            self._close()
            self.path = parent
            try:
                self.fd = os.open(self.root + parent or "/", os.O_RDONLY | _DIRECTORY | _CLOEXEC)
            except OSError:
                self.fd = -1
        return self.fd, name

    def _close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _at(exc: OSError, folder: str, name: str) -> OSError:
    """``exc`` of a call relative to a folder, naming the whole path as a path's would."""
    return OSError(exc.errno, exc.strerror, f"{folder}/{name}")


def move_one(src: str, dst: str, sync: bool) -> bool:
    """Rename ``src`` to ``dst``, making ``dst``'s folder if need be; False if ``src`` is
    missing."""
    try:
        os.replace(src, dst)
    except (FileNotFoundError, NotADirectoryError):
        if not os.path.lexists(src):
            return False
        makedirs(os.path.dirname(dst))
        os.replace(src, dst)
    if sync:
        fsync_dir(os.path.dirname(dst))
    return True


def move_all(moves: list[tuple[str, str]], sync: bool) -> list[bool]:
    return [move_one(src, dst, sync) for src, dst in moves]


def delete_files(paths: list[str]) -> None:
    for path in paths:
        _delete(path, os.path.dirname(path))


def delete_in(folders: list[str], name: str, root: str = "") -> None:
    """Each ``<root><folder>/<name>`` (see StorageDriver.delete_in)."""
    with _Parents(root) as parents:
        for folder in folders:
            fd, base = parents.of(folder)
            if fd < 0:
                _delete(f"{root}{folder}/{name}", root + folder)
                continue
            try:
                os.unlink(f"{base}/{name}", dir_fd=fd)
            except MISSING:
                continue
            except OSError as exc:
                raise _at(exc, root + folder, name) from None
            try:  # noqa: SIM105 - as in _delete
                os.rmdir(base, dir_fd=fd)
            except OSError:
                pass


def _delete(path: str, folder: str) -> None:
    try:
        os.unlink(path)
    except MISSING:
        return
    # Its folder too, once empty; rmdir refuses one a writer has put something in.
    try:  # noqa: SIM105 - contextlib is not imported (see TYPE_CHECKING above)
        os.rmdir(folder)
    except OSError:
        pass


OPS: dict[str, Callable[..., Any]] = {
    "stat": stat_all,
    "move": move_all,
    "aside": move_stale,
    "delete": delete_files,
    "delete_in": delete_in,
}
LENGTH = struct.Struct("<I")


def read_exactly(fd: int, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            return b""  # the driver closed the pipe: done
        data += chunk
    return data


def write_all(fd: int, data: bytes) -> None:
    """Write ``data`` whole with ``os.write``: a write to a full pipe that a stop signal
    interrupts (SIGSTOP, Ctrl-Z) returns part way, and ``sys.stdout.buffer`` then drops
    the rest of the message (CPython 3.11), which garbled a walk child's stream."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def serve(requests: int, replies: int) -> None:
    write_all(replies, LENGTH.pack(0))  # ready: it started, and read this file
    while header := read_exactly(requests, LENGTH.size):
        body = read_exactly(requests, LENGTH.unpack(header)[0])
        op, args = marshal.loads(body)
        try:
            reply: tuple[bool, Any] = (True, OPS[op](*args))
        except OSError as exc:
            reply = (False, (exc.errno, exc.strerror, exc.filename))
        out = marshal.dumps(reply)
        write_all(replies, LENGTH.pack(len(out)) + out)


if __name__ == "__main__":
    serve(sys.stdin.fileno(), sys.stdout.fileno())
