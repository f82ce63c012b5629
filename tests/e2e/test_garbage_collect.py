"""``entrepot garbage-collect`` against registry:2's own ``garbage-collect``.

A store is written by Debian's docker-registry (images sharing layers, an overwritten tag, a
deleted manifest, a multi-arch index, an artifact with a ``subject``, a stray blob), once per
storage kind; two copies are collected, one by each command, and the files left are compared.
On S3 (Ceph's radosgw) registry:2 writes and collects with its own s3 driver, the copies are
other rootdirectories of one bucket and the object keys and contents left are compared.

The differences are Entrepot's, on purpose: it also unlinks layer links whose blob it
deleted (registry:2 v3 does; v2.8 leaves them), removes a repository left without manifests,
and with ``--delete-untagged`` keeps a tagged index's children and a tagged image's
referrers (registry:2 deletes them: distribution #3178).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest
import yaml

from tests.cephs3 import CephS3, s3_client

from . import clients
from .images import OCI_MANIFEST, build_image, build_index, canonical_json, sha256_digest
from .servers import (
    REPO_ROOT,
    ManagedServer,
    ServerFactory,
    registry2_binary,
    registry2_server,
    registry_config,
)
from .test_s3_interop import REGISTRY2_ENV, s3_storage

pytestmark = pytest.mark.e2e

V2 = "docker/registry/v2"
EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"


def put_manifest(base_url: str, repo: str, reference: str, doc: dict[str, Any]) -> str:
    raw = canonical_json(doc)
    response = httpx.put(
        f"{base_url}/v2/{repo}/manifests/{reference}",
        content=raw,
        headers={"Content-Type": doc["mediaType"]},
    )
    assert response.status_code == 201, response.text
    return sha256_digest(raw)


def descriptor(media_type: str, data: bytes, digest: str) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


class Store:
    """The scenario pushed to registry:2, with the digests the comparison needs."""

    def __init__(self, server: ManagedServer, tmp: Path) -> None:
        host = server.host
        # Shared layers: the same image in two repositories; then app:v1 is overwritten.
        old = build_image(tmp / "old", seed=1, label="app")
        clients.push(old.ref, host, "team/app", "v1")
        clients.push(old.ref, host, "team/mirror", "v1")
        new = build_image(tmp / "new", seed=2, label="app")
        clients.push(new.ref, host, "team/app", "v1")
        self.old_manifest = old.digest
        self.old_blobs = set(old.images["linux/amd64"].blob_digests)
        # A deleted manifest: its repository is left with no manifest at all.
        gone = build_image(tmp / "gone", seed=3, label="gone")
        clients.push(gone.ref, host, "team/gone", "x")
        clients.delete(host, "team/gone", gone.digest)
        self.gone_blobs = {gone.digest, *gone.images["linux/amd64"].blob_digests}
        # A multi-arch index, tagged; its children are untagged.
        index = build_index(tmp / "multi", seed=4)
        clients.push(index.ref, host, "team/multi", "v1", all_images=True)
        self.children = set(index.manifest_digests.values())
        self.child_blobs = {
            d for image in index.images.values() for d in image.blob_digests
        } - self.children
        # An artifact (a signature) whose subject is the tagged app:v1, pushed by digest.
        config, layer = b"{}", b"signature of app:v1"
        config_digest = clients.upload_blob(server.url, "team/app", config)
        layer_digest = clients.upload_blob(server.url, "team/app", layer)
        subject_raw = clients.inspect_raw(host, "team/app", new.digest)
        artifact = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.signature",
            "config": descriptor(EMPTY_CONFIG, config, config_digest),
            "layers": [descriptor("application/vnd.example.signature", layer, layer_digest)],
            "subject": descriptor(OCI_MANIFEST, subject_raw, new.digest),
        }
        self.artifact = sha256_digest(canonical_json(artifact))
        put_manifest(server.url, "team/app", self.artifact, artifact)
        self.artifact_blobs = {config_digest, layer_digest}
        # A blob uploaded and never referenced.
        self.stray = clients.upload_blob(server.url, "team/app", b"stray bytes")


class Tree(Protocol):
    """Where a registry:2 tree lives, and what its files hold."""

    workdir: Path  # config files go here

    def storage(self) -> dict[str, Any]:
        """registry:2's ``storage`` driver section for it."""
        ...

    def files(self) -> dict[str, bytes]:
        """Every file of registry:2's tree (path under docker/registry/v2 -> content)."""
        ...

    def copy(self, name: str) -> Tree:
        """A copy of the whole tree, named ``name``."""
        ...


class FilesystemTree:
    def __init__(self, root: Path) -> None:
        self.root, self.workdir = root, root.parent

    def storage(self) -> dict[str, Any]:
        return {"filesystem": {"rootdirectory": str(self.root)}}

    def files(self) -> dict[str, bytes]:
        base = self.root / V2  # folders are not files
        return {
            str(path.relative_to(base)): path.read_bytes()
            for path in sorted(base.rglob("*"))
            if path.is_file()
        }

    def copy(self, name: str) -> FilesystemTree:
        shutil.copytree(self.root, self.workdir / name)
        return FilesystemTree(self.workdir / name)


