"""The blocking file operations of the filesystem driver (``filesystem.py``), which runs
each in a worker thread: temp-file writes renamed into place, reads, appends, walks of the
tree and bulk moves and deletes. Split from the driver to keep each module readable."""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import stat as stat_mod
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeVar, TypeVarTuple

from entrepot.storage.fsbulkops import fsync_dir as _fsync_dir
from entrepot.storage.fsbulkops import makedirs as _makedirs
from entrepot.storage.fsbulkops import move_one
from entrepot.storage.objects import (
    FileInfo,
    Fold,
    Shard,
    StorageNotFound,
    below,
    in_shard,
)
from entrepot.storage.smallfiles import read_whole

if TYPE_CHECKING:  # walk children import this module: ctypes was a tenth of their start
    from entrepot.storage.writeback import Writeback

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

TMP_PREFIX = ".tmp-"
# A writer gathers writes smaller than this before handing them to a thread.
WRITE_BUFFER = 256 * 1024

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC


# ---- blocking helpers: they run in a worker thread ------------------------------------


def _open_tmp(path: str) -> tuple[int, str]:
    """Create a fresh temp file beside ``path`` (making parents); return (fd, tmp path)."""
    directory = os.path.dirname(path)
    tmp = f"{directory}/{TMP_PREFIX}{os.urandom(12).hex()}"
    try:
        fd = os.open(tmp, _NEW_FILE, 0o666)
    except FileNotFoundError:
        _makedirs(directory)
        fd = os.open(tmp, _NEW_FILE, 0o666)
    return fd, tmp


def _write_all(fd: int, *parts: bytes | bytearray) -> None:
    for part in parts:
        view = memoryview(part)
        while view:
            view = view[os.write(fd, view) :]


def _write_all_and_flush(
    fd: int, writeback: Writeback, end: int, *parts: bytes | bytearray
) -> None:
    _write_all(fd, *parts)
    writeback.written(fd, end)


def _finish_new(fd: int, tmp: str, path: str, *parts: bytes | bytearray) -> None:
    """Write, fsync and close ``fd`` (the temp file ``tmp``), then rename it to ``path``.
    On any failure the temp file is removed and nothing changes at ``path``."""
    try:
        try:
            _write_all(fd, *parts)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(os.path.dirname(path))


def _put(path: str, data: bytes) -> None:
    fd, tmp = _open_tmp(path)
    _finish_new(fd, tmp, path, data)


def _put_new(path: str, data: bytes) -> bool:
    """Write a temp file, then hard-link it at ``path``: link() fails if ``path`` exists,
    so the object appears whole or not at all, and only once."""
    fd, tmp = _open_tmp(path)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    _fsync_dir(os.path.dirname(path))
    return True


def _get(path: str) -> bytes:
    # os.open and os.read rather than open(): the file object costs more than the calls.
    fd = os.open(path, os.O_RDONLY | _CLOEXEC)
    try:
        return read_whole(fd)
    finally:
        os.close(fd)


def _pread_full(fd: int, size: int, offset: int) -> bytes:
    """Up to ``size`` bytes at ``offset``; fewer only at end of file."""
    data = os.pread(fd, size, offset)
    while 0 < len(data) < size:  # a short read before the end: rare, but allowed
        more = os.pread(fd, size - len(data), offset + len(data))
        if not more:
            break
        data += more
    return data


def _open_read(path: str, offset: int, size: int) -> tuple[int, bytes]:
    """Open ``path`` and read the first chunk. Returns fd -1 when the stream is complete
    (the file is then already closed), so a small object costs one thread hop."""
    fd = os.open(path, os.O_RDONLY | _CLOEXEC)
    try:
        data = _pread_full(fd, size, offset) if size else b""
    except BaseException:
        os.close(fd)
        raise
    if len(data) < size or not size:
        os.close(fd)
        return -1, data
    return fd, data


def _open_append(path: str) -> tuple[int, int]:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | _CLOEXEC)
    try:
        return fd, os.fstat(fd).st_size
    except BaseException:
        os.close(fd)
        raise


