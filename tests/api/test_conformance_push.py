"""The conformance suite's Push workflow (02_push_test.go), check by check.

Entrepot mounts a blob without ``from`` when it has it (the suite's automatic cross-mount,
run with OCI_AUTOMATIC_CROSSMOUNT=1), so the suite's "automatic content discovery
disabled should return a 202" check does not apply; its 202 fallback for a blob that
cannot be mounted is the "nonexistent blob" checks.
"""

from __future__ import annotations

import httpx

from tests.api.conformance_setup import (
    CHUNK_1,
    CHUNK_1_RANGE,
    CHUNK_2,
    CHUNK_2_RANGE,
    CONFIGS,
    DUMMY_DIGEST,
    EMPTY_LAYER_MANIFEST,
    EMPTY_LAYER_TEST_TAG,
    LAYER,
    MANIFESTS,
    NONEXISTENT_MANIFEST,
    OCTET_STREAM,
    SUCCESS,
    TEST_BLOB_A,
    TEST_BLOB_B,
    Run,
    Workflow,
    conformance_test,
    expect,
    paths,
    relative_location,
)
from tests.api.oci_client import OCI_MANIFEST

PUSH = Workflow("Push")
OCTETS = {"Content-Type": OCTET_STREAM}

PUSH.context("Blob Upload Streamed")


@PUSH.check("PATCH request with blob in body should yield 202 response")
async def _patch_streamed(run: Run) -> None:
    started = await run.request("POST", "/v2/<name>/blobs/uploads/")
    response = await run.request(
        "PATCH", relative_location(started), headers=OCTETS, body=TEST_BLOB_A.content
    )
    expect(response, 202)
    run.last = response


@PUSH.check("PUT request to session URL with digest should yield 201 response")
async def _put_streamed(run: Run) -> None:
    assert run.last is not None, "no upload session from the PATCH"
    response = await run.request(
        "PUT", relative_location(run.last), params={"digest": TEST_BLOB_A.digest}, headers=OCTETS
    )
    expect(response, 201)
    assert response.headers.get("location")


PUSH.context("Blob Upload Monolithic")


@PUSH.check("GET nonexistent blob should result in 404 response")
async def _get_missing_blob(run: Run) -> None:
    response = await run.request("GET", f"/v2/<name>/blobs/{DUMMY_DIGEST}")
    expect(response, 404, code="BLOB_UNKNOWN")


@PUSH.check("POST request with digest and blob should yield a 201 or 202")
async def _post_with_digest(run: Run) -> None:
    response = await run.request(
        "POST",
        "/v2/<name>/blobs/uploads/",
        params={"digest": CONFIGS[1].digest},
        headers=OCTETS,
        body=CONFIGS[1].content,
    )
    assert response.headers.get("location")
    expect(response, 201, 202)
    run.last = response


@PUSH.check(
    "GET request to blob URL from prior request should yield 200 or 404 based on response code"
)
async def _get_after_post(run: Run) -> None:
    assert run.last is not None
    response = await run.request("GET", f"/v2/<name>/blobs/{CONFIGS[1].digest}")
    expect(response, 404 if run.last.status_code == 202 else 200)


@PUSH.check("POST request should yield a session ID")
async def _post_session(run: Run) -> None:
    response = await run.request("POST", "/v2/<name>/blobs/uploads/")
    expect(response, 202)
    run.last = response


@PUSH.check("PUT upload of a blob should yield a 201 Response")
async def _put_monolithic(run: Run) -> None:
    assert run.last is not None
    response = await run.request(
        "PUT",
        relative_location(run.last),
        params={"digest": CONFIGS[1].digest},
        headers=OCTETS,
        body=CONFIGS[1].content,
    )
    assert response.headers.get("location")
    expect(response, 201)


@PUSH.check("GET request to existing blob should yield 200 response")
async def _get_config(run: Run) -> None:
    response = await run.request("GET", f"/v2/<name>/blobs/{CONFIGS[1].digest}")
    expect(response, 200)
    assert response.content == CONFIGS[1].content


