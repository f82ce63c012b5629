"""The /v2/<name>/... endpoints are called straight from the front middleware
(http/front.py), not through Starlette's router: they must answer exactly as the router's
way does. The same application mounted below a path takes the router's way (the direct
call is only for requests at the root), so each request is made both ways and the answers
compared; then what the front middleware adds (request id, metrics, the auth challenge)
is checked on the direct way."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from entrepot.config import load_config
from entrepot.root import create_app
from entrepot.storage.filesystem import FilesystemDriver
from tests.api.auth_setup import PASSWORDS, app_client, basic, write_htpasswd
from tests.api.oci_client import (
    DOCKER_MANIFEST,
    OCI_MANIFEST,
    OciClient,
    error_code,
    make_image,
    sha256,
)

MOUNT = "/mounted"


@dataclass
class Ways:
    direct: httpx.AsyncClient  # the app at the root: the front middleware calls endpoints
    routed: httpx.AsyncClient  # the same app below MOUNT: Starlette's router calls them
    manifest: str  # digest of the pushed image's manifest
    layer: str  # digest of its first layer


@pytest.fixture
async def ways(tmp_path: Path) -> AsyncIterator[Ways]:
    config = tmp_path / "config.yml"
    config.write_text(
        "version: 0.1\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp_path / 'data'}\n"
        "  delete:\n    enabled: true\n"
        "http:\n  addr: :5000\n  secret: test-secret\n"
        "  headers:\n    X-Content-Type-Options: [nosniff]\n"
    )
    app = create_app(load_config(config))
    mounted = Starlette(routes=[Mount(MOUNT, app=app)])
    base = "http://registry.test"
    async with (
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base) as direct,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=mounted), base_url=base + MOUNT
        ) as routed,
    ):
        image = make_image("front", layer_sizes=(4096,))
        pushed = await OciClient(direct).push_image("team/app", image, tag="v1")
        assert pushed.status_code == 201, pushed.text
        yield Ways(direct, routed, image.digest, sha256(image.layers[0]))


OCI_ONLY = {"Accept": OCI_MANIFEST}
DOCKER_ONLY = {"Accept": DOCKER_MANIFEST}

# (method, path after /v2/ with {m} the manifest digest and {l} the layer's, headers)
REQUESTS = [
    ("GET", "team/app/manifests/v1", OCI_ONLY),
    ("HEAD", "team/app/manifests/v1", OCI_ONLY),
    ("GET", "team/app/manifests/v1", {}),
    ("GET", "team/app/manifests/v1", {"Accept": "application/*"}),
    ("GET", "team/app/manifests/{m}", OCI_ONLY),
    ("HEAD", "team/app/manifests/{m}", {}),
    ("GET", "team/app/manifests/v1", DOCKER_ONLY),  # 404: the stored type is not accepted
    ("HEAD", "team/app/manifests/v1", DOCKER_ONLY),
    ("GET", "team/app/manifests/v2", OCI_ONLY),  # 404 MANIFEST_UNKNOWN
    ("HEAD", "team/app/manifests/v2", OCI_ONLY),
    ("GET", "team/app/manifests/.INVALID_MANIFEST_NAME", {}),
    ("HEAD", "team/app/manifests/{l}", {}),  # a blob, not a manifest: 404
    ("GET", "team/other/manifests/v1", {}),  # 404 NAME_UNKNOWN
    ("GET", "Team/App/manifests/v1", {}),  # 400 NAME_INVALID
    ("GET", "team%2fapp/manifests/v1", {}),  # an escaped separator
    ("PATCH", "team/app/manifests/v1", {}),  # 405 UNSUPPORTED with Allow
    ("HEAD", "team/app/blobs/{l}", {}),
    ("GET", "team/app/blobs/{l}", {}),
    ("GET", "team/app/blobs/{l}", {"Range": "bytes=10-19"}),
    ("GET", "team/app/blobs/{l}", {"Range": "bytes=9999-"}),  # 416
    ("HEAD", "team/app/blobs/sha256:" + "0" * 64, {}),  # 404 BLOB_UNKNOWN
    ("HEAD", "team/app/blobs/not-a-digest", {}),  # 400 DIGEST_INVALID
    ("GET", "team/app/tags/list", {}),
    ("GET", "team/app/tags/list?n=1&last=a", {}),
    ("GET", "team/app/referrers/{m}", {}),
    ("GET", "team/app/nothing/here", {}),  # no such endpoint
    ("GET", "_catalog", {}),
    ("HEAD", "_catalog", {}),
]


def _comparable(response: httpx.Response) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body, without what differs by design between the two ways:
    the request id, and the mount path where an error message names the path (so the
    length, checked on its own)."""
    body = response.content.replace(MOUNT.encode(), b"")
    skipped = ("x-request-id", "content-length")
    headers = {k: v for k, v in response.headers.items() if k not in skipped}
    return response.status_code, headers, body


