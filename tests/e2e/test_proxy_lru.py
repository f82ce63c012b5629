"""The cache keeps what is pulled, end to end with registry:2 as the upstream: beyond
proxycache.maxsize the least recently pulled image is evicted (tag, manifest and blobs),
a pull by digest keeps the tagged image, a blob shared with a pushed image stays, an
upstream's ttl expires images not pulled, and an evicted image is fetched again."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from . import clients
from .servers import ManagedServer, ServerFactory, blob_gets, requests_to, settled_access_log

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CACHE = "quay.io"


@dataclass(frozen=True)
class Image:
    repo: str  # as the upstream knows it
    digest: str
    layers: tuple[str, ...]

    def cached_tag_link(self, root: Path) -> Path:
        return (
            root
            / f"docker/registry/v2/repositories/{CACHE}/{self.repo}/_manifests/tags/1/current/link"
        )


def _push(base_url: str, repo: str, layers: list[bytes]) -> Image:
    """An image tagged ``1``: a config and ``layers``, pushed with the registry API."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "repo": repo}).encode()
    config_digest = clients.upload_blob(base_url, repo, config)
    digests = [clients.upload_blob(base_url, repo, data) for data in layers]
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": d,
                    "size": len(data),
                }
                for d, data in zip(digests, layers, strict=True)
            ],
        }
    ).encode()
    put = httpx.put(
        f"{base_url}/v2/{repo}/manifests/1",
        content=manifest,
        headers={"Content-Type": OCI_MANIFEST},
        timeout=30,
    )
    assert put.status_code == 201, put.text
    return Image(repo, clients.sha256_digest(manifest), (config_digest, *digests))


def _pull(http: httpx.Client, image: Image, reference: str = "1") -> None:
    """Pull through the cache as a client does: the manifest, then every blob, verified."""
    got = http.get(
        f"/v2/{CACHE}/{image.repo}/manifests/{reference}", headers={"Accept": OCI_MANIFEST}
    )
    assert got.status_code == 200, got.text
    assert clients.sha256_digest(got.content) == image.digest
    for digest in image.layers:
        blob = http.get(f"/v2/{CACHE}/{image.repo}/blobs/{digest}")
        assert blob.status_code == 200, blob.text
        assert clients.sha256_digest(blob.content) == digest


def _held(root: Path, digest: str) -> bool:
    algorithm, encoded = digest.split(":")
    return (root / "docker/registry/v2/blobs" / algorithm / encoded[:2] / encoded / "data").exists()


