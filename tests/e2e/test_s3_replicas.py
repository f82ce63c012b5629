"""Several Entrepot replicas over one S3 bucket (Ceph's radosgw), as production registry:2
deployments run: separate processes, the same ``storage.s3`` and the same ``http.secret``.

- Docker Engine pushes and pulls through Debian's nginx, round robin over three replicas,
  so one layer's POST, PATCH and PUT land on different replicas;
- a chunked upload spread over replicas by hand (POST on one, PATCHes on others, PUT on
  another) ends with its digest verified; a wrong digest is refused with DIGEST_INVALID;
- a replica SIGKILLed in the middle of a chunk: the client finishes on another;
- what is pushed through one replica (tags, catalog, referrers, manifests) is seen through
  the others at once, also where they had already cached the old answer.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.cephs3 import CephS3, s3_client

from . import clients
from .images import build_image, canonical_json
from .loadbalancer import Nginx
from .servers import ManagedServer, ServerFactory
from .test_garbage_collect import put_manifest
from .test_s3_interop import ROOT, s3_storage

if TYPE_CHECKING:
    from .conftest import DockerEngine

pytestmark = pytest.mark.e2e

SECRET = "replicas-share-this-secret"
USER, PASSWORD = "pusher", "s3cret-pass"
MiB = 1024 * 1024
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"


def start_replicas(
    factory: ServerFactory,
    server: CephS3,
    bucket: str,
    count: int,
    **extra: Any,
) -> list[ManagedServer]:
    """``count`` Entrepot processes on one bucket, one shared secret (each its own port)."""
    config = {
        "storage": s3_storage(server, bucket, delete={"enabled": True}),
        "http": {"secret": SECRET},
        **extra,
    }
    return [factory(config=config) for _ in range(count)]


@pytest.fixture
def nginx() -> Iterator[Callable[[list[ManagedServer]], Nginx]]:
    started: list[Nginx] = []

    def start(replicas: list[ManagedServer]) -> Nginx:
        base = Path(tempfile.mkdtemp(prefix="entrepot-nginx-"))
        balancer = Nginx(base, [replica.host for replica in replicas])
        started.append(balancer)
        return balancer.start()

    yield start
    for balancer in started:
        balancer.stop()
        shutil.rmtree(balancer.base, ignore_errors=True)


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- Docker Engine through nginx --------------------------------------------------------------


def test_docker_push_and_pull_through_nginx_over_three_replicas(
    s3_server: CephS3,
    s3_bucket: Callable[[], str],
    entrepot_factory: ServerFactory,
    dockerd_factory: Callable[..., DockerEngine],
    nginx: Callable[[list[ManagedServer]], Nginx],
    tmp_path: Path,
) -> None:
    replicas = start_replicas(entrepot_factory, s3_server, s3_bucket(), 3)
    balancer = nginx(replicas)
    docker = dockerd_factory(insecure_registries=[balancer.host])
    # An image with a layer larger than one S3 part (5 MiB here), loaded into the engine.
    image = build_image(tmp_path / "img", seed=93, layer_sizes=(7 * MiB, 4096), label="lb")
    archive = tmp_path / "image.tar"
    clients.skopeo("copy", image.ref, f"docker-archive:{archive}:team/app:1")
    docker("load", "-i", str(archive))
    ref = f"{balancer.host}/team/app:1"
    docker("tag", "team/app:1", ref)

    out = docker("push", ref).stdout
    match = re.search(r"digest: (sha256:[0-9a-f]{64})", out)
    assert match, out
    digest = match.group(1)

    # Each blob upload is a POST, a PATCH and a PUT: round robin spread them.
    uploads: dict[str, set[str]] = {}
    for entry in balancer.routed():
        found = re.match(r"/v2/team/app/blobs/uploads/([0-9a-f-]+)", entry.uri)
        if found and entry.method in ("PATCH", "PUT"):
            uploads.setdefault(found.group(1), set()).add(entry.upstream)
    posts = [e for e in balancer.routed() if e.method == "POST" and "/blobs/uploads/" in e.uri]
    assert len(uploads) == 3, balancer.routed()  # the config and the two layers
    assert any(len(upstreams) > 1 for upstreams in uploads.values()), balancer.routed()
    assert {e.upstream for e in posts} | set().union(*uploads.values()) == {
        r.host for r in replicas
    }
    # Every replica serves the pushed image with the digest docker printed.
    for replica in replicas:
        assert clients.inspect_digest(replica.host, "team/app", "1") == digest

    docker("rmi", ref, "team/app:1")
    docker("pull", ref)
    pulled = json.loads(docker("image", "inspect", ref).stdout)[0]
    assert f"{balancer.host}/team/app@{digest}" in pulled["RepoDigests"]
    gets = [e for e in balancer.routed() if e.method == "GET" and "/blobs/sha256:" in e.uri]
    assert gets and all(e.status in (200, 307) for e in gets)


# --- one chunked upload spread over replicas by hand ----------------------------------------


@pytest.fixture
def guarded_replicas(
    s3_server: CephS3,
    s3_bucket: Callable[[], str],
    entrepot_factory: ServerFactory,
    tmp_path: Path,
) -> list[ManagedServer]:
    """Three replicas with access control (so upload locations carry a ``_state`` signed
    with the shared secret)."""
    htpasswd = clients.write_htpasswd(tmp_path / "htpasswd", {USER: PASSWORD})
    auth = {"htpasswd": {"realm": "replicas", "path": str(htpasswd)}}
    return start_replicas(entrepot_factory, s3_server, s3_bucket(), 3, auth=auth)


def _client(replica: ManagedServer) -> httpx.Client:
    return httpx.Client(base_url=replica.url, auth=(USER, PASSWORD), timeout=120)


def _start_upload(replica: ManagedServer, repo: str) -> str:
    """POST on ``replica``: the upload's location (path and query)."""
    with _client(replica) as client:
        response = client.post(f"/v2/{repo}/blobs/uploads/")
    assert response.status_code == 202, response.text
    return response.headers["location"]


