"""The conformance suite's Content Discovery workflow (03_discovery_test.go), check by
check: tags list with ``n`` and ``last``, and the referrers API with its filter."""

from __future__ import annotations

from tests.api.conformance_setup import (
    ANNOTATION_KEY,
    ANNOTATION_VALUES,
    ARTIFACT_TYPE_A,
    ARTIFACT_TYPE_FILTER,
    CONFIGS,
    DUMMY_DIGEST,
    EMPTY_JSON,
    EMPTY_JSON_DESCRIPTOR,
    LAYER,
    MANIFESTS,
    REF_BLOB_A,
    REF_BLOB_B,
    REFS_A_CONFIG,
    REFS_A_LAYER,
    REFS_B_CONFIG,
    REFS_B_LAYER,
    REFS_C_LAYER,
    REFS_INDEX,
    SUCCESS,
    TEST_TAG_NAME,
    Run,
    SuiteBlob,
    Workflow,
    conformance_test,
    expect,
    expect_success,
    paths,
    tags_of,
)
from tests.api.oci_client import OCI_INDEX

DISCOVERY = Workflow("Content Discovery")
NUM_TAGS = 4


DISCOVERY.push_check("Populate registry with test blob", CONFIGS[2])
DISCOVERY.push_check("Populate registry with test layer", LAYER)


@DISCOVERY.check("Populate registry with test tags")
async def _push_tags(run: Run) -> None:
    for i in range(NUM_TAGS):
        expect_success(await run.put_manifest(f"test{i}", MANIFESTS[2]))
    run.tag_list = tags_of(await run.request("GET", "/v2/<name>/tags/list"))


async def _put_referrer(run: Run, manifest: SuiteBlob, subject: SuiteBlob, **kw: str) -> None:
    response = await run.put_manifest(manifest.digest, manifest, **kw)
    expect_success(response)
    assert response.headers.get("oci-subject") == subject.digest, response.headers


