"""S3 driver behaviour beyond the contract, against the session's radosgw: where objects
land in the bucket (registry:2's keys), multipart uploads streamed while data arrives and
aborted on cancel, presigned redirect URLs, and errors that name the bucket."""

from __future__ import annotations

import asyncio
import os
import uuid
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from entrepot.storage import StorageError, StorageNotFound
from entrepot.storage.s3 import S3Driver, S3Settings, aws_credentials
from tests.cephs3 import CephS3, driver_settings, s3_client
from tests.faultproxy import FaultProxy

MiB = 1024 * 1024


@pytest.fixture
def settings(s3_server: CephS3, s3_shared_bucket: str) -> S3Settings:
    return driver_settings(s3_server, s3_shared_bucket, f"/{uuid.uuid4().hex}/")


@pytest.fixture
def client(s3_server: CephS3) -> Any:
    return s3_client(s3_server)


def uploads_in_progress(client: Any, bucket: str, prefix: str) -> list[str]:
    listing = client.list_multipart_uploads(Bucket=bucket, Prefix=prefix)
    return [u["Key"] for u in listing.get("Uploads", [])]


async def test_keys_are_registry2_object_keys_under_rootdirectory(
    settings: S3Settings, client: Any
) -> None:
    driver = S3Driver(settings)
    await driver.put_content("docker/registry/v2/repositories/a/_layers/x/link", b"sha256:x")
    root = settings.rootdirectory.strip("/")
    obj = client.get_object(
        Bucket=settings.bucket, Key=f"{root}/docker/registry/v2/repositories/a/_layers/x/link"
    )
    assert obj["Body"].read() == b"sha256:x"
    assert driver.local_path("docker/registry/v2/repositories/a/_layers/x/link") is None


async def test_writer_uploads_parts_while_data_arrives_and_commit_completes(
    settings: S3Settings, client: Any
) -> None:
    driver = S3Driver(settings)
    root = settings.rootdirectory.strip("/")
    data = os.urandom(23 * MiB)
    w = await driver.writer("blobs/big")
    for i in range(0, 16 * MiB, MiB):
        await w.write(data[i : i + MiB])
    # Three parts' worth is written: the multipart upload exists and has parts already.
    for _ in range(100):
        keys = uploads_in_progress(client, settings.bucket, root)
        if keys:
            break
        await asyncio.sleep(0.05)
    assert keys == [f"{root}/blobs/big"]
    upload_id = client.list_multipart_uploads(Bucket=settings.bucket, Prefix=root)["Uploads"][0][
        "UploadId"
    ]
    for _ in range(100):
        parts = client.list_parts(Bucket=settings.bucket, Key=keys[0], UploadId=upload_id)
        if parts.get("Parts"):
            break
        await asyncio.sleep(0.05)
    assert parts["Parts"][0]["Size"] == 5 * MiB
    with pytest.raises(StorageNotFound):
        await driver.stat("blobs/big")
    for i in range(16 * MiB, len(data), MiB):
        await w.write(data[i : i + MiB])
    await w.commit()
    assert uploads_in_progress(client, settings.bucket, root) == []
    assert (await driver.stat("blobs/big")).size == len(data)
    assert b"".join([c async for c in driver.read("blobs/big")]) == data


async def test_writes_larger_than_a_part_are_stored_whole(settings: S3Settings) -> None:
    # The upload pump hands the writer batches of up to 16 MiB; parts are 5 MiB here.
    driver = S3Driver(settings)
    data = os.urandom(19 * MiB + 7)
    w = await driver.writer("blobs/batches")
    await w.write(data[: 16 * MiB])
    await w.write(data[16 * MiB :])
    await w.commit()
    assert b"".join([c async for c in driver.read("blobs/batches")]) == data


async def test_cancel_aborts_the_multipart_upload(settings: S3Settings, client: Any) -> None:
    driver = S3Driver(settings)
    root = settings.rootdirectory.strip("/")
    w = await driver.writer("blobs/cancelled")
    for _ in range(12):
        await w.write(os.urandom(MiB))
    await w.cancel()
    assert uploads_in_progress(client, settings.bucket, root) == []
    with pytest.raises(StorageNotFound):
        await driver.stat("blobs/cancelled")


async def test_append_over_a_multipart_sized_object(settings: S3Settings) -> None:
    driver = S3Driver(settings)
    first, second = os.urandom(7 * MiB), os.urandom(6 * MiB + 3)
    await driver.put_content("_uploads/u/data", first)
    w = await driver.writer("_uploads/u/data", append=True)
    assert w.size == len(first)
    for i in range(0, len(second), MiB):
        await w.write(second[i : i + MiB])
    await w.commit()
    assert await driver.get_content("_uploads/u/data") == first + second


