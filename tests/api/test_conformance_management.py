"""The conformance suite's Content Management workflow (04_management_test.go), check by
check: deleting tags, manifests and blobs."""

from __future__ import annotations

from tests.api.conformance_setup import (
    CONFIGS,
    LAYER,
    MANIFESTS,
    Run,
    Workflow,
    conformance_test,
    expect,
    tags_of,
)

MANAGEMENT = Workflow("Content Management")


MANAGEMENT.push_check("Populate registry with test config blob", CONFIGS[3])
MANAGEMENT.push_check("Populate registry with test layer", LAYER)


MANAGEMENT.tag_check("Populate registry with test tag", MANIFESTS[3])


@MANAGEMENT.check("Check how many tags there are before anything gets deleted")
async def _count_tags(run: Run) -> None:
    response = await run.request("GET", "/v2/<name>/tags/list")
    expect(response, 200)
    run.num_tags = len(tags_of(response))


MANAGEMENT.context("Manifest delete")


@MANAGEMENT.check(
    "DELETE request to manifest tag should return 202, unless tag deletion is disallowed (400/405)"
)
async def _delete_tag(run: Run) -> None:
    response = await run.request("DELETE", f"/v2/<name>/manifests/{run.tag}")
    # The suite also takes 400 UNSUPPORTED or 405; Entrepot deletes tags.
    expect(response, 202)


@MANAGEMENT.check(
    "DELETE request to manifest (digest) should yield 202 response unless already deleted"
)
async def _delete_manifest(run: Run) -> None:
    response = await run.request("DELETE", f"/v2/<name>/manifests/{MANIFESTS[3].digest}")
    # Deleting the tag left the manifest: Entrepot deletes it now (the suite takes 404 too).
    expect(response, 202)


@MANAGEMENT.check(
    "GET request to deleted manifest URL should yield 404 response, unless delete is disallowed"
)
async def _get_deleted_manifest(run: Run) -> None:
    response = await run.request("GET", f"/v2/<name>/manifests/{MANIFESTS[3].digest}")
    expect(response, 404, code="MANIFEST_UNKNOWN")


@MANAGEMENT.check("GET request to tags list should reflect manifest deletion")
async def _tags_after_delete(run: Run) -> None:
    response = await run.request("GET", "/v2/<name>/tags/list")
    expect(response, 200)
    tags = tags_of(response)
    assert len(tags) < run.num_tags
    assert run.tag not in tags


MANAGEMENT.context("Blob delete")


@MANAGEMENT.check("DELETE request to blob URL should yield 202 response")
async def _delete_blobs(run: Run) -> None:
    for blob in (CONFIGS[3], LAYER):
        response = await run.request("DELETE", f"/v2/<name>/blobs/{blob.digest}")
        # The suite also takes 404 and 405; Entrepot deletes blobs.
        expect(response, 202)
        run.blob_delete_allowed = response.status_code != 405


@MANAGEMENT.check("GET request to deleted blob URL should yield 404 response")
async def _get_deleted_blob(run: Run) -> None:
    assert run.blob_delete_allowed
    response = await run.request("GET", f"/v2/<name>/blobs/{CONFIGS[3].digest}")
    expect(response, 404, code="BLOB_UNKNOWN")


test_content_management = conformance_test(MANAGEMENT)