class S3Tree:
    """A rootdirectory in a bucket of the test radosgw."""

    def __init__(self, server: CephS3, bucket: str, rootdirectory: str, workdir: Path) -> None:
        self.server, self.bucket, self.rootdirectory = server, bucket, rootdirectory
        self.workdir = workdir
        self.client = s3_client(server)

    def storage(self) -> dict[str, Any]:
        storage = s3_storage(self.server, self.bucket)
        storage["s3"]["rootdirectory"] = f"/{self.rootdirectory}"
        return storage

    def keys(self, prefix: str) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def files(self) -> dict[str, bytes]:
        base = f"{self.rootdirectory}/{V2}/"
        return {
            key.removeprefix(base): self.client.get_object(Bucket=self.bucket, Key=key)[
                "Body"
            ].read()
            for key in self.keys(base)
        }

    def copy(self, name: str) -> S3Tree:
        copy = f"{self.rootdirectory}-{name}"
        for key in self.keys(f"{self.rootdirectory}/"):
            self.client.copy_object(
                Bucket=self.bucket,
                Key=copy + key.removeprefix(self.rootdirectory),
                CopySource={"Bucket": self.bucket, "Key": key},
            )
        return S3Tree(self.server, self.bucket, copy, self.workdir)


def blob_file(digest: str) -> str:
    algorithm, encoded = digest.split(":")
    return f"blobs/{algorithm}/{encoded[:2]}/{encoded}/data"


def revision_file(repo: str, digest: str) -> str:
    algorithm, encoded = digest.split(":")
    return f"repositories/{repo}/_manifests/revisions/{algorithm}/{encoded}/link"


def write_config(tree: Tree, name: str) -> Path:
    path = tree.workdir / f"{name}-{uuid.uuid4().hex[:8]}.yml"
    config = registry_config(tree.workdir / "unused", 5000, {"storage": tree.storage()})
    path.write_text(yaml.safe_dump(config))
    return path


def registry2_collect(tree: Tree, *extra: str) -> str:
    binary = registry2_binary() or "docker-registry"
    config = write_config(tree, "registry2")
    done = subprocess.run(
        [binary, "garbage-collect", str(config), *extra],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **REGISTRY2_ENV},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def entrepot_collect(tree: Tree, *extra: str) -> str:
    return entrepot_collect_with(write_config(tree, "entrepot"), *extra)