@pytest.mark.parametrize(("method", "path", "headers"), REQUESTS)
async def test_the_direct_call_answers_as_the_router(
    ways: Ways, method: str, path: str, headers: dict[str, str]
) -> None:
    url = "/v2/" + path.format(m=ways.manifest, l=ways.layer)
    direct = await ways.direct.request(method, url, headers=headers)
    routed = await ways.routed.request(method, url, headers=headers)
    assert _comparable(direct) == _comparable(routed)
    length = int(direct.headers["content-length"])
    names_path = MOUNT.encode() in routed.content or (
        method == "HEAD" and direct.status_code == 404
    )
    extra = int(routed.headers["content-length"]) - length
    assert extra == 0 or (names_path and extra == len(MOUNT))
    assert direct.headers["x-request-id"]
    assert direct.headers["docker-distribution-api-version"] == "registry/2.0"
    assert direct.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    "path", ["team/app/manifests/v1", "team/app/manifests/{m}", "team/app/blobs/{l}"]
)
async def test_head_has_the_headers_of_get_and_no_body(ways: Ways, path: str) -> None:
    url = "/v2/" + path.format(m=ways.manifest, l=ways.layer)
    got = await ways.direct.get(url, headers=OCI_ONLY)
    head = await ways.direct.head(url, headers=OCI_ONLY)
    assert got.status_code == head.status_code == 200
    assert head.content == b""
    assert int(head.headers["content-length"]) == len(got.content)
    for key in ("content-type", "docker-content-digest", "etag", "content-length"):
        assert head.headers[key] == got.headers[key]


async def test_a_given_request_id_comes_back_also_on_errors(ways: Ways) -> None:
    for path in ("team/app/manifests/v1", "team/app/manifests/v2", "team/app/blobs/x"):
        response = await ways.direct.head(f"/v2/{path}", headers={"X-Request-Id": "abc-1"})
        assert response.headers["x-request-id"] == "abc-1"


async def test_direct_calls_are_counted_in_registry2_metrics(ways: Ways) -> None:
    await ways.direct.get("/v2/team/app/manifests/v1", headers=OCI_ONLY)
    await ways.direct.head("/v2/team/app/manifests/v1", headers=OCI_ONLY)
    await ways.direct.head(f"/v2/team/app/blobs/{ways.layer}")
    await ways.direct.get("/v2/team/app/manifests/v2")
    text = (await ways.direct.get("/metrics")).text
    for line in (
        'registry_http_requests_total{code="200",handler="manifest",method="GET"} 1.0',
        'registry_http_requests_total{code="200",handler="manifest",method="HEAD"} 1.0',
        'registry_http_requests_total{code="200",handler="blob",method="HEAD"} 1.0',
        'registry_http_requests_total{code="404",handler="manifest",method="GET"} 1.0',
        'registry_http_request_duration_seconds_count{handler="blob",method="HEAD"} 1.0',
        'registry_http_in_flight_requests{handler="manifest"} 0.0',
    ):
        assert line in text


async def test_direct_calls_challenge_a_client_without_credentials(tmp_path: Path) -> None:
    htpasswd = write_htpasswd(tmp_path / "htpasswd")
    auth = f"  htpasswd:\n    realm: basic-realm\n    path: {htpasswd}\n"
    alice = {"Authorization": basic("alice", PASSWORDS["alice"])}
    async with app_client(tmp_path, auth) as http:
        image = make_image("guarded")
        client = OciClient(http)
        client.http.headers.update(alice)
        assert (await client.push_image("team/app", image, tag="v1")).status_code == 201
        client.http.headers.pop("Authorization")
        for method, path in (
            ("GET", "team/app/manifests/v1"),
            ("HEAD", "team/app/manifests/v1"),
            ("HEAD", f"team/app/blobs/{sha256(image.layers[0])}"),
        ):
            refused = await http.request(method, f"/v2/{path}")
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"] == 'Basic realm="basic-realm"'
            assert refused.headers["x-request-id"]
            if method == "GET":
                assert error_code(refused) == "UNAUTHORIZED"
            else:
                assert refused.content == b""
            allowed = await http.request(method, f"/v2/{path}", headers=alice)
            assert allowed.status_code == 200
            # The path's route is remembered now: the guard still asks again.
            assert (await http.request(method, f"/v2/{path}")).status_code == 401


class _FailingDriver(FilesystemDriver):
    """The store, until ``failing``: then reading a tag's link fails with an error no
    handler knows (a bug, not a storage error)."""

    failing = False

    async def get_content(self, key: str) -> bytes:
        if self.failing and "/_manifests/tags/" in key:
            raise RuntimeError("a bug")
        return await super().get_content(key)


async def test_an_unexpected_error_gets_the_last_resort_answer_both_ways(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / "config.yml"
    config.write_text(
        "version: 0.1\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp_path / 'data'}\n"
        "http:\n  addr: :5000\n  secret: test-secret\n"
    )
    driver = _FailingDriver(tmp_path / "data")
    app = create_app(load_config(config), driver=driver)
    mounted = Starlette(routes=[Mount(MOUNT, app=app)])
    base = "http://registry.test"
    # As a server does: the answer is sent, then the exception goes on (to its log).
    direct_transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    routed_transport = httpx.ASGITransport(app=mounted, raise_app_exceptions=False)
    async with (
        httpx.AsyncClient(transport=direct_transport, base_url=base) as direct,
        httpx.AsyncClient(transport=routed_transport, base_url=base + MOUNT) as routed,
    ):
        image = make_image("failing")
        assert (await OciClient(direct).push_image("team/app", image, tag="v1")).status_code == 201
        driver.failing = True
        for method in ("GET", "HEAD"):
            url = "/v2/team/app/manifests/v1"
            answers = [await client.request(method, url) for client in (direct, routed)]
            assert answers[0].status_code == 500
            assert _comparable(answers[0]) == _comparable(answers[1])
            assert answers[0].headers["x-request-id"]
            if method == "GET":
                assert error_code(answers[0]) == "UNKNOWN"
                assert b"a bug" not in answers[0].content
        assert "unhandled error on GET /v2/team/app/manifests/v1" in caplog.text
        driver.failing = False
        text = (await direct.get("/metrics")).text
        assert 'registry_http_requests_total{code="500",handler="manifest",method="GET"}' in text
