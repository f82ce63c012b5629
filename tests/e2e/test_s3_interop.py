"""registry:2 and Entrepot on one S3 bucket (Ceph's radosgw), both ways, with skopeo;
start-up errors for a bucket that cannot be used.

Both servers run at once on the same bucket and rootdirectory, each with its own S3
driver (registry:2's is aws-sdk-go's): what one pushes, the other serves with the same
digests, tags and catalog. Blob GETs redirect to presigned S3 URLs by default, as in
registry:2, and stream through Entrepot with ``storage.redirect.disable``.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cephs3 import ACCESS_KEY, REGION, SECRET_KEY, CephS3, s3_client

from . import clients
from .images import assert_layout_holds, build_image, build_index
from .servers import (
    ManagedServer,
    ServerFactory,
    ServerStartError,
    find_free_port,
    wait_for_v2,
)

pytestmark = pytest.mark.e2e

ROOT = "/registry"
# aws-sdk-go (registry:2's S3 client) refuses to start when AWS_CA_BUNDLE names a file
# (this machine's environment sets it); it ignores an empty value.
REGISTRY2_ENV = {"AWS_CA_BUNDLE": ""}


def s3_storage(server: CephS3, bucket: str, **extra: Any) -> dict[str, Any]:
    """registry:2's ``storage`` section for the bucket (it replaces the filesystem root)."""
    return {
        "s3": {
            "accesskey": ACCESS_KEY,
            "secretkey": SECRET_KEY,
            "region": REGION,
            "regionendpoint": server.endpoint,
            "forcepathstyle": True,
            "bucket": bucket,
            "rootdirectory": ROOT,
            "secure": False,
            "v4auth": True,
            "chunksize": 5 * 1024 * 1024,
        },
        **extra,
    }


def _catalog(server: ManagedServer) -> list[str]:
    response = httpx.get(f"{server.url}/v2/_catalog")
    assert response.status_code == 200, response.text
    return sorted(response.json()["repositories"])


