"""Garbage collection while serving: the server's scheduled collection (on a filesystem and
on S3, two workers sharing the lease), pushes and pulls under a collection every few
seconds, and retention rules applied by ``entrepot garbage-collect``."""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.cephs3 import CephS3

from . import clients
from .images import build_image
from .servers import ManagedServer, ServerFactory, registry_config
from .test_garbage_collect import entrepot_collect_with
from .test_s3_interop import s3_storage

pytestmark = pytest.mark.e2e

V2 = "docker/registry/v2"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DEADLINE = 90.0


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def wait_for(condition: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def catalog(server: ManagedServer) -> list[str]:
    return sorted(httpx.get(f"{server.url}/v2/_catalog").json()["repositories"])


def blob_status(server: ManagedServer, repo: str, digest: str) -> int:
    return httpx.head(f"{server.url}/v2/{repo}/blobs/{digest}").status_code


def metric(server: ManagedServer, name: str, labels: str = "") -> float:
    text = httpx.get(f"{server.url}/metrics").text
    for line in text.splitlines():
        if line.startswith(f"{name}{labels} ") or line.startswith(f"{name}{{{labels}}} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# ---- an OCI client over HTTP (many at once, cheaper than one skopeo process each) -------


@dataclass(frozen=True)
class Pushed:
    repo: str
    tag: str
    digest: str
    blobs: tuple[str, ...]  # config and layers


def upload(http: httpx.Client, repo: str, data: bytes) -> str:
    digest = sha256(data)
    if http.head(f"/v2/{repo}/blobs/{digest}").status_code == 200:
        return digest
    started = http.post(f"/v2/{repo}/blobs/uploads/")
    assert started.status_code == 202, started.text
    location = started.headers["location"]
    separator = "&" if "?" in location else "?"
    done = http.put(f"{location}{separator}digest={digest}", content=data)
    assert done.status_code == 201, done.text
    return digest


def push_image(http: httpx.Client, repo: str, tag: str, layers: list[bytes]) -> Pushed:
    """Upload the layers and a config, then the manifest; retried as a client does when a
    blob was collected between its upload and the manifest (MANIFEST_BLOB_UNKNOWN)."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "tag": tag}).encode()
    for _ in range(5):
        digests = [upload(http, repo, data) for data in (config, *layers)]
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digests[0],
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": d,
                    "size": len(data),
                }
                for d, data in zip(digests[1:], layers, strict=True)
            ],
        }
        raw = json.dumps(manifest).encode()
        put = http.put(
            f"/v2/{repo}/manifests/{tag}", content=raw, headers={"Content-Type": OCI_MANIFEST}
        )
        if put.status_code == 201:
            return Pushed(repo, tag, sha256(raw), tuple(digests))
        assert "MANIFEST_BLOB_UNKNOWN" in put.text, put.text
    raise AssertionError(f"push of {repo}:{tag} kept failing")


def pull_image(http: httpx.Client, image: Pushed) -> list[str]:
    """Pull ``image`` by tag: what was wrong (empty when all is well)."""
    response = http.get(f"/v2/{image.repo}/manifests/{image.tag}", headers={"Accept": OCI_MANIFEST})
    if response.status_code != 200:
        return [f"{image.repo}:{image.tag}: manifest {response.status_code}"]
    problems = []
    if sha256(response.content) != image.digest:
        problems.append(f"{image.repo}:{image.tag}: digest {sha256(response.content)}")
    for digest in image.blobs:
        blob = http.get(f"/v2/{image.repo}/blobs/{digest}", follow_redirects=True)
        if blob.status_code != 200 or sha256(blob.content) != digest:
            problems.append(f"{image.repo}:{image.tag}: blob {digest} {blob.status_code}")
    return problems


def stored_blobs(root: Path) -> set[str]:
    base = root / V2 / "blobs" / "sha256"
    return {f"sha256:{p.parent.name}" for p in base.glob("*/*/data")}


# ---- scheduled collection -----------------------------------------------------------------


def scheduled_config(grace: str = "3s", interval: str = "2s") -> dict[str, Any]:
    return {"garbagecollect": {"interval": interval, "grace": grace}}


def check_scheduled_collection(server: ManagedServer) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        kept = push_image(http, "team/kept", "v1", [b"kept layer"])
        short = push_image(http, "team/short", "v1", [b"short-lived layer"])
        stray = upload(http, "team/kept", b"a blob no manifest references")
        assert catalog(server) == ["team/kept", "team/short"]
        deleted = http.delete(f"/v2/team/short/manifests/{short.digest}")
        assert deleted.status_code == 202, deleted.text

        wait_for(lambda: catalog(server) == ["team/kept"], "team/short to leave the catalog")
        wait_for(lambda: blob_status(server, "team/kept", stray) == 404, "the stray blob to go")
        assert pull_image(http, kept) == []
    assert metric(server, "entrepot_gc_runs_total", 'outcome="done"') >= 1
    assert metric(server, "entrepot_gc_deleted_total", 'kind="blob"') >= 1
    assert metric(server, "entrepot_gc_freed_bytes_total") >= len(b"short-lived layer")
    wait_for(lambda: "garbage collection: deleted" in server.log(), "the summary line")


def test_scheduled_collection_on_a_filesystem(entrepot_factory: ServerFactory) -> None:
    server = entrepot_factory(config=scheduled_config(), env={"ENTREPOT_WORKERS": "2"})
    check_scheduled_collection(server)
    assert not (server.root / V2 / "repositories/team/short").exists()


def test_scheduled_collection_on_s3(
    s3_server: CephS3, s3_bucket: Callable[[], str], entrepot_factory: ServerFactory
) -> None:
    config = {"storage": s3_storage(s3_server, s3_bucket()), **scheduled_config()}
    server = entrepot_factory(config=config, env={"ENTREPOT_WORKERS": "2"})
    check_scheduled_collection(server)


# ---- pushes and pulls while collecting ------------------------------------------------------

LOAD_SECONDS = 60.0  # the minute
SHARED_LAYER = b"a base layer every image shares" * 100


def test_pushes_and_pulls_while_collecting_every_few_seconds(
    entrepot_factory: ServerFactory,
) -> None:
    """8 clients push and 8 pull for a minute while a collection runs every 2 s: afterwards
    every pushed image pulls by tag with its digest, and every blob nothing references (the
    deleted images' own blobs and the stray uploads) is gone from the disk."""
    server = entrepot_factory(
        config=scheduled_config(grace="3s", interval="2s"), env={"ENTREPOT_WORKERS": "2"}
    )
    kept: list[Pushed] = []
    garbage: set[str] = set()  # deleted manifests, their own blobs, blobs never referenced
    problems: list[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + LOAD_SECONDS

    def pusher(n: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            i = 0
            while time.monotonic() < stop:
                repo = f"load/p{n}"
                layer = os.urandom(2048 + i)
                image = push_image(http, repo, f"t{i}", [SHARED_LAYER, layer])
                if i % 3 == 2:  # garbage: a deleted image, and a blob nothing references
                    assert http.delete(f"/v2/{repo}/manifests/{image.digest}").status_code == 202
                    stray = upload(http, repo, os.urandom(512))
                    config, _shared, own_layer = image.blobs
                    with lock:
                        garbage.update((image.digest, config, own_layer, stray))
                else:
                    with lock:
                        kept.append(image)
                i += 1

    def puller(n: int) -> None:
        rng = random.Random(n)
        with httpx.Client(base_url=server.url, timeout=60) as http:
            while time.monotonic() < stop:
                with lock:
                    image = rng.choice(kept) if kept else None
                if image is None:
                    time.sleep(0.1)
                    continue
                found = pull_image(http, image)
                with lock:
                    problems.extend(found)

    threads = [threading.Thread(target=pusher, args=(n,)) for n in range(8)]
    threads += [threading.Thread(target=puller, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=LOAD_SECONDS + 120)
    assert not any(t.is_alive() for t in threads)
    assert problems == []
    assert len(kept) >= 16 and len(garbage) >= 16
    runs_during_load = metric(server, "entrepot_gc_runs_total", 'outcome="done"')
    assert runs_during_load >= 3

    # Every unreferenced blob is gone, and nothing else.
    referenced = {d for image in kept for d in (image.digest, *image.blobs)}
    assert not referenced & garbage
    wait_for(
        lambda: stored_blobs(server.root) == referenced,
        "every unreferenced blob to be collected",
    )
    assert not stored_blobs(server.root) & garbage
    # Every pushed image pulls, by tag, with the digest it was pushed with.
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for image in kept:
            assert pull_image(http, image) == []


# ---- retention rules by the command ---------------------------------------------------------


def write_config(path: Path, root: Path, extra: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(registry_config(root, 5000, extra)))
    return path


def test_retention_rules_dry_run_then_real_run(
    entrepot_factory: ServerFactory, tmp_path: Path
) -> None:
    retention = {
        "garbagecollect": {
            "retention": [
                {"repositories": ["team/*"], "tags": ["v*"], "keeplatest": 1},
                {"repositories": ["team/app"], "tags": ["v*"], "keeppulledwithin": "1h"},
            ]
        }
    }
    server = entrepot_factory(config=retention)
    images = {}
    for n, tag in enumerate(("v1", "v2", "v3", "stable")):
        images[tag] = build_image(tmp_path / tag, seed=40 + n, label=tag)
        clients.push(images[tag].ref, server.host, "team/app", tag)
    # A pull by tag keeps v1; v2 is neither the newest nor pulled.
    assert clients.inspect_digest(server.host, "team/app", "v1") == images["v1"].digest
    server.stop()  # the pull is recorded when the server stops, at the latest
    config = write_config(tmp_path / "gc.yml", server.root, retention)

    planned = entrepot_collect_with(config, "--dry-run", "--grace", "0")
    assert "tag eligible for deletion: team/app:v2" in planned
    assert "tag eligible for deletion: team/app:v1" not in planned
    assert f"manifest eligible for deletion: team/app@{images['v2'].digest}" in planned
    assert "tag eligible for deletion: team/app:stable" not in planned

    server.start()
    assert clients.list_tags(server.host, "team/app") == ["stable", "v1", "v2", "v3"]
    done = entrepot_collect_with(config, "--grace", "0")
    assert "1 tags" in done
    assert clients.list_tags(server.host, "team/app") == ["stable", "v1", "v3"]
    for tag in ("stable", "v1", "v3"):
        assert clients.inspect_digest(server.host, "team/app", tag) == images[tag].digest
    status = httpx.get(f"{server.url}/v2/team/app/manifests/{images['v2'].digest}").status_code
    assert status == 404
