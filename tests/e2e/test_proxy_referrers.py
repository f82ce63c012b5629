"""Signatures through the cache: a cosign-style signature (an artifact manifest whose
``subject`` is a cached image) pushed to the upstream is listed by the cache's referrers
endpoint, pulls through the cache with the right digests, and stays listed while the
upstream is down.

Two upstreams: a second Entrepot, which has the referrers API, and Debian's registry:2
(2.8), which has none, so the cache reads the Referrers Tag Schema (the ``sha256-<hex>``
tag holding an index) that cosign, notation and oras write there. Cosign's older
``sha256-<hex>.sig`` tag is pulled as a tag.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from . import clients
from .images import OCI_INDEX, OCI_MANIFEST, build_image, canonical_json
from .servers import ManagedServer, ServerFactory

pytestmark = pytest.mark.e2e

UPSTREAM = "upstream.test"
REPO = "app/signed"
EMPTY = b"{}"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
SIG_TYPE = "application/vnd.dev.cosign.artifact.sig.v1+json"
SIG_LAYER_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
TTL = 1.0  # the cache's tagttl, seconds: the referrers answer is asked again after it


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _upload(http: httpx.Client, repo: str, data: bytes) -> dict[str, Any]:
    """A monolithic blob upload (POST, then PUT with the digest); its descriptor."""
    started = http.post(f"/v2/{repo}/blobs/uploads/")
    assert started.status_code == 202, started.text
    location = started.headers["location"]
    separator = "&" if "?" in location else "?"
    done = http.put(f"{location}{separator}digest={_digest(data)}", content=data)
    assert done.status_code == 201, done.text
    return {"digest": _digest(data), "size": len(data)}


def _put_manifest(http: httpx.Client, repo: str, reference: str, raw: bytes, media: str) -> None:
    response = http.put(
        f"/v2/{repo}/manifests/{reference}", content=raw, headers={"Content-Type": media}
    )
    assert response.status_code == 201, response.text


def _sign(
    upstream: ManagedServer, subject: str, subject_size: int, *, tag_schema: bool
) -> dict[str, Any]:
    """Push a cosign-style signature of ``subject`` to the upstream; with ``tag_schema``
    also the index under the ``sha256-<hex>`` tag, as clients write on a registry without
    the referrers API. Returns the signature's descriptor and blob."""
    payload = json.dumps(
        {"critical": {"image": {"docker-manifest-digest": subject}}, "optional": None}
    ).encode()
    with httpx.Client(base_url=upstream.url, timeout=30) as http:
        config = _upload(http, REPO, EMPTY)
        layer = _upload(http, REPO, payload)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": SIG_TYPE,
            "config": {"mediaType": EMPTY_TYPE, **config},
            "layers": [
                {
                    "mediaType": SIG_LAYER_TYPE,
                    **layer,
                    "annotations": {"dev.cosignproject.cosign/signature": "MEUCIQ-test"},
                }
            ],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": subject_size},
        }
        raw = canonical_json(manifest)
        digest = _digest(raw)
        _put_manifest(http, REPO, digest, raw, OCI_MANIFEST)
        descriptor = {
            "mediaType": OCI_MANIFEST,
            "digest": digest,
            "size": len(raw),
            "artifactType": SIG_TYPE,
        }
        if tag_schema:
            index = canonical_json(
                {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [descriptor]}
            )
            _put_manifest(http, REPO, subject.replace(":", "-"), index, OCI_INDEX)
            # Cosign's own tag-schema signature: the same manifest under <alg>-<hex>.sig.
            _put_manifest(http, REPO, subject.replace(":", "-") + ".sig", raw, OCI_MANIFEST)
    return {"descriptor": descriptor, "payload": payload}


def _referrers(cache: ManagedServer, subject: str, **params: str) -> httpx.Response:
    return httpx.get(
        f"{cache.url}/v2/{UPSTREAM}/{REPO}/referrers/{subject}", params=params, timeout=30
    )