def test_registry2_and_entrepot_read_and_write_one_bucket(
    s3_server: CephS3,
    s3_bucket: Callable[[], str],
    registry2_factory: ServerFactory,
    entrepot_factory: ServerFactory,
    tmp_path: Path,
) -> None:
    bucket = s3_bucket()
    storage = s3_storage(s3_server, bucket)
    registry2 = registry2_factory(config={"storage": storage}, env=REGISTRY2_ENV)
    entrepot = entrepot_factory(config={"storage": storage})

    # registry:2 -> Entrepot
    image = build_image(tmp_path / "single", seed=31, label="from-registry2")
    clients.push(image.ref, registry2.host, "e2e/s3/from-registry2", "v1")
    assert clients.inspect_digest(entrepot.host, "e2e/s3/from-registry2", "v1") == image.digest
    back = tmp_path / "back-entrepot"
    clients.pull_to_layout(entrepot.host, "e2e/s3/from-registry2", "v1", back, dest_tag="v1")
    assert_layout_holds(back, "v1", image)

    # Entrepot -> registry:2 (an index: several manifests and platforms)
    index = build_index(tmp_path / "multi", seed=32)
    clients.push(index.ref, entrepot.host, "e2e/s3/from-entrepot", "v1", all_images=True)
    assert clients.inspect_digest(registry2.host, "e2e/s3/from-entrepot", "v1") == index.digest
    back = tmp_path / "back-registry2"
    clients.pull_to_layout(
        registry2.host, "e2e/s3/from-entrepot", "v1", back, dest_tag="v1", all_images=True
    )
    assert_layout_holds(back, "v1", index)

    # One store: the same catalog and tags from both, every object under the rootdirectory
    # (Entrepot's own small objects, such as catalog epochs, beside registry:2's tree), and
    # no multipart upload left behind by either.
    expected = ["e2e/s3/from-entrepot", "e2e/s3/from-registry2"]
    assert _catalog(entrepot) == _catalog(registry2) == expected
    for repo in expected:
        assert clients.list_tags(entrepot.host, repo) == clients.list_tags(registry2.host, repo)
    s3 = s3_client(s3_server)
    keys = [
        obj["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for obj in page.get("Contents", [])
    ]
    assert all(k.startswith("registry/") for k in keys), keys
    outside = {k for k in keys if not k.startswith("registry/docker/registry/v2/")}
    assert outside and all(k.startswith("registry/entrepot/") for k in outside), outside
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_blob_get_redirects_to_a_presigned_url_unless_disabled(
    s3_server: CephS3,
    s3_bucket: Callable[[], str],
    entrepot_factory: ServerFactory,
) -> None:
    bucket = s3_bucket()
    data = os.urandom(3 * 1024 * 1024 + 5)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    redirecting = entrepot_factory(config={"storage": s3_storage(s3_server, bucket)})
    assert clients.upload_blob(redirecting.url, "e2e/s3/blobs", data) == digest
    path = f"/v2/e2e/s3/blobs/blobs/{digest}"
    with httpx.Client(base_url=redirecting.url) as http:
        response = http.get(path)
        assert response.status_code == 307
        location = response.headers["location"]
        assert location.startswith(f"{s3_server.endpoint}/{bucket}/registry/docker/registry/v2/")
        assert "X-Amz-Signature=" in location
        assert response.headers["docker-content-digest"] == digest
        assert httpx.get(location).content == data
        head = http.head(path)  # HEAD is answered here, with the size
        assert head.status_code == 200
        assert head.headers["content-length"] == str(len(data))

    streaming = entrepot_factory(
        config={"storage": s3_storage(s3_server, bucket, redirect={"disable": True})}
    )
    with httpx.Client(base_url=streaming.url) as http:
        response = http.get(path)
        assert response.status_code == 200
        assert response.content == data
        ranged = http.get(path, headers={"Range": "bytes=10-19"})
        assert ranged.status_code == 206
        assert ranged.content == data[10:20]


def _start_error(entrepot_factory: ServerFactory, storage: dict[str, Any], **config: Any) -> str:
    with pytest.raises(ServerStartError) as failed:
        entrepot_factory(config={"storage": storage, **config})
    output = str(failed.value)
    assert "exited with code 1" in output
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if "entrepot:" in line]
    assert len(lines) == 1, output
    return lines[0]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"bucket": "no-such-bucket"}, "NoSuchBucket"),
        ({"secretkey": "not-the-secret"}, "SignatureDoesNotMatch"),
        ({"accesskey": "nobody", "secretkey": "x"}, "InvalidAccessKeyId"),
        ({"regionendpoint": "unreachable"}, "connection refused: check storage.s3.regionendpoint"),
    ],
)
def test_start_with_an_unusable_bucket_is_one_clear_error(
    s3_server: CephS3,
    s3_shared_bucket: str,
    entrepot_factory: ServerFactory,
    change: dict[str, str],
    reason: str,
) -> None:
    storage = s3_storage(s3_server, s3_shared_bucket)
    if change.get("regionendpoint") == "unreachable":
        change = {"regionendpoint": f"http://127.0.0.1:{find_free_port()}"}
    storage["s3"].update(change)
    line = _start_error(entrepot_factory, storage)
    bucket = storage["s3"]["bucket"]
    assert f"storage.s3 (S3 bucket '{bucket}' at {storage['s3']['regionendpoint']}" in line
    assert reason in line


def _wait_for_v2(server: ManagedServer, status: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (got := httpx.get(f"{server.url}/v2/").status_code) != status:
        assert time.monotonic() < deadline, f"/v2/ stayed {got}, expected {status}"
        time.sleep(0.2)


def _delete_bucket(client: Any, bucket: str, timeout: float = 30.0) -> None:
    """Empty and delete ``bucket`` (retrying: Entrepot's health probe may be writing)."""
    deadline = time.monotonic() + timeout
    while True:
        listing = client.list_objects_v2(Bucket=bucket).get("Contents", [])
        for obj in listing:
            client.delete_object(Bucket=bucket, Key=obj["Key"])
        try:
            client.delete_bucket(Bucket=bucket)
            return
        except client.exceptions.ClientError:
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_storage_health_covers_the_bucket(
    s3_server: CephS3, s3_bucket: Callable[[], str], entrepot_factory: ServerFactory
) -> None:
    bucket = s3_bucket()
    health = {"storagedriver": {"enabled": True, "interval": "1s", "threshold": 1}}
    server = entrepot_factory(config={"storage": s3_storage(s3_server, bucket), "health": health})
    assert httpx.get(f"{server.url}/v2/").status_code == 200

    client = s3_client(s3_server)
    _delete_bucket(client, bucket)  # the bucket goes away while Entrepot serves
    wait_for_v2(server, 503)
    assert "NoSuchBucket" in server.log() and bucket in server.log()

    client.create_bucket(Bucket=bucket)
    wait_for_v2(server, 200)
    digest = clients.upload_blob(server.url, "e2e/s3/health", b"after the outage")
    assert digest.startswith("sha256:")
