"""S3 faults between Entrepot and its bucket: a fault-injecting proxy (tests/faultproxy.py)
in front of radosgw fails requests with 5xx, stalls them, or cuts their connection in the
middle of the body. The client gets the spec's UNAVAILABLE (503), or a retry that succeeds;
never a half-visible blob or manifest; an interrupted multipart upload is aborted.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.cephs3 import CephS3, s3_client
from tests.faultproxy import FaultProxy, Rule

from .servers import ManagedServer, ServerFactory
from .test_s3_interop import ROOT, s3_storage

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def faulty_s3(s3_server: CephS3) -> Iterator[FaultProxy]:
    endpoint = urlsplit(s3_server.endpoint)
    assert endpoint.hostname is not None and endpoint.port is not None
    proxy = FaultProxy((endpoint.hostname, endpoint.port)).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def entrepot_on_faulty_s3(
    s3_server: CephS3,
    s3_bucket: Callable[[], str],
    faulty_s3: FaultProxy,
    entrepot_factory: ServerFactory,
) -> tuple[ManagedServer, str]:
    bucket = s3_bucket()
    storage = s3_storage(s3_server, bucket, redirect={"disable": True})
    storage["s3"]["regionendpoint"] = faulty_s3.url
    return entrepot_factory(config={"storage": storage}), bucket


def _unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["errors"][0]["code"] == "UNAVAILABLE"


def _multipart_uploads(server: CephS3, bucket: str) -> list[dict[str, Any]]:
    listed = s3_client(server).list_multipart_uploads(Bucket=bucket, Prefix=ROOT.strip("/"))
    uploads: list[dict[str, Any]] = listed.get("Uploads", [])
    return uploads


def _push_blob(client: httpx.Client, repo: str, data: bytes) -> httpx.Response:
    return client.post(f"/v2/{repo}/blobs/uploads/?digest={_sha256(data)}", content=data)


def test_s3_answering_503_is_unavailable_and_a_retry_succeeds(
    entrepot_on_faulty_s3: tuple[ManagedServer, str], faulty_s3: FaultProxy
) -> None:
    entrepot, _ = entrepot_on_faulty_s3
    config = b"{}"
    layer = os.urandom(MiB)
    with httpx.Client(base_url=entrepot.url, timeout=120) as client:
        assert _push_blob(client, "team/app", config).status_code == 201

        # The server-side copy that moves a verified upload into place fails: the upload
        # is kept, the blob is not there, and the client's retried PUT completes it.
        copy_fails = faulty_s3.add(Rule("fail", method="PUT", header="x-amz-copy-source"))
        started = client.post("/v2/team/app/blobs/uploads/")
        location = started.headers["location"]
        finish = f"{location}?digest={_sha256(layer)}"
        _unavailable(client.put(finish, content=layer))
        assert copy_fails.hits >= 1
        assert client.head(f"/v2/team/app/blobs/{_sha256(layer)}").status_code == 404
        faulty_s3.clear()
        status = client.get(location)
        assert status.status_code == 204 and status.headers["range"] == f"0-{len(layer) - 1}"
        retried = client.put(finish)
        assert retried.status_code == 201, retried.text
        assert client.get(f"/v2/team/app/blobs/{_sha256(layer)}").content == layer

        # Reads: a failing store is UNAVAILABLE, never "unknown" (a client would give up).
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": _sha256(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": _sha256(layer),
                    "size": len(layer),
                }
            ],
        }
        raw = json.dumps(manifest).encode()
        headers = {"Content-Type": OCI_MANIFEST}

        # A manifest PUT whose tag cannot be written: 503, the tag is not there.
        faulty_s3.add(Rule("fail", method="PUT", target=r"/_manifests/tags/"))
        _unavailable(client.put("/v2/team/app/manifests/v1", content=raw, headers=headers))
        faulty_s3.clear()
        assert client.get("/v2/team/app/manifests/v1").status_code == 404
        assert "v1" not in (client.get("/v2/team/app/tags/list").json()["tags"] or [])
        assert (
            client.put("/v2/team/app/manifests/v1", content=raw, headers=headers).status_code == 201
        )

        faulty_s3.add(Rule("fail", method="GET"))
        faulty_s3.add(Rule("fail", method="HEAD"))
        _unavailable(client.get("/v2/team/app/manifests/v1", headers={"Accept": OCI_MANIFEST}))
        _unavailable(client.get(f"/v2/team/app/blobs/{_sha256(layer)}"))
        _unavailable(client.get("/v2/team/app/tags/list"))
        _unavailable(client.get("/v2/_catalog"))
        faulty_s3.clear()
        assert client.get("/v2/team/app/manifests/v1").status_code == 200


def test_a_connection_cut_mid_part_aborts_the_multipart_upload(
    s3_server: CephS3,
    entrepot_on_faulty_s3: tuple[ManagedServer, str],
    faulty_s3: FaultProxy,
) -> None:
    entrepot, bucket = entrepot_on_faulty_s3
    layer = os.urandom(12 * MiB)  # three parts of 5 MiB
    cut = faulty_s3.add(Rule("drop", method="PUT", target=r"partNumber=2", after_bytes=MiB))
    with httpx.Client(base_url=entrepot.url, timeout=300) as client:
        _unavailable(_push_blob(client, "team/cut", layer))
        assert cut.hits >= 1
        faulty_s3.clear()
        assert client.head(f"/v2/team/cut/blobs/{_sha256(layer)}").status_code == 404
        deadline = time.monotonic() + 60
        while _multipart_uploads(s3_server, bucket) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _multipart_uploads(s3_server, bucket) == []
        # And the push, sent again, goes through.
        assert _push_blob(client, "team/cut", layer).status_code == 201


def test_a_stalled_completion_shows_nothing_until_it_completes(
    entrepot_on_faulty_s3: tuple[ManagedServer, str], faulty_s3: FaultProxy
) -> None:
    entrepot, _ = entrepot_on_faulty_s3
    layer = os.urandom(7 * MiB)
    digest = _sha256(layer)
    # The CompleteMultipartUpload of the upload's data is held.
    faulty_s3.add(Rule("stall", method="POST", target=r"uploadId=", times=1))
    outcome: list[httpx.Response] = []

    def push() -> None:
        with httpx.Client(base_url=entrepot.url, timeout=300) as client:
            outcome.append(_push_blob(client, "team/stall", layer))

    pusher = threading.Thread(target=push)
    pusher.start()
    try:
        assert faulty_s3.wait_stalled(1, timeout=120)
        with httpx.Client(base_url=entrepot.url, timeout=60) as other:
            assert other.head(f"/v2/team/stall/blobs/{digest}").status_code == 404
    finally:
        faulty_s3.release()
        pusher.join(300)
    assert outcome and outcome[0].status_code == 201, outcome
    with httpx.Client(base_url=entrepot.url, timeout=60) as client:
        assert client.get(f"/v2/team/stall/blobs/{digest}").content == layer
