"""Pushes that link a blob at the moment a garbage collection takes it away.

A push checks that a blob is there, then links it. A collection running meanwhile sets
aside each blob nothing links, reads the repositories again, and deletes what is still
unlinked: a link written between that read and the delete, after a check made before
the set-aside, would be left pointing at nothing. Each test here lets the collection act
at the one moment that matters, as the server writes its link: by hand (the set-aside
alone, as the collection's first step) or by running `entrepot garbage-collect` itself.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.api.linkwrites import on_link_write
from tests.api.oci_client import OCI_MANIFEST, OciClient, error_code, make_image, sha256

V2 = "docker/registry/v2"


def blob_folder(root: Path, data: bytes) -> Path:
    hexa = sha256(data).split(":")[1]
    return root / V2 / "blobs/sha256" / hexa[:2] / hexa


def collect(root: Path) -> None:
    """`entrepot garbage-collect --grace 0` of the store at ``root``: every blob no
    manifest references goes."""
    config = root.parent / "collect.yml"
    config.write_text(
        yaml.safe_dump({"version": 0.1, "storage": {"filesystem": {"rootdirectory": str(root)}}})
    )
    done = subprocess.run(
        [sys.executable, "-m", "entrepot", "garbage-collect", str(config), "--grace", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def set_aside(root: Path, data: bytes) -> None:
    """What a collection does first to a blob nothing links: its ``data`` moved aside."""
    folder = blob_folder(root, data)
    (folder / "data").rename(folder / "collecting")


async def test_a_layer_set_aside_as_its_manifest_is_linked_is_put_back(
    client: OciClient, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = make_image()
    for blob in [image.config, *image.layers]:
        assert (await client.push_blob("app", blob)).status_code == 201
    # The server checked the layer; the collection sets it aside before the link lands.
    acted = on_link_write(
        monkeypatch, "/_manifests/revisions/", lambda: set_aside(root, image.layers[0])
    )
    pushed = await client.put_manifest("app", "v1", image.manifest, OCI_MANIFEST)
    assert acted and pushed.status_code == 201, pushed.text
    folder = blob_folder(root, image.layers[0])
    assert (folder / "data").read_bytes() == image.layers[0]
    assert not (folder / "collecting").exists()
    pulled = await client.http.get(f"/v2/app/blobs/{sha256(image.layers[0])}")
    assert pulled.status_code == 200 and pulled.content == image.layers[0]


async def test_a_layer_collected_as_its_manifest_is_linked_refuses_the_manifest(
    client: OciClient, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = make_image()
    for blob in [image.config, *image.layers]:
        assert (await client.push_blob("app", blob)).status_code == 201
    # The whole collection runs between the server's check and its link: no manifest
    # references the blobs yet, so all of them go (the manifest's own bytes too).
    acted = on_link_write(monkeypatch, "/_manifests/revisions/", lambda: collect(root))
    refused = await client.put_manifest("app", "v1", image.manifest, OCI_MANIFEST)
    assert acted
    assert refused.status_code == 400, refused.text
    assert error_code(refused) == "MANIFEST_BLOB_UNKNOWN"
    assert "garbage collection" in refused.json()["errors"][0]["message"]
    # Nothing of it stands: no manifest, by digest or by tag.
    assert (await client.get_manifest("app", image.digest)).status_code == 404
    assert (await client.get_manifest("app", "v1")).status_code == 404
    # The client pushes again, and the image is whole.
    monkeypatch.undo()
    pushed = await client.push_image("app", image, tag="v1")
    assert pushed.status_code == 201, pushed.text
    assert (await client.get_manifest("app", "v1")).content == image.manifest
    for blob in [image.config, *image.layers]:
        pulled = await client.http.get(f"/v2/app/blobs/{sha256(blob)}")
        assert pulled.status_code == 200 and pulled.content == blob


async def test_a_manifest_pushed_again_as_its_old_bytes_are_collected_is_whole(
    client: OciClient, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A manifest deleted earlier leaves its bytes until a collection; pushed again, the
    server finds them and links them, the collection having taken them meanwhile."""
    image = make_image()
    assert (await client.push_image("app", image, tag="v1")).status_code == 201
    assert (await client.http.delete(f"/v2/app/manifests/{image.digest}")).status_code == 202
    manifest_bytes = blob_folder(root, image.manifest) / "data"
    assert manifest_bytes.exists()  # deleting a manifest unlinks it; its bytes stay
    acted = on_link_write(
        monkeypatch, "/_manifests/revisions/", lambda: set_aside(root, image.manifest)
    )
    pushed = await client.put_manifest("app", "v1", image.manifest, OCI_MANIFEST)
    assert acted and pushed.status_code == 201, pushed.text
    assert manifest_bytes.read_bytes() == image.manifest
    assert (await client.get_manifest("app", "v1")).content == image.manifest


