"""When an upload's bytes reach the disk: at each chunk the writeback only starts, and the
upload is synced once, when it finishes, before its blob becomes visible."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from entrepot.oci.digest import Digest
from entrepot.oci.errors import ErrorCode, RegistryError
from entrepot.registry import layout
from entrepot.registry.local import LocalRegistry
from entrepot.storage import StorageError, StorageNotFound
from entrepot.storage.filesystem import FilesystemDriver


class RecordingDriver(FilesystemDriver):
    """The filesystem driver, noting each sync and move; ``broken_sync`` fails syncs."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.events: list[str] = []
        self.broken_sync = False

    async def sync(self, key: str) -> None:
        self.events.append(f"sync {key.rsplit('/', 1)[-1]}")
        if self.broken_sync:
            raise StorageError(f"{key}: Input/output error")
        await super().sync(key)

    async def move(
        self, src: str, dst: str, *, sync: bool = True, if_version: str | None = None
    ) -> None:
        self.events.append(f"move {src.rsplit('/', 1)[-1]}")
        await super().move(src, dst, sync=sync, if_version=if_version)


async def body(data: bytes) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), 100_000):
        yield data[offset : offset + 100_000]


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Files fsynced (by size), other than directories."""
    synced: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        mode = os.fstat(fd)
        if not stat.S_ISDIR(mode.st_mode):
            synced.append(mode.st_size)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


async def test_chunks_are_synced_once_when_the_upload_finishes_before_the_blob_moves(
    tmp_path: Path, fsyncs: list[int]
) -> None:
    driver = RecordingDriver(tmp_path)
    uploads = LocalRegistry(driver).uploads
    data = os.urandom(700_000)
    started = await uploads.start("team/app")
    fsyncs.clear()

    await uploads.append("team/app", started.upload_id, body(data[:400_000]), 0)
    await uploads.append("team/app", started.upload_id, body(data[400_000:]), 400_000)
    assert fsyncs == []  # each PATCH is answered without waiting for the disk

    info = await uploads.finish("team/app", started.upload_id, Digest.of(data), None)

    assert info.size == len(data)
    assert driver.events == ["sync data", "move data"]
    assert fsyncs[0] == len(data)  # the whole upload, then the link written after
    assert await driver.get_content(layout.blob_data(info.digest)) == data


async def test_a_monolithic_upload_is_synced_before_its_blob_moves(tmp_path: Path) -> None:
    driver = RecordingDriver(tmp_path)
    uploads = LocalRegistry(driver).uploads
    data = os.urandom(300_000)
    started = await uploads.start("team/app")

    await uploads.finish("team/app", started.upload_id, Digest.of(data), body(data))

    assert driver.events == ["sync data", "move data"]
    assert await driver.get_content(layout.blob_data(Digest.of(data))) == data
    link = await driver.get_content(layout.layer_link("team/app", Digest.of(data)))
    assert link == str(Digest.of(data)).encode()
    with pytest.raises(StorageNotFound):  # the upload's folder is gone
        await driver.stat(layout.upload_data("team/app", started.upload_id))


async def test_an_upload_whose_sync_fails_is_gone_and_no_blob_appears(tmp_path: Path) -> None:
    # The OS reports a failed writeback once: a retried PUT must not find the bytes good.
    driver = RecordingDriver(tmp_path)
    uploads = LocalRegistry(driver).uploads
    data = os.urandom(300_000)
    started = await uploads.start("team/app")
    await uploads.append("team/app", started.upload_id, body(data), 0)
    driver.broken_sync = True

    with pytest.raises(RegistryError) as failed:
        await uploads.finish("team/app", started.upload_id, Digest.of(data), None)

    assert failed.value.code is ErrorCode.UNAVAILABLE
    with pytest.raises(RegistryError) as unknown:
        await uploads.status("team/app", started.upload_id)
    assert unknown.value.code is ErrorCode.BLOB_UPLOAD_UNKNOWN
    with pytest.raises(StorageNotFound):
        await driver.stat(layout.blob_data(Digest.of(data)))


async def test_sync_of_a_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(StorageNotFound):
        await FilesystemDriver(tmp_path).sync("_uploads/none/data")


class LinkFailingDriver(FilesystemDriver):
    """The filesystem driver whose link writes fail (a full disk), noting what it did."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.deleted: list[str] = []

    async def put_content(self, key: str, data: bytes) -> None:
        if key.endswith("/link"):
            raise StorageError(f"{key}: No space left on device")
        await super().put_content(key, data)

    async def delete(self, key: str) -> None:
        self.deleted.append(key)
        await super().delete(key)


async def test_a_failed_link_answers_unavailable_and_still_removes_the_upload(
    tmp_path: Path,
) -> None:
    driver = LinkFailingDriver(tmp_path)
    uploads = LocalRegistry(driver).uploads
    data = os.urandom(300_000)
    started = await uploads.start("team/app")

    with pytest.raises(RegistryError) as failed:
        await uploads.finish("team/app", started.upload_id, Digest.of(data), body(data))

    assert failed.value.code == ErrorCode.UNAVAILABLE
    assert driver.deleted == [layout.upload_dir("team/app", started.upload_id)]
    with pytest.raises(RegistryError) as gone:
        await uploads.status("team/app", started.upload_id)
    assert gone.value.code == ErrorCode.BLOB_UPLOAD_UNKNOWN


class StartFailingDriver(FilesystemDriver):
    """The filesystem driver whose writes of an upload's ``startedat`` fail (a full disk)."""

    async def put_content(self, key: str, data: bytes) -> None:
        if key.endswith("/startedat"):
            raise StorageError(f"{key}: No space left on device")
        await super().put_content(key, data)


async def test_a_session_whose_files_cannot_be_written_is_not_left_half_made(
    tmp_path: Path,
) -> None:
    driver = StartFailingDriver(tmp_path)
    uploads = LocalRegistry(driver).uploads

    with pytest.raises(RegistryError) as failed:
        await uploads.start("team/app")

    assert failed.value.code == ErrorCode.UNAVAILABLE
    sessions = layout.upload_dir("team/app", "x").rsplit("/", 1)[0]
    try:
        left = await driver.list(sessions)
    except StorageNotFound:
        left = []
    assert left == []  # the data file written beside the failed one is gone too
