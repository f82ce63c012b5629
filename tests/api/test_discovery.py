"""distribution-spec "Content Discovery": tags list, catalog, referrers."""

from __future__ import annotations

import json

import pytest

from tests.api.oci_client import OCI_INDEX, OciClient, descriptor, error_code, make_image

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


async def test_tags_list_and_pagination(client: OciClient) -> None:
    # spec: "Listing Tags" with n and last, and the Link header
    image = make_image()
    tags = ["a", "b", "c", "d", "e"]
    for tag in tags:
        assert (await client.push_image("app", image, tag=tag)).status_code == 201
    everything = await client.get_json("/v2/app/tags/list")
    assert everything == {"name": "app", "tags": tags}

    first = await client.http.get("/v2/app/tags/list?n=2")
    assert first.json()["tags"] == ["a", "b"]
    assert first.headers["link"] == '</v2/app/tags/list?last=b&n=2>; rel="next"'
    second = await client.http.get("/v2/app/tags/list?n=2&last=b")
    assert second.json()["tags"] == ["c", "d"]
    last = await client.http.get("/v2/app/tags/list?n=2&last=d")
    assert last.json()["tags"] == ["e"]
    assert "link" not in last.headers
    empty = await client.http.get("/v2/app/tags/list?n=0")
    assert empty.json()["tags"] == []


@pytest.mark.parametrize("n", ["-1", "abc", "1.5"])
async def test_bad_page_size_is_refused(client: OciClient, n: str) -> None:
    response = await client.http.get(f"/v2/_catalog?n={n}")
    assert response.status_code == 400
    assert error_code(response) == "PAGINATION_NUMBER_INVALID"


async def test_catalog_lists_repositories_with_pagination(client: OciClient) -> None:
    # spec: catalog is registry:2's API, paginated like tags
    names = ["alpha", "beta/one", "beta/two", "gamma"]
    for name in names:
        await client.push_blob(name, name.encode())
    assert (await client.get_json("/v2/_catalog")) == {"repositories": names}
    page = await client.http.get("/v2/_catalog?n=3")
    assert page.json() == {"repositories": names[:3]}
    assert page.headers["link"] == '</v2/_catalog?last=beta%2Ftwo&n=3>; rel="next"'
    rest = await client.http.get("/v2/_catalog?n=3&last=beta/two")
    assert rest.json() == {"repositories": ["gamma"]}


async def test_referrers_api_with_artifact_type_filter(client: OciClient) -> None:
    # spec: "Listing Referrers", "Pushing Manifests with Subject"
    subject = make_image("subject")
    await client.push_image("app", subject, tag="v1")
    subject_desc = descriptor(OCI_MANIFEST, subject.manifest)
    signature = make_image(
        "sig",
        subject=subject_desc,
        artifact_type="application/vnd.example.signature",
        annotations={"org.example": "yes"},
    )
    sbom = make_image("sbom", subject=subject_desc, artifact_type="application/spdx+json")
    pushed = await client.push_image("app", signature)
    assert pushed.status_code == 201
    assert pushed.headers["oci-subject"] == subject.digest
    await client.push_image("app", sbom)

    everything = await client.http.get(f"/v2/app/referrers/{subject.digest}")
    assert everything.status_code == 200
    assert everything.headers["content-type"] == OCI_INDEX
    index = everything.json()
    assert index["mediaType"] == OCI_INDEX
    by_digest = {entry["digest"]: entry for entry in index["manifests"]}
    assert set(by_digest) == {signature.digest, sbom.digest}
    assert by_digest[signature.digest]["artifactType"] == "application/vnd.example.signature"
    assert by_digest[signature.digest]["annotations"] == {"org.example": "yes"}
    assert by_digest[signature.digest]["size"] == len(signature.manifest)

    filtered = await client.http.get(
        f"/v2/app/referrers/{subject.digest}?artifactType=application/spdx%2Bjson"
    )
    assert filtered.headers["oci-filters-applied"] == "artifactType"
    assert [e["digest"] for e in filtered.json()["manifests"]] == [sbom.digest]


