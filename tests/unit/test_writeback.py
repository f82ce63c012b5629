"""Writeback while writing: what is asked of the kernel as an upload's file (or a cache
fill's) grows."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import sys
from pathlib import Path

import pytest

from entrepot.storage import StorageError, fswriters
from entrepot.storage.filesystem import FilesystemDriver
from entrepot.storage.writeback import Writeback

WRITE, WAIT = 2, 1 | 2 | 4  # SYNC_FILE_RANGE_WRITE; WAIT_BEFORE | WRITE | WAIT_AFTER
MiB = 1 << 20


class Kernel:
    """Records sync_file_range calls; fails them with ``fail`` (an errno) when set."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int]] = []
        self.fail = 0

    def __call__(self, fd: int, offset: int, count: int, flags: int) -> int:
        self.calls.append((offset, count, flags))
        if self.fail:
            ctypes.set_errno(self.fail)
            return -1
        return 0


def test_each_write_starts_its_writeback_and_waits_only_for_what_is_lag_behind() -> None:
    kernel = Kernel()
    writeback = Writeback(100, lag=4 * MiB, ranges=kernel)

    for end in (100 + MiB, 100 + 3 * MiB, 100 + 6 * MiB, 100 + 7 * MiB):
        writeback.written(3, end)

    assert kernel.calls == [
        (100, MiB, WRITE),
        (100 + MiB, 2 * MiB, WRITE),
        (100 + 3 * MiB, 3 * MiB, WRITE),
        (100, 2 * MiB, WAIT),  # up to 6 MiB - lag: the disk sets the pace, memory is bounded
        (100 + 6 * MiB, MiB, WRITE),
        (100 + 2 * MiB, MiB, WAIT),
    ]


def test_a_writeback_error_fails_the_write() -> None:
    # The kernel reports it once per open file: the fsync at commit would not see it.
    kernel = Kernel()
    kernel.fail = errno.EIO
    writeback = Writeback(0, lag=MiB, ranges=kernel)

    with pytest.raises(OSError) as raised:
        writeback.written(3, 2 * MiB)
    assert raised.value.errno == errno.EIO


def test_a_file_that_cannot_write_back_by_range_is_synced_every_lag_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel = Kernel()
    kernel.fail = errno.EINVAL
    synced: list[int] = []
    monkeypatch.setattr(os, "fdatasync", synced.append)
    writeback = Writeback(0, lag=4 * MiB, ranges=kernel)

    for end in range(MiB, 10 * MiB, MiB):
        writeback.written(7, end)

    assert len(kernel.calls) == 1  # asked once, then never again for this file
    assert not writeback.by_range
    assert synced == [7, 7]  # at 4 and 8 MiB


@pytest.mark.skipif(sys.platform != "linux", reason="sync_file_range is Linux's")
def test_on_a_real_file_linux_writes_back_by_range_and_the_bytes_stay_intact(
    tmp_path: Path,
) -> None:
    path = tmp_path / "data"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        writeback = Writeback(0, lag=MiB)
        for n in range(8):
            os.write(fd, bytes([n]) * (MiB // 2))
            writeback.written(fd, (n + 1) * MiB // 2)
        assert writeback.by_range  # the kernel took every call
    finally:
        os.close(fd)
    assert path.read_bytes() == b"".join(bytes([n]) * (MiB // 2) for n in range(8))


# ---- a cache fill's ingest (storage/fswriters.py) ------------------------------------------


async def test_a_cache_fill_is_made_durable_while_it_grows_so_publishing_finds_little(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fswriters, "_FLUSH_EVERY", MiB)
    sizes_synced: list[int] = []

    def fdatasync(fd: int) -> None:
        sizes_synced.append(os.fstat(fd).st_size)
        real_fdatasync(fd)

    real_fdatasync = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    driver = FilesystemDriver(tmp_path)
    data = os.urandom(3 * MiB + 5)
    ingest = await driver.ingest("fills/x/token", "blobs/x/data", len(data))
    for start in range(0, len(data), MiB // 2):
        await ingest.write_parts([data[start : start + MiB // 2]], lambda part: None)

    assert sizes_synced and min(sizes_synced) >= MiB  # before publishing was asked
    await ingest.publish()
    assert (tmp_path / "blobs/x/data").read_bytes() == data
    assert not (tmp_path / "fills/x").exists() or not any((tmp_path / "fills/x").iterdir())


async def test_a_failed_background_flush_fails_publishing_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fswriters, "_FLUSH_EVERY", MiB)

    def fdatasync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    driver = FilesystemDriver(tmp_path)
    ingest = await driver.ingest("fills/x/token", "blobs/x/data", 3 * MiB)
    for _ in range(3):
        with contextlib.suppress(StorageError):  # the write after the failure may tell it
            await ingest.write_parts([b"x" * MiB], lambda part: None)
    with pytest.raises(StorageError, match="Input/output error"):
        await ingest.publish()
    assert not (tmp_path / "blobs/x/data").exists()
    assert not (tmp_path / "fills/x/token").exists()