@PUSH.check("PUT upload of a layer blob should yield a 201 Response")
async def _put_layer(run: Run) -> None:
    response = await run.push_blob(LAYER)
    assert response.headers.get("location")
    expect(response, 201)


@PUSH.check("GET request to existing layer should yield 200 response")
async def _get_layer(run: Run) -> None:
    response = await run.request("GET", f"/v2/<name>/blobs/{LAYER.digest}")
    expect(response, 200)
    assert response.content == LAYER.content


PUSH.context("Blob Upload Chunked")


async def _patch_chunk(run: Run, location: str, chunk: bytes, content_range: str) -> httpx.Response:
    return await run.request(
        "PATCH",
        location,
        headers={**OCTETS, "Content-Range": content_range},
        body=chunk,
    )


@PUSH.check("Out-of-order blob upload should return 416")
async def _out_of_order(run: Run) -> None:
    started = await run.request(
        "POST", "/v2/<name>/blobs/uploads/", headers={"Content-Length": "0"}
    )
    assert started.headers.get("location")
    # The suite rebuilds its blob when OCI-Chunk-Min-Length asks for bigger chunks.
    assert "oci-chunk-min-length" not in started.headers
    response = await _patch_chunk(run, relative_location(started), CHUNK_2, CHUNK_2_RANGE)
    expect(response, 416)


@PUSH.check("PATCH request with first chunk should return 202")
async def _first_chunk(run: Run) -> None:
    started = await run.request(
        "POST", "/v2/<name>/blobs/uploads/", headers={"Content-Length": "0"}
    )
    assert started.headers.get("location")
    run.prev = started
    response = await _patch_chunk(run, relative_location(started), CHUNK_1, CHUNK_1_RANGE)
    expect(response, 202)
    assert response.headers.get("range") == CHUNK_1_RANGE
    run.last = response


@PUSH.check("Retry previous blob chunk should return 416")
async def _retry_chunk(run: Run) -> None:
    assert run.prev is not None
    response = await _patch_chunk(run, relative_location(run.prev), CHUNK_1, CHUNK_1_RANGE)
    expect(response, 416)


@PUSH.check("Get on stale blob upload should return 204 with a range and location")
async def _stale_status(run: Run) -> None:
    assert run.prev is not None
    response = await run.request("GET", relative_location(run.prev))
    expect(response, 204)
    assert response.headers.get("location")
    assert response.headers.get("range") == CHUNK_1_RANGE
    run.last = response


@PUSH.check("PATCH request with second chunk should return 202")
async def _second_chunk(run: Run) -> None:
    assert run.last is not None
    response = await _patch_chunk(run, relative_location(run.last), CHUNK_2, CHUNK_2_RANGE)
    expect(response, 202)
    assert response.headers.get("location")
    run.last = response


@PUSH.check("PUT request with digest should return 201")
async def _close_chunked(run: Run) -> None:
    assert run.last is not None
    response = await run.request(
        "PUT",
        relative_location(run.last),
        params={"digest": TEST_BLOB_B.digest},
        headers={**OCTETS, "Content-Length": "0"},
    )
    expect(response, 201)
    assert response.headers.get("location")


PUSH.context("Cross-Repository Blob Mount")


@PUSH.check("Cross-mounting of a blob without the from argument should yield session id")
async def _mount_without_from(run: Run) -> None:
    response = await run.request(
        "POST", "/v2/<name>/blobs/uploads/", name=run.crossmount, params={"mount": DUMMY_DIGEST}
    )
    expect(response, 202)
    assert response.headers.get("location")


@PUSH.check("POST request to mount another repository's blob should return 201 or 202")
async def _mount_from(run: Run) -> None:
    response = await run.request(
        "POST",
        "/v2/<name>/blobs/uploads/",
        name=run.crossmount,
        params={"mount": TEST_BLOB_A.digest, "from": run.name},
    )
    # The suite takes 202 too; Entrepot has the blob, so it mounts it.
    expect(response, 201)
    run.last = response


