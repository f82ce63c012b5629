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
from entrepot.storage import StorageDriver
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