def entrepot_collect_with(config: Path, *extra: str) -> str:
    """``entrepot garbage-collect CONFIG ...``'s output; it must succeed."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-m", "entrepot", "garbage-collect", str(config), *extra],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def dangling_layer_links(left: dict[str, bytes], blobs: dict[str, bytes]) -> set[str]:
    """Layer links in ``left`` to blobs not in ``blobs`` (registry:2 v2.8 leaves them)."""
    return {
        path
        for path, content in left.items()
        if "/_layers/" in path and blob_file(content.decode().strip()) not in blobs
    }


def repositories_without_manifests(left: dict[str, bytes]) -> set[str]:
    """Every file of a repository that has no manifest revision left."""
    by_repo: dict[str, set[str]] = {}
    for path in left:
        if path.startswith("repositories/"):
            repo = path.removeprefix("repositories/").split("/_", 1)[0]
            by_repo.setdefault(repo, set()).add(path)
    return {
        path
        for paths in by_repo.values()
        if not any("/_manifests/revisions/" in p for p in paths)
        for path in paths
    }


@pytest.fixture(scope="module", params=["filesystem", "s3"])
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Store, Tree]]:
    """The scenario, written once per storage kind by registry:2; every test collects copies."""
    workdir = tmp_path_factory.mktemp("gc-store")
    tree: Tree
    if request.param == "s3":
        server: CephS3 = request.getfixturevalue("s3_server")
        bucket: str = request.getfixturevalue("s3_shared_bucket")
        tree = S3Tree(server, bucket, f"gc-{uuid.uuid4().hex[:12]}", workdir)
    else:
        tree = FilesystemTree(workdir / "root")
    registry2 = registry2_server(
        workdir / "root", workdir, config={"storage": tree.storage()}, env=REGISTRY2_ENV
    )
    registry2.start()
    try:
        scenario = Store(registry2, workdir / "images")
    finally:
        registry2.stop()
    yield scenario, tree


def two_copies(tree: Tree) -> tuple[Tree, Tree]:
    return tree.copy(f"registry2-{uuid.uuid4().hex[:8]}"), tree.copy(
        f"entrepot-{uuid.uuid4().hex[:8]}"
    )


def test_collects_what_registry2_collects(store: tuple[Store, Tree]) -> None:
    scenario, tree = store
    before = tree.files()
    theirs, ours = two_copies(tree)
    registry2_collect(theirs)
    output = entrepot_collect(ours, "--grace", "0")

    left_theirs, left_ours = theirs.files(), ours.files()
    assert set(before) - set(left_theirs), "registry:2 collected nothing: the scenario is wrong"
    gone_blobs = {blob_file(d) for d in (*scenario.gone_blobs, scenario.stray)}
    assert gone_blobs <= set(before) - set(left_theirs)
    # Everything registry:2 keeps but dangling layer links and the emptied repository.
    expected = set(left_theirs) - dangling_layer_links(left_theirs, left_theirs)
    expected -= repositories_without_manifests(left_theirs)
    assert set(left_ours) == expected
    assert not any(p.startswith("repositories/team/gone") for p in left_ours)
    assert all(left_ours[p] == left_theirs[p] for p in left_ours)
    assert f"blob eligible for deletion: {scenario.stray}" in output
    assert "deleted 5 blobs" in output  # the stray blob and team/gone's manifest, config, 2 layers


def test_delete_untagged_keeps_tagged_images_whole(store: tuple[Store, Tree]) -> None:
    scenario, tree = store
    theirs, ours = two_copies(tree)
    registry2_collect(theirs, "--delete-untagged")
    entrepot_collect(ours, "--delete-untagged", "--grace", "0")

    left_theirs, left_ours = theirs.files(), ours.files()
    # Both delete the overwritten manifest's link in team/app; its bytes stay (team/mirror
    # still tags it).
    for left in (left_theirs, left_ours):
        assert revision_file("team/app", scenario.old_manifest) not in left
        assert revision_file("team/mirror", scenario.old_manifest) in left
        assert {blob_file(d) for d in scenario.old_blobs} <= set(left)
    # distribution #3178: registry:2 unlinks a tagged index's children and deletes their
    # layers, and deletes the tagged image's signature; Entrepot keeps exactly those.
    kept_whole = {revision_file("team/multi", d) for d in scenario.children}
    kept_whole |= {blob_file(d) for d in scenario.child_blobs}
    kept_whole |= {revision_file("team/app", scenario.artifact), blob_file(scenario.artifact)}
    kept_whole |= {blob_file(d) for d in scenario.artifact_blobs}
    assert not kept_whole & set(left_theirs)
    assert set(left_ours) - set(left_theirs) == kept_whole
    expected_missing = dangling_layer_links(left_theirs, left_ours)
    expected_missing |= repositories_without_manifests(left_theirs)
    assert set(left_theirs) - set(left_ours) == expected_missing
    for digest in scenario.children:
        assert blob_file(digest) in left_theirs  # the index marks the children's bytes


def test_dry_run_changes_nothing(store: tuple[Store, Tree]) -> None:
    scenario, tree = store
    copy = tree.copy(f"dry-run-{uuid.uuid4().hex[:8]}")
    before = copy.files()
    output = entrepot_collect(copy, "--dry-run", "--delete-untagged", "--grace", "0")
    assert copy.files() == before
    assert f"blob eligible for deletion: {scenario.stray}" in output
    assert f"manifest eligible for deletion: team/app@{scenario.old_manifest}" in output
    assert "repository eligible for removal: team/gone" in output
    assert "dry run: nothing deleted" in output


def test_grace_window_keeps_what_was_just_written(store: tuple[Store, Tree]) -> None:
    _, tree = store
    copy = tree.copy(f"grace-{uuid.uuid4().hex[:8]}")
    before = copy.files()
    output = entrepot_collect(copy)  # the default grace, one hour: all of it is fresh
    assert copy.files() == before
    assert "deleted 0 blobs" in output
    assert "5 unmarked blobs kept" in output


def test_emptied_repository_leaves_a_running_servers_catalog(
    entrepot_factory: ServerFactory, tmp_path: Path
) -> None:
    server = entrepot_factory()
    image = build_image(tmp_path / "img", seed=5, label="short-lived")
    clients.push(image.ref, server.host, "team/short", "v1")
    kept = build_image(tmp_path / "kept", seed=6, label="kept")
    clients.push(kept.ref, server.host, "team/kept", "v1")
    catalog = httpx.get(f"{server.url}/v2/_catalog").json()["repositories"]
    assert catalog == ["team/kept", "team/short"]
    clients.delete(server.host, "team/short", image.digest)

    entrepot_collect(FilesystemTree(server.root), "--grace", "0")

    assert httpx.get(f"{server.url}/v2/_catalog").json()["repositories"] == ["team/kept"]
    assert not (server.root / V2 / "repositories/team/short").exists()
    assert clients.inspect_digest(server.host, "team/kept", "v1") == kept.digest
    # Pushed again, it is back.
    clients.push(image.ref, server.host, "team/short", "v1")
    catalog = httpx.get(f"{server.url}/v2/_catalog").json()["repositories"]
    assert catalog == ["team/kept", "team/short"]
    assert json.loads(clients.inspect_raw(server.host, "team/short", "v1"))["layers"]