def _patch(replica: ManagedServer, location: str, offset: int, chunk: bytes) -> str:
    headers = {
        "Content-Type": "application/octet-stream",
        "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
    }
    with _client(replica) as client:
        response = client.patch(location, content=chunk, headers=headers)
    assert response.status_code == 202, response.text
    assert response.headers["range"] == f"0-{offset + len(chunk) - 1}"
    return response.headers["location"]


def _put(replica: ManagedServer, location: str, digest: str) -> httpx.Response:
    sep = "&" if "?" in location else "?"
    with _client(replica) as client:
        return client.put(f"{location}{sep}digest={digest}")


def _blob(replica: ManagedServer, repo: str, digest: str) -> httpx.Response:
    with _client(replica) as client:
        return client.get(f"/v2/{repo}/blobs/{digest}", follow_redirects=True)


def test_a_chunked_upload_spread_over_replicas_is_verified(
    guarded_replicas: list[ManagedServer],
) -> None:
    one, two, three = guarded_replicas
    chunks = [os.urandom(6 * MiB), os.urandom(1 * MiB + 17), os.urandom(3 * MiB)]
    whole = b"".join(chunks)
    location = _start_upload(one, "team/chunked")
    offset = 0
    for replica, chunk in zip((two, three, one), chunks, strict=True):
        location = _patch(replica, location, offset, chunk)
        offset += len(chunk)
    response = _put(two, location, _sha256(whole))
    assert response.status_code == 201, response.text
    assert response.headers["docker-content-digest"] == _sha256(whole)
    for replica in guarded_replicas:
        fetched = _blob(replica, "team/chunked", _sha256(whole))
        assert fetched.status_code == 200 and fetched.content == whole


def test_a_wrong_digest_on_another_replica_is_digest_invalid(
    guarded_replicas: list[ManagedServer],
) -> None:
    one, two, three = guarded_replicas
    data = os.urandom(2 * MiB)
    location = _start_upload(one, "team/wrong")
    location = _patch(two, location, 0, data)
    wrong = _sha256(b"not these bytes")
    response = _put(three, location, wrong)
    assert response.status_code == 400, response.text
    assert response.json()["errors"][0]["code"] == "DIGEST_INVALID"
    for replica in guarded_replicas:
        assert _blob(replica, "team/wrong", wrong).status_code == 404
        assert _blob(replica, "team/wrong", _sha256(data)).status_code == 404


def test_a_replica_with_another_secret_does_not_know_the_upload(
    guarded_replicas: list[ManagedServer],
    s3_server: CephS3,
    entrepot_factory: ServerFactory,
) -> None:
    """Why ``http.secret`` must be shared: a replica with its own cannot check the
    location's ``_state``, and answers as for an unknown upload."""
    one = guarded_replicas[0]
    stranger = entrepot_factory(
        config={**_config_of(one), "http": {"secret": "another-secret"}},
    )
    location = _start_upload(one, "team/secret")
    with _client(stranger) as client:
        response = client.get(location)
    assert response.status_code == 404
    assert response.json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"


def _config_of(replica: ManagedServer) -> dict[str, Any]:
    return {key: value for key, value in replica.extra_config.items() if key != "http"}


# --- a replica killed mid-upload --------------------------------------------------------------


