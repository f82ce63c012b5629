"""Chunked uploads served by several processes over one store, on every driver: each
``LocalRegistry`` here stands for a replica (its own in-memory hashes and locks)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator

import pytest

from entrepot.oci.digest import Digest
from entrepot.oci.errors import ErrorCode, RegistryError
from entrepot.registry import hashstate, layout
from entrepot.registry.local import LocalRegistry
from entrepot.storage import StorageConflict, StorageDriver, StorageNotFound
from entrepot.storage.timed import TimedDriver
from tests.storage.conftest import s3_driver

NAME = "team/app"


async def body(*pieces: bytes) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


def sha256(data: bytes) -> Digest:
    return Digest("sha256", hashlib.sha256(data).hexdigest())


async def test_post_patches_and_put_on_different_replicas(driver: StorageDriver) -> None:
    one, two, three = LocalRegistry(driver), LocalRegistry(driver), LocalRegistry(driver)
    chunks = [os.urandom(size) for size in (70_000, 1, 64, 300_001)]
    status = await one.uploads.start(NAME)
    upload = status.upload_id
    offset = 0
    for i, chunk in enumerate(chunks):
        replica = (two, three, one, two)[i]
        status = await replica.uploads.append(NAME, upload, body(chunk), offset)
        offset += len(chunk)
        assert status.size == offset
    whole = b"".join(chunks)
    info = await three.uploads.finish(NAME, upload, sha256(whole), None)
    assert info.size == len(whole)
    assert await driver.get_content(layout.blob_data(sha256(whole))) == whole
    assert await driver.get_content(layout.layer_link(NAME, sha256(whole))) == (
        str(sha256(whole)).encode()
    )


async def test_a_wrong_digest_on_another_replica_is_refused(driver: StorageDriver) -> None:
    one, two = LocalRegistry(driver), LocalRegistry(driver)
    upload = (await one.uploads.start(NAME)).upload_id
    await one.uploads.append(NAME, upload, body(b"layer bytes"), 0)
    with pytest.raises(RegistryError) as info:
        await two.uploads.finish(NAME, upload, sha256(b"other bytes"), None)
    assert info.value.code is ErrorCode.DIGEST_INVALID
    assert info.value.detail == {
        "expected": str(sha256(b"other bytes")),
        "actual": str(sha256(b"layer bytes")),
    }
    assert not await LocalRegistry(driver).blobs.stat(sha256(b"other bytes"))
    with pytest.raises(RegistryError) as gone:
        await one.uploads.status(NAME, upload)
    assert gone.value.code is ErrorCode.BLOB_UPLOAD_UNKNOWN


async def test_a_versioned_store_keeps_the_hash_state_for_the_next_replica(
    driver: StorageDriver,
) -> None:
    one = LocalRegistry(driver)
    upload = (await one.uploads.start(NAME)).upload_id
    await one.uploads.append(NAME, upload, body(b"x" * 1000), 0)
    version = (await driver.stat(layout.upload_data(NAME, upload))).version
    key = layout.upload_hashstate(NAME, upload)
    if version is None or not hashstate.available():
        with pytest.raises(Exception):  # noqa: B017 - no state is saved at all
            await driver.get_content(key)
        return
    saved = await driver.get_content(key)
    header, _, state = saved.partition(b"\n")[2].partition(b"\n")
    assert header.decode() == version
    restored = hashstate.ResumableSha256.restore(state)
    assert restored.size == 1000
    assert restored.digest() == sha256(b"x" * 1000)


@pytest.fixture
async def s3(request: pytest.FixtureRequest) -> AsyncIterator[StorageDriver]:
    """Only a store whose objects have versions (S3) can have an upload's bytes replaced
    behind a writer (a whole object per append); the filesystem appends in place."""
    driver = s3_driver(request)
    try:
        yield driver
    finally:
        await driver.close()


async def test_a_hash_is_never_used_for_bytes_it_did_not_cover(s3: StorageDriver) -> None:
    """A replica whose chunk was overwritten by another writer (same size, other bytes)
    must not take the bytes now stored for the digest it had computed."""
    driver = s3
    one = LocalRegistry(driver)
    upload = (await one.uploads.start(NAME)).upload_id
    await one.uploads.append(NAME, upload, body(b"mine"), 0)
    assert (await driver.stat(layout.upload_data(NAME, upload))).version is not None
    await driver.put_content(layout.upload_data(NAME, upload), b"evil")
    with pytest.raises(RegistryError) as info:
        await one.uploads.finish(NAME, upload, sha256(b"mine"), None)
    assert info.value.code is ErrorCode.DIGEST_INVALID
    assert await one.blobs.stat(sha256(b"mine")) is None


async def test_the_next_replica_resumes_the_hash_without_reading_the_upload(
    driver: StorageDriver,
) -> None:
    """On a store with versions, a PUT (or the next PATCH) on another replica resumes the
    saved hash state: it reads no byte of the upload back (the storage actions it takes
    are counted as registry:2's metrics count them)."""
    one = LocalRegistry(driver)
    upload = (await one.uploads.start(NAME)).upload_id
    data = os.urandom(200_000)
    await one.uploads.append(NAME, upload, body(data), 0)
    actions: list[str] = []
    two = LocalRegistry(TimedDriver(driver, lambda _driver, action, _s: actions.append(action)))
    await two.uploads.finish(NAME, upload, sha256(data), None)
    versioned = (await driver.stat(layout.blob_data(sha256(data)))).version is not None
    # Without versions (the filesystem) the other process hashes the local file again.
    assert ("Reader" in actions) is not versioned


def segment_key(upload: str, offset: int) -> str:
    return f"{layout.upload_data(NAME, upload)}.{offset:020d}"


async def test_on_s3_each_chunk_is_stored_once_and_read_once(s3: StorageDriver) -> None:
    """S3 objects cannot grow: each PATCH after the first is an object of its own (never
    a copy of the upload so far), and the PUT reads each one once into the blob, so a
    chunked upload moves its bytes a fixed number of times whatever its chunk count."""
    actions: list[str] = []
    counted = TimedDriver(s3, lambda _driver, action, _s: actions.append(action))
    one, two = LocalRegistry(counted), LocalRegistry(counted)
    chunks = [os.urandom(size) for size in (300_000, 200_000, 1, 150_000)]
    upload = (await one.uploads.start(NAME)).upload_id
    offset = 0
    for i, chunk in enumerate(chunks):
        await (one, two)[i % 2].uploads.append(NAME, upload, body(chunk), offset)
        if i == 0:
            first = await s3.stat(layout.upload_data(NAME, upload))
        offset += len(chunk)
    # The first chunk went to data (empty since the POST) and stayed as it was.
    assert await s3.stat(layout.upload_data(NAME, upload)) == first
    assert first.size == len(chunks[0])
    offsets = [len(chunks[0]), len(chunks[0]) + len(chunks[1]), offset - len(chunks[3])]
    for start, chunk in zip(offsets, chunks[1:], strict=True):
        assert await s3.get_content(segment_key(upload, start)) == chunk
    # Another replica resumed the saved hash state: no PATCH read any byte back.
    assert "Reader" not in actions
    assert (await two.uploads.status(NAME, upload)).size == offset
    actions.clear()
    whole = b"".join(chunks)
    info = await two.uploads.finish(NAME, upload, sha256(whole), None)
    assert info.size == len(whole)
    assert actions.count("Reader") == len(chunks)  # each segment read once
    assert actions.count("Writer") == 1  # into the blob, at its place
    assert await s3.get_content(layout.blob_data(sha256(whole))) == whole
    with pytest.raises(StorageNotFound):  # the upload folder is gone, segments and all
        await s3.list(layout.upload_dir(NAME, upload))


async def test_on_s3_a_chunk_cut_short_leaves_the_earlier_segments(s3: StorageDriver) -> None:
    one, two = LocalRegistry(s3), LocalRegistry(s3)
    upload = (await one.uploads.start(NAME)).upload_id
    await one.uploads.append(NAME, upload, body(b"a" * 1000), 0)
    await two.uploads.append(NAME, upload, body(b"b" * 2000), 1000)

    async def disconnects() -> AsyncIterator[bytes]:
        yield b"c" * 70_000
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await one.uploads.append(NAME, upload, disconnects(), 3000)
    assert (await two.uploads.status(NAME, upload)).size == 3000
    names = await s3.list(layout.upload_dir(NAME, upload))
    assert [n for n in names if n.startswith("data")] == ["data", "data.00000000000000001000"]
    whole = b"a" * 1000 + b"b" * 2000 + b"d" * 10
    finished = await one.uploads.finish(NAME, upload, sha256(whole), body(b"d" * 10))
    assert finished.size == len(whole)
    assert await s3.get_content(layout.blob_data(sha256(whole))) == whole


async def test_on_s3_a_segment_replaced_behind_the_upload_is_refused(s3: StorageDriver) -> None:
    one, two = LocalRegistry(s3), LocalRegistry(s3)
    upload = (await one.uploads.start(NAME)).upload_id
    for offset, piece in ((0, b"first "), (6, b"second "), (13, b"third")):
        await one.uploads.append(NAME, upload, body(piece), offset)
    await s3.put_content(segment_key(upload, 6), b"SECOND ")  # same size, other bytes
    with pytest.raises(RegistryError) as info:
        await two.uploads.finish(NAME, upload, sha256(b"first second third"), None)
    assert info.value.code is ErrorCode.DIGEST_INVALID
    assert await one.blobs.stat(sha256(b"first second third")) is None


async def test_segments_that_are_not_the_digest_never_become_the_blob(s3: StorageDriver) -> None:
    """Assembling re-hashes the segments as it copies them: one replaced after the upload
    was verified (between the check and the copy) leaves no blob."""
    blobs = LocalRegistry(s3).blobs
    digest = sha256(b"verified bytes")
    with pytest.raises(StorageConflict):
        await blobs.assemble(digest, body(b"verified ", b"BYTES"))
    assert await blobs.stat(digest) is None
    await blobs.assemble(digest, body(b"verified ", b"bytes"))
    assert await s3.get_content(layout.blob_data(digest)) == b"verified bytes"
