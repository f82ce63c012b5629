"""Storage layout compatibility with registry:2, both ways, on the very same root directory.

Entrepot keeps registry:2's on-disk layout exactly, so an operator can swap one for the other
without migrating data: what one server wrote, the other serves with identical digests, tags and
catalog.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from . import clients
from .images import (
    OCI_INDEX,
    OCI_MANIFEST,
    ImageLayout,
    assert_layout_holds,
    build_image,
    build_index,
)
from .servers import ManagedServer, ServerFactory

pytestmark = pytest.mark.e2e

MANIFEST_ACCEPT = ", ".join(
    [
        OCI_MANIFEST,
        OCI_INDEX,
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)


def _blob_store_problems(root: Path) -> list[str]:
    """Every blob under the root whose content does not hash to its directory name."""
    problems = []
    for data in sorted((root / "docker/registry/v2/blobs/sha256").glob("*/*/data")):
        actual = hashlib.sha256(data.read_bytes()).hexdigest()
        if actual != data.parent.name:
            problems.append(f"{data}: content hashes to {actual}")
    return problems


def _get_json(server: ManagedServer, path: str) -> Any:
    response = httpx.get(f"{server.url}{path}")
    assert response.status_code == 200, f"GET {path} on {server.name}: {response.text}"
    return response.json()


def _listing(server: ManagedServer, repos: list[str]) -> dict[str, Any]:
    """What a client can list: the catalog and every repository's tags (sorted)."""
    out: dict[str, Any] = {"_catalog": sorted(_get_json(server, "/v2/_catalog")["repositories"])}
    for repo in repos:
        out[repo] = sorted(_get_json(server, f"/v2/{repo}/tags/list")["tags"] or [])
    return out


def _manifest_status(server: ManagedServer, repo: str, reference: str) -> int:
    response = httpx.get(
        f"{server.url}/v2/{repo}/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT}
    )
    return response.status_code


def _push_fixture_set(host: str, tmp_path: Path) -> dict[tuple[str, str], ImageLayout]:
    """Two repositories, a single image and an index, some under two tags: (repo, tag) -> what."""
    image = build_image(tmp_path / "single", seed=21)
    index = build_index(tmp_path / "multi", seed=21)
    pushed = {
        ("e2e/compat/single", "v1"): image,
        ("e2e/compat/single", "latest"): image,
        ("e2e/compat/multi", "v1"): index,
        ("e2e/compat/multi", "stable"): index,
    }
    for (repo, tag), what in pushed.items():
        clients.push(what.ref, host, repo, tag, all_images=what.is_index)
    return pushed


def _assert_serves(
    server: ManagedServer, pushed: dict[tuple[str, str], ImageLayout], tmp_path: Path
) -> None:
    """`server` serves every pushed (repo, tag) with identical digests, bytes and blobs."""
    for n, ((repo, tag), what) in enumerate(pushed.items()):
        raw = clients.inspect_raw(server.host, repo, tag)
        assert raw == what.blob(what.digest), f"{repo}:{tag} on {server.name}"
        for digest in what.manifest_digests.values():
            assert clients.inspect_digest(server.host, repo, digest) == digest
        back = tmp_path / f"back-{server.name.replace(':', '')}-{n}"  # no ":" in oci: refs
        clients.pull_to_layout(server.host, repo, tag, back, dest_tag=tag, all_images=True)
        assert_layout_holds(back, tag, what)


def test_entrepot_serves_what_registry2_wrote(
    registry2_factory: ServerFactory, entrepot_factory: ServerFactory, tmp_path: Path
) -> None:
    registry2 = registry2_factory()
    pushed = _push_fixture_set(registry2.host, tmp_path)
    repos = sorted({repo for repo, _ in pushed})
    # A deletion done by registry:2 must stay deleted for Entrepot.
    gone = build_image(tmp_path / "gone", seed=22, label="gone")
    clients.push(gone.ref, registry2.host, "e2e/compat/single", "gone")
    clients.delete(registry2.host, "e2e/compat/single", "gone")
    expected_listing = _listing(registry2, repos)
    assert expected_listing["_catalog"] == repos
    assert expected_listing["e2e/compat/single"] == ["latest", "v1"]
    registry2.stop()

    entrepot = entrepot_factory(registry2.root)
    assert _listing(entrepot, repos) == expected_listing
    _assert_serves(entrepot, pushed, tmp_path)
    assert _manifest_status(entrepot, "e2e/compat/single", "gone") == 404
    assert _manifest_status(entrepot, "e2e/compat/single", gone.digest) == 404
    assert _blob_store_problems(entrepot.root) == []

    # Entrepot keeps working on that root: push more, and registry:2 sees it in turn.
    extra = build_image(tmp_path / "extra", seed=23, label="extra")
    clients.push(extra.ref, entrepot.host, "e2e/compat/single", "v2")
    entrepot.stop()
    again = registry2_factory(registry2.root)
    assert clients.inspect_digest(again.host, "e2e/compat/single", "v2") == extra.digest
    assert (
        clients.inspect_digest(again.host, "e2e/compat/single", "v1")
        == pushed[("e2e/compat/single", "v1")].digest
    )