def test_a_replica_killed_mid_chunk_leaves_the_upload_to_finish_on_another(
    guarded_replicas: list[ManagedServer],
    s3_server: CephS3,
) -> None:
    one, two, three = guarded_replicas
    first = os.urandom(6 * MiB)
    location = _start_upload(one, "team/killed")
    location = _patch(one, location, 0, first)

    # A second chunk that one replica starts to take, and then it is SIGKILLed.
    sent = threading.Event()
    hold = threading.Event()

    def slow_chunk() -> Iterator[bytes]:
        yield os.urandom(6 * MiB)
        sent.set()
        hold.wait(120)
        yield b"never sent"

    failure: list[BaseException] = []

    def send() -> None:
        try:
            with _client(two) as client:
                client.patch(location, content=slow_chunk())
        except httpx.HTTPError as exc:
            failure.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    assert sent.wait(60)
    _wait_for_multipart_upload(s3_server, two)
    two.kill()
    hold.set()
    sender.join(60)
    assert failure, "the killed replica answered"

    # The client asks another replica where the upload stands, and goes on from there.
    with _client(three) as client:
        status = client.get(location)
    assert status.status_code == 204, status.text
    assert status.headers["range"] == f"0-{len(first) - 1}"
    rest = os.urandom(2 * MiB)
    location = _patch(three, status.headers["location"], len(first), rest)
    whole = first + rest
    response = _put(one, location, _sha256(whole))
    assert response.status_code == 201, response.text
    assert _blob(three, "team/killed", _sha256(whole)).content == whole


def _wait_for_multipart_upload(server: CephS3, replica: ManagedServer) -> None:
    """Until the replica is streaming the chunk into S3 (a multipart upload is open)."""
    client = s3_client(server)
    bucket = replica.extra_config["storage"]["s3"]["bucket"]
    for _ in range(600):
        listed = client.list_multipart_uploads(Bucket=bucket, Prefix=ROOT.strip("/"))
        if listed.get("Uploads"):
            return
        threading.Event().wait(0.1)
    raise AssertionError("the replica never started its multipart upload")


# --- what one replica writes, the others see at once -------------------------------------------


def _push_blob(client: httpx.Client, repo: str, data: bytes) -> dict[str, Any]:
    response = client.post(f"/v2/{repo}/blobs/uploads/?digest={_sha256(data)}", content=data)
    assert response.status_code == 201, response.text
    return {"mediaType": EMPTY_CONFIG, "digest": _sha256(data), "size": len(data)}


def _image(client: httpx.Client, repo: str, seed: bytes) -> dict[str, Any]:
    config = _push_blob(client, repo, b"{}")
    layer = _push_blob(client, repo, seed * 100)
    layer["mediaType"] = "application/vnd.oci.image.layer.v1.tar"
    return {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [layer]}


def test_a_push_through_one_replica_is_seen_through_the_others_at_once(
    s3_server: CephS3,
    s3_bucket: Callable[[], str],
    entrepot_factory: ServerFactory,
) -> None:
    one, two = start_replicas(entrepot_factory, s3_server, s3_bucket(), 2)
    a, b = httpx.Client(base_url=one.url), httpx.Client(base_url=two.url)
    a_url, b_url = one.url, two.url
    with a, b:
        digest_v1 = put_manifest(a_url, "team/seen", "v1", _image(a, "team/seen", b"one"))
        # The other replica answers from what it has cached, and must not keep it.
        assert b.get("/v2/team/seen/tags/list").json()["tags"] == ["v1"]
        assert b.get("/v2/_catalog").json()["repositories"] == ["team/seen"]
        assert b.get(f"/v2/team/seen/referrers/{digest_v1}").json()["manifests"] == []

        digest_v2 = put_manifest(a_url, "team/seen", "v2", _image(a, "team/seen", b"two"))
        put_manifest(a_url, "team/other", "1", _image(a, "team/other", b"three"))
        artifact: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.sbom",
            "config": _push_blob(a, "team/seen", b"{}"),
            "layers": [_push_blob(a, "team/seen", b"sbom")],
            "subject": {"mediaType": OCI_MANIFEST, "digest": digest_v1, "size": 0},
        }
        artifact["subject"]["size"] = len(a.get(f"/v2/team/seen/manifests/{digest_v1}").content)
        sbom = put_manifest(a_url, "team/seen", sbom_ref(artifact), artifact)

        assert b.get("/v2/team/seen/tags/list").json()["tags"] == ["v1", "v2"]
        assert b.get("/v2/_catalog").json()["repositories"] == ["team/other", "team/seen"]
        referrers = b.get(f"/v2/team/seen/referrers/{digest_v1}").json()["manifests"]
        assert [r["digest"] for r in referrers] == [sbom]
        got = b.get("/v2/team/seen/manifests/v2", headers={"Accept": OCI_MANIFEST})
        assert got.headers["docker-content-digest"] == digest_v2

        # A tag moved or deleted through the second is seen through the first too.
        put_manifest(b_url, "team/seen", "v1", _image(b, "team/seen", b"moved"))
        moved = a.get("/v2/team/seen/manifests/v1", headers={"Accept": OCI_MANIFEST})
        assert moved.headers["docker-content-digest"] != digest_v1
        assert b.delete("/v2/team/seen/manifests/v2").status_code == 202
        assert a.get("/v2/team/seen/tags/list").json()["tags"] == ["v1"]
        assert a.get("/v2/team/seen/manifests/v2").status_code == 404


def sbom_ref(artifact: dict[str, Any]) -> str:
    """Push the artifact by digest (untagged), as oras does for referrers."""
    return _sha256(canonical_json(artifact))
