"""distribution-spec "Pull": manifests by tag and digest, GET and HEAD, content
negotiation, and blobs with Range requests."""

from __future__ import annotations

import pytest

from tests.api.oci_client import (
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    OciClient,
    error_code,
    make_image,
    make_index,
    sha256,
)


async def test_base_endpoint_announces_api_version(client: OciClient) -> None:
    # spec: "Determining support" (end-1)
    response = await client.http.get("/v2/")
    assert response.status_code == 200
    assert response.headers["docker-distribution-api-version"] == "registry/2.0"


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("by", ["tag", "digest"])
async def test_pull_manifest(client: OciClient, method: str, by: str) -> None:
    # spec: "Pulling manifests" (end-3), "Checking if content exists" (HEAD)
    image = make_image()
    await client.push_image("lib/app", image, tag="1.0")
    reference = "1.0" if by == "tag" else image.digest
    response = await client.get_manifest("lib/app", reference, method=method)
    assert response.status_code == 200
    assert response.headers["docker-content-digest"] == image.digest
    assert response.headers["content-type"] == OCI_MANIFEST
    assert response.headers["content-length"] == str(len(image.manifest))
    assert response.content == (image.manifest if method == "GET" else b"")


async def test_docker_schema2_manifest_round_trip(client: OciClient) -> None:
    image = make_image(media_type=DOCKER_MANIFEST)
    assert (await client.push_image("docker/app", image, tag="v2")).status_code == 201
    response = await client.get_manifest("docker/app", "v2", accept=DOCKER_MANIFEST)
    assert response.headers["content-type"] == DOCKER_MANIFEST
    assert response.content == image.manifest


async def test_manifest_the_client_cannot_accept_is_refused(client: OciClient) -> None:
    image = make_image()
    await client.push_image("app", image, tag="oci")
    response = await client.get_manifest("app", "oci", accept=DOCKER_MANIFEST)
    assert response.status_code == 404
    assert error_code(response) == "MANIFEST_UNKNOWN"
    wildcard = await client.get_manifest("app", "oci", accept="*/*")
    assert wildcard.status_code == 200


async def test_index_served_with_its_media_type(client: OciClient) -> None:
    children = [make_image("x"), make_image("y")]
    for child in children:
        await client.push_image("multi", child)
    index = make_index(children)
    await client.put_manifest("multi", "all", index, OCI_INDEX)
    response = await client.get_manifest("multi", "all")
    assert response.headers["content-type"] == OCI_INDEX
    assert response.headers["docker-content-digest"] == sha256(index)
    for child in children:
        by_digest = await client.get_manifest("multi", child.digest)
        assert by_digest.content == child.manifest


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v2/nope/manifests/latest", 404, "MANIFEST_UNKNOWN"),
        (f"/v2/nope/manifests/{sha256(b'x')}", 404, "MANIFEST_UNKNOWN"),
        ("/v2/nope/manifests/sha256:short", 400, "DIGEST_INVALID"),
        (f"/v2/nope/blobs/{sha256(b'x')}", 404, "BLOB_UNKNOWN"),
        ("/v2/nope/blobs/md5:abc", 400, "DIGEST_INVALID"),
        ("/v2/nope/tags/list", 404, "NAME_UNKNOWN"),
    ],
)
async def test_missing_content_errors(client: OciClient, path: str, status: int, code: str) -> None:
    response = await client.http.get(path)
    assert response.status_code == status
    assert error_code(response) == code


async def test_blob_of_another_repository_is_not_visible(client: OciClient) -> None:
    data = b"private layer"
    await client.push_blob("alice/private", data)
    response = await client.http.get(f"/v2/bob/other/blobs/{sha256(data)}")
    assert response.status_code == 404
    assert error_code(response) == "BLOB_UNKNOWN"


@pytest.mark.parametrize(
    ("range_header", "expected_slice", "status"),
    [
        ("bytes=0-9", slice(0, 10), 206),
        ("bytes=100-", slice(100, None), 206),
        ("bytes=-16", slice(-16, None), 206),
        ("bytes=5-5", slice(5, 6), 206),
    ],
)
async def test_blob_range_requests(
    client: OciClient, range_header: str, expected_slice: slice, status: int
) -> None:
    data = bytes(range(256)) * 4
    await client.push_blob("app", data)
    response = await client.http.get(
        f"/v2/app/blobs/{sha256(data)}", headers={"Range": range_header}
    )
    assert response.status_code == status
    assert response.content == data[expected_slice]
    assert response.headers["content-range"].startswith("bytes ")


async def test_unsatisfiable_range_is_416(client: OciClient) -> None:
    data = b"0123456789"
    await client.push_blob("app", data)
    response = await client.http.get(
        f"/v2/app/blobs/{sha256(data)}", headers={"Range": "bytes=50-60"}
    )
    assert response.status_code == 416


async def test_blob_head_has_length_and_digest(client: OciClient) -> None:
    data = b"x" * 777
    await client.push_blob("app", data)
    response = await client.http.head(f"/v2/app/blobs/{sha256(data)}")
    assert response.status_code == 200
    assert response.headers["content-length"] == "777"
    assert response.headers["docker-content-digest"] == sha256(data)
    assert response.content == b""
