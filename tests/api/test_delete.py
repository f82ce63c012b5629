"""distribution-spec "Content Management": deleting tags, manifests and blobs, and
registry:2's storage.delete.enabled switch."""

from __future__ import annotations

from tests.api.oci_client import OciClient, error_code, make_image, sha256


async def test_delete_manifest_by_digest_removes_it_and_its_tags(client: OciClient) -> None:
    image = make_image()
    await client.push_image("app", image, tag="v1")
    deleted = await client.http.delete(f"/v2/app/manifests/{image.digest}")
    assert deleted.status_code == 202
    assert (await client.get_manifest("app", image.digest)).status_code == 404
    assert (await client.get_manifest("app", "v1")).status_code == 404
    assert (await client.get_json("/v2/app/tags/list"))["tags"] == []


async def test_delete_tag_keeps_the_manifest(client: OciClient) -> None:
    image = make_image()
    await client.push_image("app", image, tag="v1")
    await client.push_image("app", image, tag="v2")
    assert (await client.http.delete("/v2/app/manifests/v1")).status_code == 202
    assert (await client.get_manifest("app", "v1")).status_code == 404
    assert (await client.get_manifest("app", "v2")).status_code == 200
    assert (await client.get_manifest("app", image.digest)).status_code == 200


async def test_delete_unknown_manifest_is_404(client: OciClient) -> None:
    response = await client.http.delete(f"/v2/app/manifests/{sha256(b'none')}")
    assert response.status_code == 404
    assert error_code(response) == "MANIFEST_UNKNOWN"


async def test_delete_blob(client: OciClient) -> None:
    await client.push_blob("app", b"layer")
    deleted = await client.http.delete(f"/v2/app/blobs/{sha256(b'layer')}")
    assert deleted.status_code == 202
    gone = await client.http.get(f"/v2/app/blobs/{sha256(b'layer')}")
    assert gone.status_code == 404
    assert error_code(gone) == "BLOB_UNKNOWN"
    again = await client.http.delete(f"/v2/app/blobs/{sha256(b'layer')}")
    assert again.status_code == 404


async def test_deletes_refused_when_disabled(client_no_delete: OciClient) -> None:
    client = client_no_delete
    image = make_image()
    await client.push_image("app", image, tag="v1")
    for path in [
        f"/v2/app/manifests/{image.digest}",
        "/v2/app/manifests/v1",
        f"/v2/app/blobs/{sha256(image.config)}",
    ]:
        response = await client.http.delete(path)
        assert response.status_code == 405, path
        assert error_code(response) == "UNSUPPORTED"
    assert (await client.get_manifest("app", "v1")).status_code == 200