@pytest.fixture(params=["referrers-api", "tag-schema"])
def upstream(
    request: pytest.FixtureRequest,
    entrepot_factory: ServerFactory,
    registry2_factory: ServerFactory,
) -> ManagedServer:
    if request.param == "referrers-api":
        return entrepot_factory()
    return registry2_factory()


def test_a_signature_pushed_upstream_is_listed_and_pulled_through_the_cache(
    upstream: ManagedServer, entrepot_factory: ServerFactory, tmp_path: Path
) -> None:
    tag_schema = upstream.name == "registry:2"
    image = build_image(tmp_path / "image", tag="1", layer_sizes=(2048,))
    clients.push(f"oci:{image.path}:1", upstream.host, REPO, "1")
    subject = image.digest
    subject_size = image.images["linux/amd64"].manifest.size
    signature = _sign(upstream, subject, subject_size, tag_schema=tag_schema)
    descriptor = signature["descriptor"]
    cache = entrepot_factory(
        config={"proxies": [{"host": UPSTREAM, "remoteurl": upstream.url, "tagttl": "1s"}]}
    )

    # The image is pulled through the cache, then its signatures are looked for.
    assert clients.inspect_digest(cache.host, f"{UPSTREAM}/{REPO}", "1") == subject
    listed = _referrers(cache, subject)
    assert listed.status_code == 200, listed.text
    assert listed.headers["content-type"].startswith(OCI_INDEX)
    entries = listed.json()["manifests"]
    assert [(e["digest"], e.get("artifactType")) for e in entries] == [
        (descriptor["digest"], SIG_TYPE)
    ]

    # Filtered by artifactType, as cosign and notation ask.
    only_sigs = _referrers(cache, subject, artifactType=SIG_TYPE)
    assert only_sigs.headers.get("oci-filters-applied") == "artifactType"
    assert [e["digest"] for e in only_sigs.json()["manifests"]] == [descriptor["digest"]]
    sboms = _referrers(cache, subject, artifactType="application/spdx+json")
    assert sboms.status_code == 200 and sboms.json()["manifests"] == []

    # The signature and its blobs pull through the cache with their digests.
    with httpx.Client(base_url=f"{cache.url}/v2/{UPSTREAM}/{REPO}", timeout=30) as http:
        raw = http.get(
            f"/manifests/{descriptor['digest']}", headers={"Accept": OCI_MANIFEST}
        ).content
        assert _digest(raw) == descriptor["digest"]
        manifest = json.loads(raw)
        assert manifest["subject"]["digest"] == subject
        for blob in [manifest["config"], *manifest["layers"]]:
            body = http.get(f"/blobs/{blob['digest']}").content
            assert _digest(body) == blob["digest"]
        assert http.get(f"/blobs/{manifest['layers'][0]['digest']}").content == signature["payload"]
        if tag_schema:
            # Cosign's sha256-<hex>.sig tag pulls as any tag does.
            sig_tag = subject.replace(":", "-") + ".sig"
            by_tag = http.get(f"/manifests/{sig_tag}", headers={"Accept": OCI_MANIFEST})
            assert by_tag.status_code == 200 and _digest(by_tag.content) == descriptor["digest"]

    # The upstream goes away: the cached answer is served stale once past its tagttl.
    upstream.stop()
    time.sleep(TTL + 0.5)  # the kept answer's age must pass tagttl: the upstream is asked
    stale = _referrers(cache, subject)
    assert stale.status_code == 200, stale.text
    assert [e["digest"] for e in stale.json()["manifests"]] == [descriptor["digest"]]
    assert "serving stale referrers" in cache.log()
    # A subject never asked about has no answer kept: the client learns the upstream failed.
    unknown = _referrers(cache, _digest(b"never signed"))
    assert unknown.status_code == 503, unknown.text
    assert unknown.json()["errors"][0]["code"] == "UNAVAILABLE"