@PUSH.check("GET request to test digest within cross-mount namespace should return 200")
async def _get_mounted(run: Run) -> None:
    assert run.last is not None and run.last.status_code == 201
    location = relative_location(run.last)
    assert location == f"/v2/{run.crossmount}/blobs/{TEST_BLOB_A.digest}"
    response = await run.request("GET", location)
    expect(response, 200)
    assert response.content == TEST_BLOB_A.content


@PUSH.check("Cross-mounting of nonexistent blob should yield session id")
async def _mount_missing(run: Run) -> None:
    # The suite looks at the previous answer when it was 202; Entrepot mounted (201), so
    # ask for a blob the source does not have: the answer is an upload session.
    response = await run.request(
        "POST",
        "/v2/<name>/blobs/uploads/",
        name=run.crossmount,
        params={"mount": DUMMY_DIGEST, "from": run.name},
    )
    expect(response, 202)
    assert relative_location(response).startswith(f"/v2/{run.crossmount}/blobs/uploads/")


@PUSH.check(
    "Cross-mounting without from, and automatic content discovery enabled should return a 201"
)
async def _automatic_mount(run: Run) -> None:
    response = await run.request(
        "POST",
        "/v2/<name>/blobs/uploads/",
        name=run.crossmount,
        params={"mount": TEST_BLOB_A.digest},
    )
    expect(response, 201)


PUSH.context("Manifest Upload")


@PUSH.check("GET nonexistent manifest should return 404")
async def _get_missing_manifest(run: Run) -> None:
    response = await run.request("GET", f"/v2/<name>/manifests/{NONEXISTENT_MANIFEST}")
    expect(response, 404, code="MANIFEST_UNKNOWN")


@PUSH.check("PUT should accept a manifest upload")
async def _put_manifests(run: Run) -> None:
    for i in range(4):
        response = await run.put_manifest(f"test{i}", MANIFESTS[1])
        assert response.headers.get("location")
        expect(response, 201)


@PUSH.check("Registry should accept a manifest upload with no layers")
async def _put_empty_layers(run: Run) -> None:
    response = await run.put_manifest(EMPTY_LAYER_TEST_TAG, EMPTY_LAYER_MANIFEST)
    # The suite only warns when this is refused; Entrepot accepts it.
    expect(response, 201)
    run.empty_layer_manifest_ref = response.headers.get("location", "")
    assert run.empty_layer_manifest_ref


@PUSH.check("GET request to manifest URL (digest) should yield 200 response")
async def _get_pushed_manifest(run: Run) -> None:
    response = await run.request(
        "GET", f"/v2/<name>/manifests/{MANIFESTS[1].digest}", headers={"Accept": OCI_MANIFEST}
    )
    expect(response, 200)
    assert response.content == MANIFESTS[1].content


PUSH.context("Teardown")


def _pushed_manifests(run: Run) -> list[str]:
    paths = [f"/v2/<name>/manifests/{MANIFESTS[1].digest}"]
    if run.empty_layer_manifest_ref:
        paths.append(f"/v2/<name>/manifests/{EMPTY_LAYER_MANIFEST.digest}")
    return paths


def _delete_manifests(manifests_first: bool) -> None:
    PUSH.delete_check(
        "Delete manifest created in tests",
        _pushed_manifests,
        (*SUCCESS, 405),
        manifests_first=manifests_first,
    )


def _delete_blob(name: str, digest: str) -> None:
    path = f"/v2/<name>/blobs/{digest}"
    PUSH.delete_check(name, paths(path), (*SUCCESS, 404, 405))


_delete_manifests(manifests_first=True)
_delete_blob("Delete config blob created in tests", CONFIGS[1].digest)
_delete_blob("Delete layer blob created in setup", LAYER.digest)
_delete_manifests(manifests_first=False)


test_push = conformance_test(PUSH)