async def test_an_upload_of_a_blob_collected_as_it_is_linked_keeps_the_uploaded_bytes(
    client: OciClient, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = b"a layer two repositories push"
    assert (await client.push_blob("first", data)).status_code == 201
    # The second upload finds the first one's copy (and drops its own bytes, once the
    # link stands); the collection deletes that copy before the link lands.
    acted = on_link_write(monkeypatch, "/second/_layers/", lambda: collect(root))
    pushed = await client.push_blob("second", data)
    assert acted and pushed.status_code == 201, pushed.text
    assert (blob_folder(root, data) / "data").read_bytes() == data
    pulled = await client.http.get(f"/v2/second/blobs/{sha256(data)}")
    assert pulled.status_code == 200 and pulled.content == data


async def test_a_mount_of_a_blob_collected_as_it_is_linked_falls_back_to_an_upload(
    client: OciClient, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = b"a layer mounted from another repository"
    assert (await client.push_blob("source", data)).status_code == 201
    acted = on_link_write(monkeypatch, "/target/_layers/", lambda: collect(root))
    mounted = await client.http.post(f"/v2/target/blobs/uploads/?mount={sha256(data)}&from=source")
    assert acted
    assert mounted.status_code == 202, mounted.text  # an upload session: push the bytes
    assert (await client.http.head(f"/v2/target/blobs/{sha256(data)}")).status_code == 404
    layer_link = root / V2 / "repositories/target/_layers/sha256" / sha256(data).split(":")[1]
    assert not layer_link.exists()


async def test_a_manifest_unlinked_as_it_is_tagged_is_linked_again(
    client: OciClient, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A collection deleting untagged manifests read the tags before this push's tag,
    and unlinks the manifest (pushed earlier by digest) just after the tag is written."""
    image = make_image()
    assert (await client.push_image("app", image)).status_code == 201  # by digest: untagged
    hexa = sha256(image.manifest).split(":")[1]
    revision = root / V2 / "repositories/app/_manifests/revisions/sha256" / hexa
    unlinked = on_link_write(
        monkeypatch,
        "/_manifests/tags/v1/current/",
        lambda: shutil.rmtree(revision),  # the collection's unlink, after the tag
        after=True,
    )
    pushed = await client.put_manifest("app", "v1", image.manifest, OCI_MANIFEST)
    assert unlinked and pushed.status_code == 201, pushed.text
    assert (revision / "link").read_text() == sha256(image.manifest)
    by_digest = await client.get_manifest("app", sha256(image.manifest))
    assert by_digest.status_code == 200 and by_digest.content == image.manifest


async def test_layer_links_removed_as_the_manifest_is_linked_are_written_again(
    client: OciClient, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A collection removing a repository it found empty deletes its layer links after
    this push's check found them, as the manifest is linked."""
    image = make_image()
    for blob in [image.config, *image.layers]:
        assert (await client.push_blob("app", blob)).status_code == 201
    layers = root / V2 / "repositories/app/_layers"
    acted = on_link_write(monkeypatch, "/_manifests/revisions/", lambda: shutil.rmtree(layers))
    pushed = await client.put_manifest("app", "v1", image.manifest, OCI_MANIFEST)
    assert acted and pushed.status_code == 201, pushed.text
    for blob in [image.config, *image.layers]:
        pulled = await client.http.get(f"/v2/app/blobs/{sha256(blob)}")
        assert pulled.status_code == 200 and pulled.content == blob