def test_registry2_serves_what_entrepot_wrote(
    registry2_factory: ServerFactory, entrepot_factory: ServerFactory, tmp_path: Path
) -> None:
    entrepot = entrepot_factory()
    pushed = _push_fixture_set(entrepot.host, tmp_path)
    repos = sorted({repo for repo, _ in pushed})
    # A deletion done by Entrepot must stay deleted for registry:2.
    gone = build_image(tmp_path / "gone", seed=24, label="gone")
    clients.push(gone.ref, entrepot.host, "e2e/compat/single", "gone")
    clients.delete(entrepot.host, "e2e/compat/single", "gone")
    expected_listing = _listing(entrepot, repos)
    assert expected_listing["_catalog"] == repos
    assert expected_listing["e2e/compat/single"] == ["latest", "v1"]
    assert expected_listing["e2e/compat/multi"] == ["stable", "v1"]
    assert _blob_store_problems(entrepot.root) == []
    entrepot.stop()

    registry2 = registry2_factory(entrepot.root)
    assert _listing(registry2, repos) == expected_listing
    _assert_serves(registry2, pushed, tmp_path)
    assert _manifest_status(registry2, "e2e/compat/single", "gone") == 404
    assert _manifest_status(registry2, "e2e/compat/single", gone.digest) == 404

    # registry:2 keeps working on that root too (it can add tags and blobs beside Entrepot's).
    extra = build_image(tmp_path / "extra", seed=25, label="extra")
    clients.push(extra.ref, registry2.host, "e2e/compat/single", "v2")
    assert clients.inspect_digest(registry2.host, "e2e/compat/single", "v2") == extra.digest


def _store_files(root: Path) -> dict[str, str | int]:
    """Every file of the store: a link by its content, any other file by its size."""
    base = root / "docker/registry/v2"
    return {
        str(path.relative_to(base)): (
            path.read_text() if path.name == "link" else path.stat().st_size
        )
        for path in sorted(base.rglob("*"))
        if path.is_file()
    }


def test_same_pushes_write_the_same_files(
    registry2: ManagedServer, entrepot_server: ManagedServer, tmp_path: Path
) -> None:
    """The same client session against each server leaves the very same files and links."""
    image = build_image(tmp_path / "single", seed=26)
    index = build_index(tmp_path / "multi", seed=26)
    gone = build_image(tmp_path / "gone", seed=27, label="gone")
    for server in (registry2, entrepot_server):
        clients.push(image.ref, server.host, "e2e/tree/single", "v1")
        clients.push(image.ref, server.host, "e2e/tree/single", "latest")
        clients.push(index.ref, server.host, "e2e/tree/multi", "v1", all_images=True)
        clients.push(gone.ref, server.host, "e2e/tree/single", "gone")
        clients.delete(server.host, "e2e/tree/single", "gone")
    expected = _store_files(registry2.root)
    assert any("/_manifests/tags/v1/index/sha256/" in key for key in expected)
    assert _store_files(entrepot_server.root) == expected


def _upload_blob(server: ManagedServer, repo: str, data: bytes) -> None:
    """POST + monolithic PUT: the two-request upload every registry:2 version takes."""
    with httpx.Client(base_url=server.url) as http:
        started = http.post(f"/v2/{repo}/blobs/uploads/")
        assert started.status_code == 202, started.text
        location = started.headers["location"]
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        separator = "&" if "?" in location else "?"
        done = http.put(f"{location}{separator}digest={digest}", content=data)
        assert done.status_code == 201, done.text


def test_catalog_is_the_same_whichever_server_reads_the_root(
    registry2_factory: ServerFactory, entrepot_factory: ServerFactory, tmp_path: Path
) -> None:
    """Repositories with an image, with only a blob, and with only an abandoned upload."""
    registry2 = registry2_factory()
    image = build_image(tmp_path / "single", seed=28)
    clients.push(image.ref, registry2.host, "e2e/catalog/image", "v1")
    _upload_blob(registry2, "e2e/catalog/blob-only", b"a blob and nothing else")
    abandoned = httpx.post(f"{registry2.url}/v2/e2e/catalog/upload-only/blobs/uploads/")
    assert abandoned.status_code == 202
    expected = _get_json(registry2, "/v2/_catalog")
    assert expected == {"repositories": ["e2e/catalog/blob-only", "e2e/catalog/image"]}
    registry2.stop()

    entrepot = entrepot_factory(registry2.root)
    assert _get_json(entrepot, "/v2/_catalog") == expected