async def test_a_whole_read_is_one_get_and_a_ranged_read_asks_the_size_first(
    s3_server: CephS3, settings: S3Settings
) -> None:
    endpoint = urlsplit(s3_server.endpoint)
    assert endpoint.hostname is not None and endpoint.port is not None
    proxy = FaultProxy((endpoint.hostname, endpoint.port)).start()
    try:
        driver = S3Driver(replace(settings, endpoint=proxy.url))
        data = os.urandom(3 * MiB + 5)
        await driver.put_content("blobs/whole", data)
        proxy.seen.clear()
        chunks = [chunk async for chunk in driver.read("blobs/whole")]
        # A blob GET: the object in one request, no HEAD before it for its size.
        assert [method for method, _, _ in proxy.seen] == ["GET"]
        assert b"".join(chunks) == data
        assert max(len(c) for c in chunks) <= MiB and all(type(c) is bytes for c in chunks)
        proxy.seen.clear()
        tail = [chunk async for chunk in driver.read("blobs/whole", offset=3 * MiB)]
        assert [method for method, _, _ in proxy.seen] == ["HEAD", "GET"]
        assert b"".join(tail) == data[3 * MiB :]
        await driver.close()
    finally:
        proxy.stop()


async def test_presigned_redirect_url_serves_the_object(settings: S3Settings) -> None:
    driver = S3Driver(settings)
    await driver.put_content("blobs/signed", b"signed bytes")
    url = await driver.redirect_url("blobs/signed")
    assert url is not None and "X-Amz-Signature=" in url
    assert await S3Driver(replace(settings, redirect=False)).redirect_url("blobs/signed") is None
    async with httpx.AsyncClient() as http:
        response = await http.get(url)
        assert response.status_code == 200
        assert response.content == b"signed bytes"
        ranged = await http.get(url, headers={"Range": "bytes=7-11"})
        assert ranged.status_code == 206
        assert ranged.content == b"bytes"
        forged = await http.get(url.replace("blobs/signed", "blobs/other"))
        assert forged.status_code == 403


async def test_wrong_secret_is_a_storage_error_naming_bucket_and_endpoint(
    settings: S3Settings,
) -> None:
    driver = S3Driver(replace(settings, secret_key="wrong-secret"))
    with pytest.raises(StorageError) as info:
        await driver.put_content("k", b"x")
    assert not isinstance(info.value, StorageNotFound)
    message = str(info.value)
    assert settings.bucket in message
    assert settings.endpoint is not None and settings.endpoint in message
    assert "403" in message or "SignatureDoesNotMatch" in message
    with pytest.raises(StorageError, match=r"SignatureDoesNotMatch|403"):
        await driver.check_bucket()


async def test_check_bucket_reports_a_missing_bucket(settings: S3Settings) -> None:
    await S3Driver(settings).check_bucket()  # the real one is fine
    missing = S3Driver(replace(settings, bucket="no-such-bucket-here"))
    with pytest.raises(StorageError, match=r"'no-such-bucket-here' at http.*NoSuchBucket"):
        await missing.check_bucket()


async def test_check_bucket_reports_an_unreachable_endpoint(settings: S3Settings) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    endpoint = f"http://127.0.0.1:{port}"
    driver = S3Driver(replace(settings, endpoint=endpoint))
    with pytest.raises(StorageError) as info:
        await driver.check_bucket()
    assert endpoint in str(info.value)
    assert settings.bucket in str(info.value)


def test_aws_credentials_from_environment_then_shared_file(tmp_path: Any) -> None:
    env = {"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK", "AWS_SESSION_TOKEN": "T"}
    assert aws_credentials(env) == ("AK", "SK", "T")
    creds = tmp_path / "credentials"
    creds.write_text(
        "[default]\naws_access_key_id = DK\naws_secret_access_key = DS\n"
        "[ci]\naws_access_key_id = CK\naws_secret_access_key = CS\n"
    )
    shared = {"AWS_SHARED_CREDENTIALS_FILE": str(creds)}
    assert aws_credentials(shared) == ("DK", "DS", None)
    assert aws_credentials({**shared, "AWS_PROFILE": "ci"}) == ("CK", "CS", None)
    assert aws_credentials({**shared, "AWS_PROFILE": "absent"}) is None
    assert aws_credentials({"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}) is None


async def test_a_deleted_bucket_is_an_error_not_a_missing_key(
    settings: S3Settings, s3_bucket: Any, client: Any
) -> None:
    bucket = s3_bucket()
    driver = S3Driver(replace(settings, bucket=bucket))
    await driver.put_content("k", b"v")
    client.delete_object(Bucket=bucket, Key=driver.object_key("k"))
    client.delete_bucket(Bucket=bucket)
    for attempt in (driver.put_content("k", b"v"), driver.get_content("k")):
        with pytest.raises(StorageError, match="NoSuchBucket") as info:
            await attempt
        assert not isinstance(info.value, StorageNotFound)
