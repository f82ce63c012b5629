"""distribution-spec "Push": blob uploads and manifest pushes, with their error cases."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.api.oci_client import (
    OCI_INDEX,
    OCI_MANIFEST,
    OciClient,
    error_code,
    make_image,
    make_index,
    sha256,
)


def _visible_files(root: Path, part: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and part in p.parts]


async def test_monolithic_post_then_put_stores_blob(client: OciClient) -> None:
    # spec: "Pushing a blob monolithically", POST then PUT
    data = os.urandom(5000)
    response = await client.push_blob("team/app", data)
    assert response.status_code == 201
    assert response.headers["docker-content-digest"] == sha256(data)
    assert response.headers["location"].endswith(f"/v2/team/app/blobs/{sha256(data)}")
    pulled = await client.http.get(f"/v2/team/app/blobs/{sha256(data)}")
    assert pulled.status_code == 200
    assert pulled.content == data


async def test_post_with_digest_is_a_single_request_upload(client: OciClient) -> None:
    # spec: "Single POST"
    data = b"single post body"
    response = await client.http.post(
        f"/v2/app/blobs/uploads/?digest={sha256(data)}",
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 201
    assert response.headers["docker-content-digest"] == sha256(data)
    head = await client.http.head(f"/v2/app/blobs/{sha256(data)}")
    assert head.status_code == 200
    assert head.headers["content-length"] == str(len(data))


async def test_chunked_upload_with_status_and_content_range(client: OciClient) -> None:
    # spec: "Pushing a blob in chunks", and "Getting the upload status"
    data = os.urandom(3 * 4096 + 17)
    chunks = [data[0:4096], data[4096:8192], data[8192:]]
    started = await client.http.post("/v2/app/blobs/uploads/")
    assert started.status_code == 202
    location = started.headers["location"]
    assert started.headers["docker-upload-uuid"]
    offset = 0
    for chunk in chunks:
        end = offset + len(chunk) - 1
        patched = await client.http.patch(
            location,
            content=chunk,
            headers={
                "Content-Range": f"{offset}-{end}",
                "Content-Type": "application/octet-stream",
            },
        )
        assert patched.status_code == 202, patched.text
        assert patched.headers["range"] == f"0-{end}"
        location = patched.headers["location"]
        offset = end + 1
    status = await client.http.get(location)
    assert status.status_code == 204
    assert status.headers["range"] == f"0-{len(data) - 1}"
    done = await client.http.put(f"{location}?digest={sha256(data)}")
    assert done.status_code == 201
    pulled = await client.http.get(f"/v2/app/blobs/{sha256(data)}")
    assert pulled.content == data


async def test_chunk_out_of_order_is_416_and_upload_unchanged(client: OciClient) -> None:
    started = await client.http.post("/v2/app/blobs/uploads/")
    location = started.headers["location"]
    await client.http.patch(location, content=b"abcd", headers={"Content-Range": "0-3"})
    bad = await client.http.patch(location, content=b"zz", headers={"Content-Range": "10-11"})
    assert bad.status_code == 416
    assert error_code(bad) == "RANGE_INVALID"
    status = await client.http.get(location)
    assert status.headers["range"] == "0-3"


async def test_final_put_with_last_chunk(client: OciClient) -> None:
    started = await client.http.post("/v2/app/blobs/uploads/")
    location = started.headers["location"]
    await client.http.patch(location, content=b"hello ")
    done = await client.http.put(
        f"{location}?digest={sha256(b'hello world')}",
        content=b"world",
        headers={"Content-Type": "application/octet-stream"},
    )
    assert done.status_code == 201
    assert (await client.http.get(f"/v2/app/blobs/{sha256(b'hello world')}")).content == (
        b"hello world"
    )


async def test_digest_mismatch_stores_nothing(client: OciClient, root: Path) -> None:
    started = await client.http.post("/v2/app/blobs/uploads/")
    location = started.headers["location"]
    wrong = sha256(b"something else")
    response = await client.http.put(f"{location}?digest={wrong}", content=b"actual bytes")
    assert response.status_code == 400
    assert error_code(response) == "DIGEST_INVALID"
    assert (await client.http.head(f"/v2/app/blobs/{wrong}")).status_code == 404
    assert (await client.http.head(f"/v2/app/blobs/{sha256(b'actual bytes')}")).status_code == 404
    assert _visible_files(root, "blobs") == []
    assert _visible_files(root, "_uploads") == []


async def test_cancel_upload_then_it_is_unknown(client: OciClient, root: Path) -> None:
    # spec: "Deleting an upload" (cancel)
    started = await client.http.post("/v2/app/blobs/uploads/")
    location = started.headers["location"]
    await client.http.patch(location, content=b"partial")
    cancelled = await client.http.delete(location)
    assert cancelled.status_code == 204
    status = await client.http.get(location)
    assert status.status_code == 404
    assert error_code(status) == "BLOB_UPLOAD_UNKNOWN"
    assert _visible_files(root, "_uploads") == []


async def test_upload_id_of_another_repository_is_unknown(client: OciClient) -> None:
    started = await client.http.post("/v2/alice/app/blobs/uploads/")
    upload_id = started.headers["docker-upload-uuid"]
    stolen = await client.http.patch(f"/v2/bob/app/blobs/uploads/{upload_id}", content=b"x")
    assert stolen.status_code == 404
    assert error_code(stolen) == "BLOB_UPLOAD_UNKNOWN"


@pytest.mark.parametrize("with_from", [True, False])
async def test_cross_repository_mount(client: OciClient, with_from: bool) -> None:
    # spec: "Mounting a blob from another repository" (and without `from`)
    data = os.urandom(100)
    await client.push_blob("source/repo", data)
    query = f"mount={sha256(data)}" + ("&from=source/repo" if with_from else "")
    response = await client.http.post(f"/v2/target/repo/blobs/uploads/?{query}")
    assert response.status_code == 201
    assert response.headers["location"].endswith(f"/v2/target/repo/blobs/{sha256(data)}")
    assert (await client.http.get(f"/v2/target/repo/blobs/{sha256(data)}")).content == data


async def test_mount_of_unknown_blob_falls_back_to_upload(client: OciClient) -> None:
    missing = sha256(b"never pushed")
    response = await client.http.post(f"/v2/target/blobs/uploads/?mount={missing}&from=source")
    assert response.status_code == 202
    assert "/v2/target/blobs/uploads/" in response.headers["location"]


async def test_mount_from_repository_without_the_blob_is_refused(client: OciClient) -> None:
    data = os.urandom(64)
    await client.push_blob("holder", data)
    response = await client.http.post(
        f"/v2/target/blobs/uploads/?mount={sha256(data)}&from=not-holder"
    )
    assert response.status_code == 202  # fallback, the blob is not exposed


async def test_push_manifest_by_tag_keeps_exact_bytes(client: OciClient) -> None:
    image = make_image()
    pushed = await client.push_image("app", image, tag="v1")
    assert pushed.status_code == 201, pushed.text
    assert pushed.headers["docker-content-digest"] == image.digest
    assert pushed.headers["location"].endswith(f"/v2/app/manifests/{image.digest}")
    pulled = await client.get_manifest("app", "v1")
    assert pulled.content == image.manifest
    assert pulled.headers["docker-content-digest"] == image.digest
    assert pulled.headers["content-type"] == OCI_MANIFEST


async def test_push_manifest_by_digest(client: OciClient) -> None:
    image = make_image()
    pushed = await client.push_image("app", image)
    assert pushed.status_code == 201
    assert (await client.get_manifest("app", image.digest)).content == image.manifest


async def test_manifest_needs_the_bytes_not_only_the_link(client: OciClient, root: Path) -> None:
    # Garbage collection puts an unreferenced blob aside before deleting it; a manifest
    # pushed meanwhile must not be accepted on the strength of the link alone.
    image = make_image()
    for blob in [image.config, *image.layers]:
        assert (await client.push_blob("app", blob)).status_code == 201
    hexa = sha256(image.layers[0]).split(":")[1]
    data = root / f"docker/registry/v2/blobs/sha256/{hexa[:2]}/{hexa}/data"
    data.rename(data.with_name("collecting"))
    refused = await client.put_manifest("app", "v1", image.manifest, OCI_MANIFEST)
    assert refused.status_code == 400
    assert error_code(refused) == "MANIFEST_BLOB_UNKNOWN"
    assert (await client.push_blob("app", image.layers[0])).status_code == 201
    assert (await client.put_manifest("app", "v1", image.manifest, OCI_MANIFEST)).status_code == 201


async def test_index_needs_its_children_first(client: OciClient) -> None:
    children = [make_image("amd64"), make_image("arm64")]
    index = make_index(children)
    early = await client.put_manifest("multi", "latest", index, OCI_INDEX)
    assert early.status_code == 400
    assert error_code(early) == "MANIFEST_BLOB_UNKNOWN"
    for child in children:
        assert (await client.push_image("multi", child)).status_code == 201
    pushed = await client.put_manifest("multi", "latest", index, OCI_INDEX)
    assert pushed.status_code == 201
    pulled = await client.get_manifest("multi", "latest")
    assert pulled.content == index
    assert pulled.headers["content-type"] == OCI_INDEX


def _manifest(**overrides: object) -> bytes:
    body: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(b"{}"),
            "size": 2,
        },
        "layers": [],
    }
    body.update(overrides)
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"{not json", OCI_MANIFEST, 400, "MANIFEST_INVALID"),
        (b"[]", OCI_MANIFEST, 400, "MANIFEST_INVALID"),
        (_manifest(), OCI_INDEX, 400, "MANIFEST_INVALID"),  # media type mismatch
        (_manifest(schemaVersion=1), OCI_MANIFEST, 400, "MANIFEST_INVALID"),
        (_manifest(layers="nope"), OCI_MANIFEST, 400, "MANIFEST_INVALID"),
        (
            _manifest(config={"mediaType": "x", "digest": "sha256:zz", "size": 1}),
            OCI_MANIFEST,
            400,
            "MANIFEST_INVALID",
        ),
        (_manifest(), OCI_MANIFEST, 400, "MANIFEST_BLOB_UNKNOWN"),  # config never pushed
        (
            _manifest(mediaType="application/x-unknown"),
            "application/x-unknown",
            400,
            "MANIFEST_INVALID",
        ),
        (b" " * (4 * 1024 * 1024 + 1), OCI_MANIFEST, 413, "SIZE_INVALID"),
    ],
    ids=[
        "not-json",
        "not-object",
        "type-mismatch",
        "schema1",
        "bad-layers",
        "bad-digest",
        "blob-unknown",
        "unknown-type",
        "too-large",
    ],
)
async def test_bad_manifests_are_refused_and_not_stored(
    client: OciClient, root: Path, body: bytes, content_type: str, status: int, code: str
) -> None:
    response = await client.put_manifest("app", "bad", body, content_type)
    assert response.status_code == status, response.text
    assert error_code(response) == code
    assert (await client.get_manifest("app", "bad")).status_code == 404
    assert _visible_files(root, "_manifests") == []


async def test_manifest_put_by_wrong_digest_is_digest_invalid(client: OciClient) -> None:
    image = make_image()
    for blob in [image.config, *image.layers]:
        await client.push_blob("app", blob)
    response = await client.put_manifest("app", sha256(b"other"), image.manifest, OCI_MANIFEST)
    assert response.status_code == 400
    assert error_code(response) == "DIGEST_INVALID"


async def test_invalid_tag_is_refused(client: OciClient) -> None:
    image = make_image()
    response = await client.push_image("app", image, tag="-bad-tag")
    assert response.status_code == 400
    assert error_code(response) == "TAG_INVALID"


@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE"])
async def test_reference_neither_tag_nor_digest_names_no_manifest(
    client: OciClient, method: str
) -> None:
    # registry:2 and the conformance suite: ".INVALID_MANIFEST_NAME" is a manifest that does
    # not exist (404 MANIFEST_UNKNOWN), not a bad request; only a push says TAG_INVALID.
    await client.push_image("app", make_image(), tag="1")
    response = await client.http.request(method, "/v2/app/manifests/.INVALID_MANIFEST_NAME")
    assert response.status_code == 404
    if method != "HEAD":
        assert error_code(response) == "MANIFEST_UNKNOWN"
    assert (await client.get_manifest("app", "1")).status_code == 200