async def test_referrers_of_unknown_subject_is_an_empty_index(client: OciClient) -> None:
    # spec: the registry MUST NOT answer 404 to a referrers request
    response = await client.http.get(f"/v2/nothing/referrers/sha256:{'0' * 64}")
    assert response.status_code == 200
    assert json.loads(response.content)["manifests"] == []


async def test_referrer_pushed_before_its_subject(client: OciClient) -> None:
    subject = make_image("later")
    ref = make_image(
        "ref",
        subject=descriptor(OCI_MANIFEST, subject.manifest),
        artifact_type="application/x-note",
    )
    assert (await client.push_image("app", ref)).status_code == 201
    listed = await client.get_json(f"/v2/app/referrers/{subject.digest}")
    assert [e["digest"] for e in listed["manifests"]] == [ref.digest]


async def test_catalog_sees_repositories_pushed_through_another_worker(tmp_path: object) -> None:
    # Two processes on one storage root: each keeps the catalog in memory, and a push
    # through one must be listed by the other at once (read-after-write).
    from pathlib import Path

    import httpx

    from entrepot.http.app import build_app
    from entrepot.http.context import ApiContext
    from entrepot.registry.local import LocalRegistry
    from entrepot.storage.filesystem import FilesystemDriver

    root = Path(str(tmp_path)) / "shared"

    def worker() -> OciClient:
        app = build_app(ApiContext(resolver=LocalRegistry(FilesystemDriver(root))))
        transport = httpx.ASGITransport(app=app)
        return OciClient(httpx.AsyncClient(transport=transport, base_url="http://w.test"))

    first, second = worker(), worker()
    await first.push_blob("one", b"1")
    assert (await second.get_json("/v2/_catalog"))["repositories"] == ["one"]
    await first.push_blob("two", b"2")
    await first.push_image("three", make_image("3"), tag="v")
    assert (await second.get_json("/v2/_catalog"))["repositories"] == ["one", "three", "two"]
    await second.push_blob("four", b"4")
    assert (await first.get_json("/v2/_catalog"))["repositories"] == ["four", "one", "three", "two"]
    # A page (read from storage while the full list is rebuilt) sees it as well.
    await first.push_blob("five", b"5")
    assert (await second.get_json("/v2/_catalog?n=2"))["repositories"] == ["five", "four"]
    assert (await second.get_json("/v2/_catalog?n=2&last=one"))["repositories"] == [
        "three",
        "two",
    ]


async def test_tags_list_sees_tags_pushed_and_deleted_through_another_worker(
    tmp_path: object,
) -> None:
    from pathlib import Path

    import httpx

    from entrepot.http.app import build_app
    from entrepot.http.context import ApiContext
    from entrepot.registry.local import LocalRegistry
    from entrepot.storage.filesystem import FilesystemDriver

    root = Path(str(tmp_path)) / "shared"

    def worker() -> OciClient:
        registry = LocalRegistry(FilesystemDriver(root), delete_enabled=True)
        transport = httpx.ASGITransport(app=build_app(ApiContext(resolver=registry)))
        return OciClient(httpx.AsyncClient(transport=transport, base_url="http://w.test"))

    first, second = worker(), worker()
    image = make_image()
    await first.push_image("app", image, tag="v1")
    assert (await second.get_json("/v2/app/tags/list"))["tags"] == ["v1"]
    await first.push_image("app", image, tag="v2")
    assert (await second.get_json("/v2/app/tags/list"))["tags"] == ["v1", "v2"]
    await first.http.delete("/v2/app/manifests/v1")
    assert (await second.get_json("/v2/app/tags/list"))["tags"] == ["v2"]
    await second.http.delete(f"/v2/app/manifests/{image.digest}")
    assert (await first.get_json("/v2/app/tags/list"))["tags"] == []
