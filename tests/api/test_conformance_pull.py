"""The conformance suite's Pull workflow (01_pull_test.go), check by check."""

from __future__ import annotations

from tests.api.conformance_setup import (
    CONFIGS,
    DUMMY_DIGEST,
    INVALID_MANIFEST_CONTENT,
    LAYER,
    MANIFESTS,
    NONEXISTENT_MANIFEST,
    SUCCESS,
    SUITE_ERROR_CODES,
    Run,
    Workflow,
    conformance_test,
    expect,
    expect_success,
    paths,
)
from tests.api.oci_client import OCI_MANIFEST

PULL = Workflow("Pull")
ACCEPT_OCI = {"Accept": OCI_MANIFEST}


PULL.push_check("Populate registry with test blob", CONFIGS[0])
PULL.push_check("Populate registry with test blob", CONFIGS[1])
PULL.push_check("Populate registry with test layer", LAYER)


PULL.tag_check("Populate registry with test manifest", MANIFESTS[0])


@PULL.check("Populate registry with test manifest")
async def _push_manifest_by_digest(run: Run) -> None:
    expect_success(await run.put_manifest(MANIFESTS[1].digest, MANIFESTS[1]))


PULL.context("Pull blobs")


@PULL.check("HEAD request to nonexistent blob should result in 404 response")
async def _head_missing_blob(run: Run) -> None:
    expect(await run.request("HEAD", f"/v2/<name>/blobs/{DUMMY_DIGEST}"), 404)


@PULL.check("HEAD request to existing blob should yield 200")
async def _head_blob(run: Run) -> None:
    response = await run.request("HEAD", f"/v2/<name>/blobs/{CONFIGS[0].digest}")
    expect(response, 200)
    assert response.headers.get("docker-content-digest", CONFIGS[0].digest) == CONFIGS[0].digest


@PULL.check("GET nonexistent blob should result in 404 response")
async def _get_missing_blob(run: Run) -> None:
    response = await run.request("GET", f"/v2/<name>/blobs/{DUMMY_DIGEST}")
    expect(response, 404, code="BLOB_UNKNOWN")


@PULL.check("GET request to existing blob URL should yield 200")
async def _get_blob(run: Run) -> None:
    response = await run.request("GET", f"/v2/<name>/blobs/{CONFIGS[0].digest}")
    expect(response, 200)
    assert response.content == CONFIGS[0].content


PULL.context("Pull manifests")


@PULL.check("HEAD request to nonexistent manifest should return 404")
async def _head_missing_manifest(run: Run) -> None:
    response = await run.request("HEAD", f"/v2/<name>/manifests/{NONEXISTENT_MANIFEST}")
    expect(response, 404)


def _manifest_check(method: str, index: int | None) -> None:
    """HEAD/GET of manifest[index] by digest, or of the tag when ``index`` is None."""
    what = "manifest path (tag)" if index is None else f"manifest[{index}] path (digest)"

    @PULL.check(f"{method} request to {what} should yield 200 response")
    async def step(run: Run) -> None:
        manifest = MANIFESTS[0 if index is None else index]
        reference = run.tag if index is None else manifest.digest
        assert reference, "no tag from setup"
        response = await run.request(
            method, f"/v2/<name>/manifests/{reference}", headers=ACCEPT_OCI
        )
        expect(response, 200)
        assert response.headers.get("docker-content-digest", manifest.digest) == manifest.digest
        if method == "GET":
            assert response.content == manifest.content


_manifest_check("HEAD", 0)
_manifest_check("HEAD", 1)
_manifest_check("HEAD", None)


@PULL.check("GET nonexistent manifest should return 404")
async def _get_missing_manifest(run: Run) -> None:
    response = await run.request("GET", f"/v2/<name>/manifests/{NONEXISTENT_MANIFEST}")
    expect(response, 404, code="MANIFEST_UNKNOWN")


_manifest_check("GET", 0)
_manifest_check("GET", 1)
_manifest_check("GET", None)

PULL.context("Error codes")


@PULL.check("400 response body should contain OCI-conforming JSON message")
async def _error_body(run: Run) -> None:
    response = await run.request(
        "GET",
        "/v2/<name>/manifests/sha256:totallywrong",
        headers={"Content-Type": OCI_MANIFEST},
        body=INVALID_MANIFEST_CONTENT,
    )
    expect(response, 400, 404)
    if response.status_code == 400:
        errors = response.json()["errors"]
        assert errors, response.text
        assert errors[0]["code"] in SUITE_ERROR_CODES, response.text


PULL.context("Teardown")


# Blobs may already be gone with their manifest (404); manifests may not.
MANIFEST_DELETED = (*SUCCESS, 405)
BLOB_DELETED = (*SUCCESS, 404, 405)


def _delete_manifests(manifests_first: bool) -> None:
    for i in (0, 1):
        path = f"/v2/<name>/manifests/{MANIFESTS[i].digest}"
        PULL.delete_check(
            f"Delete manifest[{i}] created in setup",
            paths(path),
            MANIFEST_DELETED,
            manifests_first=manifests_first,
        )


def _delete_blob(what: str, digest: str) -> None:
    path = f"/v2/<name>/blobs/{digest}"
    PULL.delete_check(f"Delete {what} created in setup", paths(path), BLOB_DELETED)


_delete_manifests(manifests_first=True)
_delete_blob("config[0] blob", CONFIGS[0].digest)
_delete_blob("config[1] blob", CONFIGS[1].digest)
_delete_blob("layer blob", LAYER.digest)
_delete_manifests(manifests_first=False)


test_pull = conformance_test(PULL)