def _end_append(
    fd: int, start: int, commit: bool, flush: Callable[[int], None], *parts: bytes | bytearray
) -> None:
    """Commit (write ``parts``, then ``flush``: fsync, or start their writeback) or
    cancel (truncate back to ``start``, fsync); then close. A commit that fails (a full
    disk) is cancelled too: the object keeps only what earlier commits wrote, never a
    partly written tail."""
    try:
        if commit:
            try:
                _write_all(fd, *parts)
                flush(fd)
                return
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
                raise
        os.ftruncate(fd, start)
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | _CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tally(path: str) -> None:
    """One byte appended at ``path``: O_APPEND writes of every process land one after
    the other, so its size counts them."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | _CLOEXEC
    try:
        fd = os.open(path, flags, 0o644)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, flags, 0o644)
    try:
        os.write(fd, b".")
    finally:
        os.close(fd)


def _close_unlink(fd: int, tmp: str) -> None:
    try:
        os.close(fd)
    finally:
        os.unlink(tmp)


def _list(path: str) -> list[str]:
    # os.listdir: names alone (a collection lists 100,000 blob folders: no DirEntry each).
    names = [name for name in os.listdir(path) if not name.startswith(TMP_PREFIX)]
    names.sort()
    return names


def _sorted_entries(path: str) -> list[str]:
    """A directory's entries in key order: a directory sorts as "name/", which is where
    the keys below it sort. [] for a directory gone meanwhile (or not a directory)."""
    try:
        # A directory's link count is 2 + its subdirectories (ext4, xfs, tmpfs; not btrfs):
        # when every entry is a directory, os.listdir is enough, and much cheaper than a
        # DirEntry per entry (it is most of the time of listing 100,000 repositories).
        links = os.stat(path).st_nlink
        names = os.listdir(path)
        if links == len(names) + 2:
            entries = [f"{name}/" for name in names]
            entries.sort()
            return entries
        if links == 2:  # no subdirectory (a blob's folder, a link's): files only
            entries = [name for name in names if not name.startswith(TMP_PREFIX)]
            entries.sort()
            return entries
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [name for name, _ in _scan_entries(path)]  # files and folders: their types


def _walk_keys(root: str, after: str, collapse: str) -> Iterator[str]:
    """The keys under ``root`` in lexical order (see StorageDriver.walk), depth first with
    a stack of open listings (cheaper than nested generators)."""
    stack = [(root + "/", "", iter(_sorted_entries(root)))]
    while stack:
        path, rel, entries = stack[-1]
        for name in entries:
            key = rel + name
            if name[-1] != "/" or (collapse and name.startswith(collapse)):
                if key > after:
                    yield key
            elif not below(after, key):
                stack.append((path + name, key, iter(_sorted_entries(path + name))))
                break
        else:
            stack.pop()


def _take(items: Iterator[T], count: int) -> list[T]:
    return list(itertools.islice(items, count))


def _walk_infos(root: str, shard: Shard | None = None) -> Iterator[FileInfo]:
    """The objects under ``root`` with size and mtime, in key order: as ``_walk_keys``, but
    one os.scandir per directory (its entry types need no stat) and a stat per file; with
    ``shard``, below its top-level entries only."""
    top = [item for item in _scan_entries(root) if in_shard(item[0].rstrip("/"), shard)]
    stack = [("", iter(top))]
    while stack:
        rel, entries = stack[-1]
        for name, entry in entries:
            if name[-1] == "/":
                stack.append((rel + name, iter(_scan_entries(entry.path))))
                break
            try:
                st = entry.stat()
            except (FileNotFoundError, NotADirectoryError):
                continue  # deleted meanwhile
            yield FileInfo(rel + name, st.st_size, st.st_mtime, False)
        else:
            stack.pop()


def _walk_folded(root: str, fold: Fold, shard: Shard | None = None) -> Iterator[FileInfo]:
    """As ``_walk_infos``, with ``fold`` (see StorageDriver.scan): a folded directory costs
    one stat of the object named in its place, or none; an empty directory entered is
    reported as one."""
    top = [name for name in _sorted_entries(root) if in_shard(name.rstrip("/"), shard)]
    stack = [(root + "/", "", iter(top))]
    while stack:
        path, rel, entries = stack[-1]
        for name in entries:
            key = rel + name
            if name[-1] == "/":
                leaf = fold(key)
                if leaf is None:
                    inner = _sorted_entries(path + name)
                    if inner:
                        stack.append((path + name, key, iter(inner)))
                        break
                elif leaf:
                    try:
                        st = os.stat(path + name + leaf)
                    except (FileNotFoundError, NotADirectoryError):
                        pass
                    else:
                        if not stat_mod.S_ISDIR(st.st_mode):
                            yield FileInfo(key + leaf, st.st_size, st.st_mtime, False)
                            continue
                yield FileInfo(key, 0, 0.0, True)
                continue
            try:
                st = os.stat(path + name)
            except (FileNotFoundError, NotADirectoryError):
                continue  # deleted meanwhile
            yield FileInfo(key, st.st_size, st.st_mtime, False)
        else:
            stack.pop()


def _scan_entries(path: str) -> list[tuple[str, os.DirEntry[str]]]:
    """A directory's entries in key order (a directory as "name/"); [] once gone."""
    try:
        with os.scandir(path) as scan:
            entries = []
            for entry in scan:
                if entry.name.startswith(TMP_PREFIX):
                    continue
                try:
                    entries.append((f"{entry.name}/" if entry.is_dir() else entry.name, entry))
                except OSError:  # gone meanwhile
                    continue
    except (FileNotFoundError, NotADirectoryError):
        return []
    entries.sort(key=lambda item: item[0])
    return entries


def _move(src: str, dst: str, src_key: str, sync: bool) -> None:
    if not move_one(src, dst, sync):
        raise StorageNotFound(src_key)


def _remove_empty(paths: list[str]) -> None:
    for path in paths:
        try:
            os.rmdir(path)
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError as exc:
            if exc.errno != errno.ENOTEMPTY:
                raise


def _delete(path: str) -> None:
    if stat_mod.S_ISDIR(os.lstat(path).st_mode):
        import shutil  # here: walk children import this module, and never remove trees

        shutil.rmtree(path)
    else:
        os.unlink(path)


# ---- async side -------------------------------------------------------------------------

# A walk hands the first batch of this many keys to the loop, then batches growing to
# WALK_BATCH_MAX: a short walk (a catalog page) stops early, a long one (the whole
# catalog) costs a few hundred thread hops, not one per directory.


WALK_BATCH_FIRST = 256
WALK_BATCH_MAX = 16384
