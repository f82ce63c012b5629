"""The harness proven against the reference registry:2 (Debian's docker-registry).

These are the baseline peer tests: whatever Entrepot must do with skopeo, podman and containerd,
registry:2 does here with the same images and helpers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from . import clients
from .clients import Ctr, Podman
from .images import (
    OCI_INDEX,
    OCI_MANIFEST,
    assert_layout_holds,
    build_image,
    build_index,
)
from .servers import ManagedServer, ServerFactory

pytestmark = pytest.mark.e2e


def test_single_image_round_trip(registry2: ManagedServer, tmp_path: Path) -> None:
    image = build_image(tmp_path / "src", seed=1)
    clients.push(image.ref, registry2.host, "e2e/single", "v1")

    raw = clients.inspect_raw(registry2.host, "e2e/single", "v1")
    assert clients.sha256_digest(raw) == image.digest
    assert raw == image.blob(image.digest)
    assert json.loads(raw)["mediaType"] == OCI_MANIFEST
    assert clients.inspect_digest(registry2.host, "e2e/single", image.digest) == image.digest
    assert clients.list_tags(registry2.host, "e2e/single") == ["v1"]

    back = tmp_path / "back"
    clients.pull_to_layout(registry2.host, "e2e/single", "v1", back, dest_tag="v1")
    assert_layout_holds(back, "v1", image)


def test_multiarch_index_round_trip(registry2: ManagedServer, tmp_path: Path) -> None:
    index = build_index(tmp_path / "src", seed=2)
    assert set(index.manifest_digests) == {"linux/amd64", "linux/arm64"}
    clients.push(index.ref, registry2.host, "e2e/multi", "v1", all_images=True)

    raw = clients.inspect_raw(registry2.host, "e2e/multi", "v1")
    assert clients.sha256_digest(raw) == index.digest
    assert json.loads(raw)["mediaType"] == OCI_INDEX
    for digest in index.manifest_digests.values():
        assert clients.inspect_digest(registry2.host, "e2e/multi", digest) == digest

    back = tmp_path / "back"
    clients.pull_to_layout(registry2.host, "e2e/multi", "v1", back, dest_tag="v1", all_images=True)
    assert_layout_holds(back, "v1", index)


def test_storage_root_survives_a_new_server(
    registry2_factory: ServerFactory, tmp_path: Path
) -> None:
    """A second registry:2 started on the first one's root serves what was pushed to the first."""
    index = build_index(tmp_path / "src", seed=3)
    first = registry2_factory()
    clients.push(index.ref, first.host, "e2e/kept", "v1", all_images=True)
    first.stop()

    second = registry2_factory(first.root)
    assert second.root == first.root
    assert clients.inspect_digest(second.host, "e2e/kept", "v1") == index.digest
    back = tmp_path / "back"
    clients.pull_to_layout(second.host, "e2e/kept", "v1", back, all_images=True)
    assert_layout_holds(back, "latest", index)


def test_podman_pulls_and_unpacks(registry2: ManagedServer, podman: Podman, tmp_path: Path) -> None:
    image = build_image(tmp_path / "single", seed=4)
    index = build_index(tmp_path / "multi", seed=4)
    clients.push(image.ref, registry2.host, "e2e/podman-single", "v1")
    clients.push(index.ref, registry2.host, "e2e/podman-multi", "v1", all_images=True)

    ref = f"{registry2.host}/e2e/podman-single:v1"
    podman.pull(registry2.host, "e2e/podman-single", "v1")
    info = podman.image_inspect(ref)
    assert info["Digest"] == image.digest
    assert info["Id"] == image.images["linux/amd64"].config.digest.split(":", 1)[1]
    for path, content in image.images["linux/amd64"].files.items():
        assert podman.read_file(ref, path) == content

    multi_ref = f"{registry2.host}/e2e/podman-multi:v1"
    podman.pull(registry2.host, "e2e/podman-multi", "v1", platform="linux/amd64")
    info = podman.image_inspect(multi_ref)
    amd64 = index.images["linux/amd64"]
    assert info["Id"] == amd64.config.digest.split(":", 1)[1]
    assert f"{registry2.host}/e2e/podman-multi@{amd64.manifest.digest}" in info["RepoDigests"]
    assert f"{registry2.host}/e2e/podman-multi@{index.digest}" in info["RepoDigests"]


def test_containerd_pulls_and_unpacks(registry2: ManagedServer, ctr: Ctr, tmp_path: Path) -> None:
    image = build_image(tmp_path / "single", seed=5)
    index = build_index(tmp_path / "multi", seed=5)
    clients.push(image.ref, registry2.host, "e2e/ctr-single", "v1")
    clients.push(index.ref, registry2.host, "e2e/ctr-multi", "v1", all_images=True)

    ctr.pull(registry2.host, "e2e/ctr-single", "v1")
    ctr.pull(registry2.host, "e2e/ctr-multi", "v1", platform="linux/amd64")
    pulled = ctr.images()
    single = pulled[f"{registry2.host}/e2e/ctr-single:v1"]
    assert (single.digest, single.media_type) == (image.digest, OCI_MANIFEST)
    multi = pulled[f"{registry2.host}/e2e/ctr-multi:v1"]
    assert (multi.digest, multi.media_type) == (index.digest, OCI_INDEX)
    # containerd verified every blob against its digest; the bytes it stored are ours.
    assert ctr.content(index.digest) == index.blob(index.digest)
    amd64 = index.images["linux/amd64"]
    assert ctr.content(amd64.manifest.digest) == index.blob(amd64.manifest.digest)
    # Unpacked: one committed snapshot per layer of each image pulled for this platform.
    snapshots = ctr("snapshots", "--snapshotter", ctr.snapshotter, "ls").stdout
    expected = len(image.images["linux/amd64"].layers) + len(amd64.layers)
    assert snapshots.count("Committed") == expected