@DISCOVERY.check("References setup")
async def _references_setup(run: Run) -> None:
    assert EMPTY_JSON_DESCRIPTOR["digest"] == (
        "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    )
    expect_success(await run.push_blob(EMPTY_JSON))
    # Referrers pushed before their subject, then the subject, then more referrers.
    expect_success(await run.push_blob(REF_BLOB_A))
    await _put_referrer(run, REFS_A_CONFIG, MANIFESTS[4])
    await _put_referrer(run, REFS_A_LAYER, MANIFESTS[4])
    await _put_referrer(run, REFS_INDEX, MANIFESTS[4], media_type=OCI_INDEX)
    expect_success(await run.push_blob(CONFIGS[4]))
    expect_success(await run.push_blob(LAYER))
    expect_success(await run.put_manifest(TEST_TAG_NAME, MANIFESTS[4]))
    expect_success(await run.push_blob(REF_BLOB_B))
    await _put_referrer(run, REFS_B_CONFIG, MANIFESTS[4])
    await _put_referrer(run, REFS_B_LAYER, MANIFESTS[4])
    # A referrer of a subject that is never pushed.
    await _put_referrer(run, REFS_C_LAYER, MANIFESTS[3])


DISCOVERY.context("Test content discovery endpoints (listing tags)")


async def _tags(run: Run, **params: str) -> list[str]:
    response = await run.request("GET", "/v2/<name>/tags/list", params=params)
    expect(response, 200)
    return tags_of(response)


@DISCOVERY.check("GET request to list tags should yield 200 response")
async def _list_tags(run: Run) -> None:
    run.tag_list = await _tags(run)
    run.num_tags = len(run.tag_list)
    # Not in the suite: the list holds what setup tagged, in lexical order.
    assert run.tag_list == sorted(run.tag_list)
    assert {f"test{i}" for i in range(NUM_TAGS)} | {TEST_TAG_NAME} <= set(run.tag_list)


@DISCOVERY.check("GET number of tags should be limitable by `n` query parameter")
async def _limit_tags(run: Run) -> None:
    num_results = run.num_tags // 2
    run.tag_list = await _tags(run, n=str(num_results))
    assert len(run.tag_list) == num_results, run.tag_list


@DISCOVERY.check("GET start of tag is set by `last` query parameter")
async def _tags_after_last(run: Run) -> None:
    num_results = run.num_tags // 2
    first_page = await _tags(run, n=str(num_results))
    last = first_page[num_results - 1]
    next_page = await _tags(run, n=str(num_results), last=last)
    assert len(next_page) <= num_results
    # Stronger than the suite (which looks at the first page again): the next page
    # starts after ``last``.
    assert next_page and all(tag > last for tag in next_page), (first_page, next_page)


DISCOVERY.context("Test content discovery endpoints (listing references)")


async def _referrers(run: Run, digest: str, **params: str) -> tuple[list[dict[str, object]], str]:
    response = await run.request("GET", f"/v2/<name>/referrers/{digest}", params=params)
    expect(response, 200)
    assert response.headers.get("content-type") == OCI_INDEX
    manifests = response.json()["manifests"]
    assert isinstance(manifests, list)
    return manifests, response.headers.get("oci-filters-applied", "")


def _check_annotations(manifests: list[dict[str, object]]) -> None:
    for entry in manifests:
        annotations = entry.get("annotations")
        assert isinstance(annotations, dict) and len(annotations) == 1, entry
        assert annotations[ANNOTATION_KEY] == ANNOTATION_VALUES[str(entry["digest"])], entry


@DISCOVERY.check("GET request to nonexistent blob should result in empty 200 response")
async def _referrers_of_nothing(run: Run) -> None:
    manifests, _ = await _referrers(run, DUMMY_DIGEST)
    assert manifests == []


@DISCOVERY.check("GET request to existing blob should yield 200")
async def _referrers_of_subject(run: Run) -> None:
    manifests, _ = await _referrers(run, MANIFESTS[4].digest)
    assert len(manifests) == 5, manifests
    assert manifests[0]["digest"] != manifests[1]["digest"]
    _check_annotations(manifests)
    assert {str(entry["digest"]) for entry in manifests} == set(ANNOTATION_VALUES)


@DISCOVERY.check("GET request to existing blob with filter should yield 200")
async def _referrers_filtered(run: Run) -> None:
    manifests, applied = await _referrers(run, MANIFESTS[4].digest, artifactType=ARTIFACT_TYPE_A)
    # The suite also takes an unfiltered answer (with a warning); Entrepot filters.
    assert applied == ARTIFACT_TYPE_FILTER
    assert len(manifests) == 2, manifests
    _check_annotations(manifests)
    assert {str(entry["digest"]) for entry in manifests} == {
        REFS_A_CONFIG.digest,
        REFS_A_LAYER.digest,
    }


@DISCOVERY.check("GET request to missing manifest should yield 200")
async def _referrers_of_missing_subject(run: Run) -> None:
    manifests, _ = await _referrers(run, MANIFESTS[3].digest)
    assert len(manifests) == 1, manifests
    assert manifests[0]["digest"] == REFS_C_LAYER.digest


DISCOVERY.context("Teardown")

_REFERENCES = [
    REFS_INDEX.digest,
    MANIFESTS[2].digest,
    MANIFESTS[4].digest,
    REFS_A_CONFIG.digest,
    REFS_A_LAYER.digest,
    TEST_TAG_NAME,
    REFS_B_CONFIG.digest,
    REFS_B_LAYER.digest,
    REFS_C_LAYER.digest,
]
# What "References teardown" deletes, in the suite's order.
_REFERRER_MANIFESTS = [
    REFS_INDEX,
    REFS_A_CONFIG,
    REFS_A_LAYER,
    MANIFESTS[4],
    REFS_B_CONFIG,
    REFS_B_LAYER,
]
_REFERRER_BLOBS = [CONFIGS[4], REF_BLOB_A, REF_BLOB_B, EMPTY_JSON]
DELETED = (*SUCCESS, 405, 404)


def _delete_manifests(manifests_first: bool) -> None:
    DISCOVERY.delete_check(
        "Delete created manifest & associated tags",
        paths(*(f"/v2/<name>/manifests/{reference}" for reference in _REFERENCES)),
        DELETED,
        manifests_first=manifests_first,
    )


def _delete_blob(name: str, digest: str) -> None:
    path = f"/v2/<name>/blobs/{digest}"
    # The blob is still there: the suite does not take 404 here.
    DISCOVERY.delete_check(name, paths(path), (*SUCCESS, 405))


_delete_manifests(manifests_first=True)
_delete_blob("Delete config blob created in tests", CONFIGS[2].digest)
_delete_blob("Delete layer blob created in setup", LAYER.digest)
_delete_manifests(manifests_first=False)


@DISCOVERY.check("References teardown")
async def _references_teardown(run: Run) -> None:
    async def delete_referrers() -> None:
        for manifest in _REFERRER_MANIFESTS:
            path = f"/v2/<name>/manifests/{manifest.digest}"
            expect(await run.request("DELETE", path), *DELETED)

    if run.delete_manifest_before_blobs:
        await delete_referrers()
    for blob in _REFERRER_BLOBS:
        expect(await run.request("DELETE", f"/v2/<name>/blobs/{blob.digest}"), *DELETED)
    if not run.delete_manifest_before_blobs:
        await delete_referrers()


test_content_discovery = conformance_test(DISCOVERY)