def _wait_until(predicate: Callable[[], bool], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _manifest_gets(upstream: ManagedServer, image: Image) -> int:
    return len(
        requests_to(upstream, "GET", f"/v2/{image.repo}/manifests/1")
        + requests_to(upstream, "GET", f"/v2/{image.repo}/manifests/{image.digest}")
    )


def _cache(
    entrepot_factory: ServerFactory, upstream: ManagedServer, **extra: object
) -> ManagedServer:
    proxy: dict[str, object] = {"host": CACHE, "remoteurl": upstream.url, **extra}
    return entrepot_factory(
        config={
            "proxies": [proxy],
            # About two of these 1 MiB images: the third pulled makes room.
            "proxycache": {"maxsize": "2.5MiB", "sweepinterval": "300ms"},
        }
    )


def test_the_least_recently_pulled_image_is_evicted_and_fetched_again(
    registry2_factory: ServerFactory, entrepot_factory: ServerFactory
) -> None:
    upstream = registry2_factory()
    shared = os.urandom(MIB // 4)
    a = _push(upstream.url, "org/a", [os.urandom(MIB)])
    b = _push(upstream.url, "org/b", [os.urandom(MIB), shared])
    c = _push(upstream.url, "org/c", [os.urandom(MIB)])
    entrepot = _cache(entrepot_factory, upstream)
    root = entrepot.root
    # A pushed image with one of B's layers: that blob must outlive B's eviction.
    pushed = _push(entrepot.url, "team/app", [shared])

    with httpx.Client(base_url=entrepot.url, timeout=60) as http:
        _pull(http, a)
        _pull(http, b)
        _pull(http, a)  # A is now more recently pulled than B, though cached before it
        _pull(http, c)
        assert _wait_until(lambda: not b.cached_tag_link(root).exists()), "B was not evicted"
        assert a.cached_tag_link(root).exists() and c.cached_tag_link(root).exists()
        assert _wait_until(lambda: not _held(root, b.layers[1]))  # B's own layer goes too
        assert _held(root, pushed.layers[1])  # the layer the pushed image shares stayed

        settled_access_log(upstream)
        gets_before = {image: _manifest_gets(upstream, image) for image in (a, b)}
        _pull(http, a)  # still cached: nothing asked of the upstream
        _pull(http, b)  # evicted: fetched again, transparently
        pulled = httpx.get(f"{entrepot.url}/v2/team/app/blobs/{pushed.layers[1]}", timeout=30)
        assert clients.sha256_digest(pulled.content) == pushed.layers[1]

    settled_access_log(upstream)
    assert _manifest_gets(upstream, a) == gets_before[a] == 1
    assert all(len(blob_gets(upstream, a.repo, d)) == 1 for d in a.layers)
    assert _manifest_gets(upstream, b) == gets_before[b] + 1 == 2
    own_layer = b.layers[1]
    assert len(blob_gets(upstream, b.repo, own_layer)) == 2  # evicted, then fetched again
    # The layer shared with the pushed image is held for it: B linked it, never downloaded it.
    assert len(blob_gets(upstream, b.repo, pushed.layers[1])) == 0


def test_a_pull_by_digest_keeps_the_image_its_tag_names(
    registry2_factory: ServerFactory, entrepot_factory: ServerFactory
) -> None:
    upstream = registry2_factory()
    a, b, c = (_push(upstream.url, f"org/{n}", [os.urandom(MIB)]) for n in "abc")
    entrepot = _cache(entrepot_factory, upstream)
    root = entrepot.root

    with httpx.Client(base_url=entrepot.url, timeout=60) as http:
        _pull(http, a)  # by tag
        _pull(http, b)
        _pull(http, a, a.digest)  # by digest (as containerd and kubelet pull): A, tag and all
        _pull(http, c)
        assert _wait_until(lambda: not b.cached_tag_link(root).exists()), "B was not evicted"
        assert a.cached_tag_link(root).exists()
        _pull(http, a)

    settled_access_log(upstream)
    assert _manifest_gets(upstream, a) == 1


def test_images_not_pulled_within_the_upstreams_ttl_expire(
    registry2_factory: ServerFactory, entrepot_factory: ServerFactory
) -> None:
    upstream = registry2_factory()
    old = _push(upstream.url, "org/old", [os.urandom(1000)])
    used = _push(upstream.url, "org/used", [os.urandom(1000)])
    entrepot = entrepot_factory(
        config={
            "proxies": [{"host": CACHE, "remoteurl": upstream.url, "ttl": "3s"}],
            "proxycache": {"sweepinterval": "300ms"},  # no maxsize: the ttl alone
        }
    )
    root = entrepot.root

    with httpx.Client(base_url=entrepot.url, timeout=60) as http:
        _pull(http, old)
        _pull(http, used)

        def old_expired() -> bool:
            _pull(http, used)  # kept in use
            time.sleep(0.3)
            return not old.cached_tag_link(root).exists()

        assert _wait_until(old_expired), "the image not pulled did not expire"
        assert used.cached_tag_link(root).exists()
        # Its tag goes first, then its blobs (never a tag without its blobs).
        assert _wait_until(lambda: not any(_held(root, digest) for digest in old.layers))
        _pull(http, old)  # fetched again

    settled_access_log(upstream)
    assert _manifest_gets(upstream, old) == 2
    assert _manifest_gets(upstream, used) == 1
