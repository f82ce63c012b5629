"""Entrepot with real clients: skopeo, podman and containerd push to it and pull from it.

The acceptance tests of the core registry: every workflow the harness proves against registry:2
(test_harness_registry2.py) works against Entrepot with the same images, and every digest a
client sees is the one images.py computed offline.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from . import clients
from .clients import ClientError, Ctr, Podman
from .images import (
    OCI_INDEX,
    OCI_MANIFEST,
    assert_layout_holds,
    build_image,
    build_index,
)
from .servers import ManagedServer

pytestmark = pytest.mark.e2e

MANIFEST_ACCEPT = ", ".join(
    [
        OCI_MANIFEST,
        OCI_INDEX,
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)


def _manifest_status(server: ManagedServer, repo: str, reference: str) -> int:
    response = httpx.get(
        f"{server.url}/v2/{repo}/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT}
    )
    return response.status_code


# --- skopeo ---------------------------------------------------------------------------------


def test_skopeo_single_image_push_pull_list_delete(
    entrepot_server: ManagedServer, tmp_path: Path
) -> None:
    host = entrepot_server.host
    image = build_image(tmp_path / "src", seed=11)
    clients.push(image.ref, host, "e2e/skopeo-single", "v1")
    clients.push(image.ref, host, "e2e/skopeo-single", "v2")

    # The bytes served are the bytes pushed, by tag and by digest.
    raw = clients.inspect_raw(host, "e2e/skopeo-single", "v1")
    assert clients.sha256_digest(raw) == image.digest
    assert raw == image.blob(image.digest)
    assert json.loads(raw)["mediaType"] == OCI_MANIFEST
    assert clients.inspect_digest(host, "e2e/skopeo-single", image.digest) == image.digest
    summary = clients.inspect(host, "e2e/skopeo-single", "v1")
    assert summary["Digest"] == image.digest
    assert summary["Layers"] == [
        layer.descriptor.digest for layer in image.images["linux/amd64"].layers
    ]
    assert sorted(clients.list_tags(host, "e2e/skopeo-single")) == ["v1", "v2"]

    back = tmp_path / "back"
    clients.pull_to_layout(host, "e2e/skopeo-single", "v1", back, dest_tag="v1")
    assert_layout_holds(back, "v1", image)
    clients.pull_to_layout(host, "e2e/skopeo-single", image.digest, back, dest_tag="bydigest")
    assert_layout_holds(back, "bydigest", image)

    # skopeo delete removes the manifest the tag names: both tags (same digest) are gone.
    clients.delete(host, "e2e/skopeo-single", "v1")
    assert _manifest_status(entrepot_server, "e2e/skopeo-single", "v1") == 404
    assert _manifest_status(entrepot_server, "e2e/skopeo-single", image.digest) == 404
    assert "v1" not in clients.list_tags(host, "e2e/skopeo-single")
    with pytest.raises(ClientError):
        clients.inspect_raw(host, "e2e/skopeo-single", "v1")

    # And it can be pushed again afterwards.
    clients.push(image.ref, host, "e2e/skopeo-single", "v3")
    assert clients.inspect_digest(host, "e2e/skopeo-single", "v3") == image.digest


def test_skopeo_multiarch_index_push_pull_list_delete(
    entrepot_server: ManagedServer, tmp_path: Path
) -> None:
    host = entrepot_server.host
    index = build_index(tmp_path / "src", seed=12)
    clients.push(index.ref, host, "e2e/skopeo-multi", "v1", all_images=True)

    raw = clients.inspect_raw(host, "e2e/skopeo-multi", "v1")
    assert clients.sha256_digest(raw) == index.digest
    assert raw == index.blob(index.digest)
    assert json.loads(raw)["mediaType"] == OCI_INDEX
    for platform, digest in index.manifest_digests.items():
        child = clients.inspect_raw(host, "e2e/skopeo-multi", digest)
        assert clients.sha256_digest(child) == digest, platform
        assert child == index.blob(digest)
    assert clients.list_tags(host, "e2e/skopeo-multi") == ["v1"]

    back = tmp_path / "back"
    clients.pull_to_layout(host, "e2e/skopeo-multi", "v1", back, dest_tag="v1", all_images=True)
    assert_layout_holds(back, "v1", index)

    clients.push(index.ref, host, "e2e/skopeo-multi", "v2", all_images=True)
    assert sorted(clients.list_tags(host, "e2e/skopeo-multi")) == ["v1", "v2"]
    clients.delete(host, "e2e/skopeo-multi", "v1")
    assert clients.list_tags(host, "e2e/skopeo-multi") == []
    assert _manifest_status(entrepot_server, "e2e/skopeo-multi", "v1") == 404
    assert _manifest_status(entrepot_server, "e2e/skopeo-multi", index.digest) == 404
    # Deleting the index does not delete the platform manifests it listed.
    for digest in index.manifest_digests.values():
        assert clients.inspect_digest(host, "e2e/skopeo-multi", digest) == digest


# --- podman ---------------------------------------------------------------------------------


def test_podman_pulls_from_and_pushes_to_entrepot(
    entrepot_server: ManagedServer, podman: Podman, tmp_path: Path
) -> None:
    host = entrepot_server.host
    image = build_image(tmp_path / "single", seed=13)
    index = build_index(tmp_path / "multi", seed=13)
    clients.push(image.ref, host, "e2e/podman-single", "v1")
    clients.push(index.ref, host, "e2e/podman-multi", "v1", all_images=True)

    ref = f"{host}/e2e/podman-single:v1"
    podman.pull(host, "e2e/podman-single", "v1")
    info = podman.image_inspect(ref)
    amd64_single = image.images["linux/amd64"]
    assert info["Digest"] == image.digest
    assert info["Id"] == amd64_single.config.digest.split(":", 1)[1]
    for path, content in amd64_single.files.items():
        assert podman.read_file(ref, path) == content

    multi_ref = f"{host}/e2e/podman-multi:v1"
    podman.pull(host, "e2e/podman-multi", "v1", platform="linux/amd64")
    info = podman.image_inspect(multi_ref)
    amd64 = index.images["linux/amd64"]
    assert info["Id"] == amd64.config.digest.split(":", 1)[1]
    assert f"{host}/e2e/podman-multi@{amd64.manifest.digest}" in info["RepoDigests"]
    assert f"{host}/e2e/podman-multi@{index.digest}" in info["RepoDigests"]

    # podman push of the pulled image to another repository of the same Entrepot.
    digestfile = tmp_path / "pushed.digest"
    podman(
        "push",
        "--tls-verify=false",
        "--digestfile",
        str(digestfile),
        ref,
        f"docker://{host}/e2e/podman-pushed:copy",
    )
    pushed_digest = digestfile.read_text().strip()
    raw = clients.inspect_raw(host, "e2e/podman-pushed", "copy")
    assert clients.sha256_digest(raw) == pushed_digest
    assert clients.list_tags(host, "e2e/podman-pushed") == ["copy"]
    pushed = json.loads(raw)
    # Same image: the config (and so the image ID) is unchanged, whatever the compression.
    assert pushed["config"]["digest"] == amd64_single.config.digest
    assert len(pushed["layers"]) == len(amd64_single.layers)

    # A fresh podman storage pulls the pushed copy and sees the same files.
    podman("rmi", "--all", "--force")
    copy_ref = f"{host}/e2e/podman-pushed:copy"
    podman.pull(host, "e2e/podman-pushed", "copy")
    info = podman.image_inspect(copy_ref)
    assert info["Digest"] == pushed_digest
    assert info["Id"] == amd64_single.config.digest.split(":", 1)[1]
    for path, content in amd64_single.files.items():
        assert podman.read_file(copy_ref, path) == content


# --- containerd -----------------------------------------------------------------------------


def test_containerd_pulls_single_image_and_index(
    entrepot_server: ManagedServer, ctr: Ctr, tmp_path: Path
) -> None:
    host = entrepot_server.host
    image = build_image(tmp_path / "single", seed=14)
    index = build_index(tmp_path / "multi", seed=14)
    clients.push(image.ref, host, "e2e/ctr-single", "v1")
    clients.push(index.ref, host, "e2e/ctr-multi", "v1", all_images=True)

    ctr.pull(host, "e2e/ctr-single", "v1")
    ctr.pull(host, "e2e/ctr-multi", "v1", all_platforms=True)
    ctr.pull(host, "e2e/ctr-multi", index.digest, platform="linux/amd64")
    pulled = ctr.images()
    single = pulled[f"{host}/e2e/ctr-single:v1"]
    assert (single.digest, single.media_type) == (image.digest, OCI_MANIFEST)
    multi = pulled[f"{host}/e2e/ctr-multi:v1"]
    assert (multi.digest, multi.media_type) == (index.digest, OCI_INDEX)
    by_digest = pulled[f"{host}/e2e/ctr-multi@{index.digest}"]
    assert by_digest.digest == index.digest

    # containerd verified every blob against its digest; with --all-platforms it holds all of
    # them, and the bytes it stored are ours.
    for digest in image.all_digests:
        assert ctr.content(digest) == image.blob(digest), digest
    for digest in index.all_digests:
        assert ctr.content(digest) == index.blob(digest), digest
