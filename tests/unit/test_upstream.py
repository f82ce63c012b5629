"""The upstream client against a fake registry (httpx.MockTransport): token auth as Docker
Hub does it, Basic auth, failover, errors, redirects to a CDN, streaming, pagination.
Blob bodies over aiohttp (the client's default) against real loopback servers."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import socket
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from entrepot import __version__
from entrepot.oci import mediatypes as mt
from entrepot.oci.digest import Digest
from entrepot.proxy.auth import parse_challenges
from entrepot.proxy.upstream import (
    UpstreamClient,
    UpstreamDenied,
    UpstreamError,
    UpstreamInvalid,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamSettings,
    UpstreamUnavailable,
)

REGISTRY = "https://registry.test"
MIRROR = "https://mirror.test"
REALM = "https://auth.test/token"
SERVICE = "registry.test"
USER, PASSWORD = "alice", "pa55-w0rd-secret"
ACCEPT = [mt.OCI_MANIFEST, mt.DOCKER_MANIFEST]
MANIFEST = json.dumps(
    {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": {}, "layers": []}
).encode()
BLOB = bytes(range(256)) * 4096  # 1 MiB
BLOB_DIGEST = Digest.of(BLOB)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass
class FakeRegistry:
    """A registry on REGISTRY with Docker token auth ("bearer"), Basic auth or none, its
    token service on REALM, and a CDN that blob GETs redirect to."""

    auth: str = "bearer"
    credentials: tuple[str, str] | None = None  # required by the token service / Basic
    expires_in: int | None = 300
    manifests: dict[tuple[str, str], bytes] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    seen: list[httpx.Request] = field(default_factory=list)
    token_requests: list[httpx.Request] = field(default_factory=list)
    cdn_requests: list[httpx.Request] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.test":
            return self.token(request)
        if request.url.host == "cdn.test":
            self.cdn_requests.append(request)
            return httpx.Response(200, content=self.blobs[request.url.path.rsplit("/", 1)[1]])
        self.seen.append(request)
        name = request.url.path.removeprefix("/v2/").rsplit("/", 2)[0]
        if (denied := self.check_auth(request, name)) is not None:
            return denied
        return self.route(request, name)

    def token(self, request: httpx.Request) -> httpx.Response:
        self.token_requests.append(request)
        if self.credentials and request.headers.get("authorization") != basic(*self.credentials):
            return httpx.Response(401, json={"details": "incorrect username or password"})
        value = f"token-{len(self.issued) + 1}-secret"
        self.issued.append(value)
        body: dict[str, object] = {"token": value}
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        return httpx.Response(200, json=body)

    def check_auth(self, request: httpx.Request, name: str) -> httpx.Response | None:
        sent = request.headers.get("authorization")
        if self.auth == "bearer" and sent not in {f"Bearer {t}" for t in self.issued}:
            scope = f"repository:{name}:pull"
            challenge = f'Bearer realm="{REALM}",service="{SERVICE}",scope="{scope}"'
            return unauthorized(challenge)
        if self.auth == "basic" and (not self.credentials or sent != basic(*self.credentials)):
            return unauthorized('Basic realm="registry"')
        return None

    def route(self, request: httpx.Request, name: str) -> httpx.Response:
        kind, _, ref = request.url.path.removeprefix(f"/v2/{name}/").partition("/")
        if kind == "manifests" and (name, ref) in self.manifests:
            raw = self.manifests[(name, ref)]
            headers = {
                "content-type": mt.OCI_MANIFEST,
                "docker-content-digest": str(Digest.of(raw)),
            }
            body = raw if request.method == "GET" else b""
            headers["content-length"] = str(len(raw))
            return httpx.Response(200, headers=headers, content=body)
        if kind == "blobs" and ref in self.blobs:
            return httpx.Response(307, headers={"location": f"https://cdn.test/data/{ref}"})
        if kind == "tags":
            return self.tag_page(request, name)
        error = {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}
        return httpx.Response(404, json=error)

    def tag_page(self, request: httpx.Request, name: str) -> httpx.Response:
        query = parse_qs(request.url.query.decode())
        last = query.get("last", [""])[0]
        rest = [t for t in self.tags if t > last]
        page, more = rest[:2], rest[2:]
        headers = {}
        if more:
            headers["link"] = f'</v2/{name}/tags/list?n=2&last={page[-1]}>; rel="next"'
        return httpx.Response(200, headers=headers, json={"name": name, "tags": page})


def unauthorized(challenge: str) -> httpx.Response:
    error = {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}
    return httpx.Response(401, headers={"www-authenticate": challenge}, json=error)


def client_for(
    handler: Callable[[httpx.Request], httpx.Response],
    *,
    urls: tuple[str, ...] = (REGISTRY,),
    username: str | None = None,
    password: str | None = None,
    clock: Callable[[], float] | None = None,
) -> UpstreamClient:
    settings = UpstreamSettings("registry.test", urls, username=username, password=password)
    transport = httpx.MockTransport(handler)
    if clock is None:
        return UpstreamClient(settings, transport=transport)
    return UpstreamClient(settings, transport=transport, clock=clock)


@pytest.fixture
def registry() -> FakeRegistry:
    return FakeRegistry(manifests={("library/nginx", "latest"): MANIFEST})


async def test_anonymous_token_flow_then_reuse(registry: FakeRegistry) -> None:
    client = client_for(registry)
    first = await client.get_manifest("library/nginx", "latest", ACCEPT)
    second = await client.get_manifest("library/nginx", "latest", ACCEPT)
    await client.aclose()

    assert first == second
    assert first.raw == MANIFEST
    assert first.digest == Digest.of(MANIFEST)
    assert first.media_type == mt.OCI_MANIFEST
    assert first.size == len(MANIFEST)
    assert client.requests["token"] == 1
    assert client.requests["GET manifest"] == 3  # 401, retry with the token, warm: one
    token_request = registry.token_requests[0]
    assert "authorization" not in token_request.headers
    assert dict(token_request.url.params) == {
        "service": SERVICE,
        "scope": "repository:library/nginx:pull",
    }
    assert registry.seen[-1].headers["authorization"] == "Bearer token-1-secret"
    assert registry.seen[-1].headers["accept"] == ", ".join(ACCEPT)
    assert registry.seen[-1].headers["user-agent"] == f"entrepot/{__version__}"


async def test_concurrent_requests_fetch_one_token(registry: FakeRegistry) -> None:
    client = client_for(registry)
    results = await asyncio.gather(
        *(client.get_manifest("library/nginx", "latest", ACCEPT) for _ in range(5))
    )
    await client.aclose()
    assert {r.raw for r in results} == {MANIFEST}
    # One 401; the other four waited for the token being fetched, then sent it.
    assert client.requests["GET manifest"] == 6
    assert client.requests["token"] == 1


async def test_basic_credentials_for_the_token_service(registry: FakeRegistry) -> None:
    registry.credentials = (USER, PASSWORD)
    client = client_for(registry, username=USER, password=PASSWORD)
    manifest = await client.get_manifest("library/nginx", "latest", ACCEPT)
    await client.aclose()

    assert manifest.raw == MANIFEST
    assert registry.token_requests[0].headers["authorization"] == basic(USER, PASSWORD)
    assert registry.seen[-1].headers["authorization"] == "Bearer token-1-secret"


async def test_new_repository_gets_its_token_up_front(registry: FakeRegistry) -> None:
    registry.manifests[("library/redis", "7")] = MANIFEST
    client = client_for(registry)
    await client.get_manifest("library/nginx", "latest", ACCEPT)
    await client.get_manifest("library/redis", "7", ACCEPT)
    await client.aclose()
    assert client.requests["GET manifest"] == 3  # no 401 for the second repository
    assert parse_qs(registry.token_requests[1].url.query.decode())["scope"] == [
        "repository:library/redis:pull"
    ]


async def test_basic_challenge() -> None:
    registry = FakeRegistry(auth="basic", credentials=(USER, PASSWORD))
    registry.manifests[("team/app", "1")] = MANIFEST
    client = client_for(registry, username=USER, password=PASSWORD)
    await client.get_manifest("team/app", "1", ACCEPT)
    await client.get_manifest("team/app", "1", ACCEPT)
    await client.aclose()
    assert client.requests["GET manifest"] == 3  # then Basic is sent up front
    assert registry.seen[-1].headers["authorization"] == basic(USER, PASSWORD)
    assert client.requests["token"] == 0

    anonymous = client_for(registry)
    with pytest.raises(UpstreamDenied, match="none are configured"):
        await anonymous.get_manifest("team/app", "1", ACCEPT)
    await anonymous.aclose()


async def test_token_is_fetched_again_when_it_expires(registry: FakeRegistry) -> None:
    registry.expires_in = 60
    now = [1000.0]
    client = client_for(registry, clock=lambda: now[0])
    await client.get_manifest("library/nginx", "latest", ACCEPT)
    now[0] += 30
    await client.get_manifest("library/nginx", "latest", ACCEPT)
    assert client.requests["token"] == 1
    now[0] += 25  # 55 s after issue: too close to expiry to use
    await client.get_manifest("library/nginx", "latest", ACCEPT)
    await client.aclose()

    assert client.requests["token"] == 2
    assert client.requests["GET manifest"] == 4  # fetched before sending: no extra 401
    assert registry.seen[-1].headers["authorization"] == "Bearer token-2-secret"


async def test_missing_expires_in_defaults_to_60_seconds(registry: FakeRegistry) -> None:
    registry.expires_in = None
    now = [0.0]
    client = client_for(registry, clock=lambda: now[0])
    await client.get_manifest("library/nginx", "latest", ACCEPT)
    now[0] = 45.0
    await client.get_manifest("library/nginx", "latest", ACCEPT)
    now[0] = 61.0
    await client.get_manifest("library/nginx", "latest", ACCEPT)
    await client.aclose()
    assert client.requests["token"] == 2


async def test_a_rejected_token_is_replaced() -> None:
    registry = FakeRegistry(manifests={("library/nginx", "latest"): MANIFEST})
    client = client_for(registry)
    await client.get_manifest("library/nginx", "latest", ACCEPT)
    registry.issued.clear()  # the registry forgets (revokes) every token
    await client.get_manifest("library/nginx", "latest", ACCEPT)
    await client.aclose()
    assert client.requests["token"] == 2
    assert registry.seen[-1].headers["authorization"] == "Bearer token-1-secret"


async def test_head_manifest_returns_the_digest(registry: FakeRegistry) -> None:
    client = client_for(registry)
    head = await client.head_manifest("library/nginx", "latest", ACCEPT)
    await client.aclose()
    assert head.digest == Digest.of(MANIFEST)
    assert head.size == len(MANIFEST)
    assert head.media_type == mt.OCI_MANIFEST
    assert head.raw is None
    assert client.requests["GET manifest"] == 0
    assert client.requests["HEAD manifest"] == 2


def serve(status: int, **kwargs: Any) -> Callable[[httpx.Request], httpx.Response]:
    """A handler answering every request alike."""
    return lambda request: httpx.Response(status, **kwargs)


async def test_head_manifest_without_digest_header() -> None:
    headers = {"content-type": mt.DOCKER_MANIFEST + "; charset=utf-8", "content-length": "10"}
    client = client_for(serve(200, headers=headers))
    head = await client.head_manifest("library/nginx", "latest", ACCEPT)
    by_digest = await client.head_manifest("library/nginx", str(Digest.of(MANIFEST)), ACCEPT)
    await client.aclose()
    assert head.digest is None
    assert head.media_type == mt.DOCKER_MANIFEST
    assert by_digest.digest == Digest.of(MANIFEST)


async def test_get_by_digest_with_other_bytes_is_invalid(registry: FakeRegistry) -> None:
    asked = Digest.of(b"something else")
    registry.manifests[("library/nginx", str(asked))] = MANIFEST
    client = client_for(registry)
    with pytest.raises(UpstreamInvalid, match=str(Digest.of(MANIFEST))):
        await client.get_manifest("library/nginx", str(asked), ACCEPT)
    await client.aclose()


async def test_digest_header_disagreeing_with_the_bytes_is_invalid() -> None:
    headers = {"content-type": mt.OCI_MANIFEST, "docker-content-digest": str(Digest.of(b"x"))}
    client = client_for(serve(200, headers=headers, content=MANIFEST))
    with pytest.raises(UpstreamInvalid, match="Docker-Content-Digest"):
        await client.get_manifest("library/nginx", str(Digest.of(MANIFEST)), ACCEPT)
    with pytest.raises(UpstreamInvalid, match="Docker-Content-Digest"):
        await client.get_manifest("library/nginx", "latest", ACCEPT)
    await client.aclose()


async def test_media_type_falls_back_to_the_body() -> None:
    client = client_for(serve(200, headers={"content-type": "application/json"}, content=MANIFEST))
    manifest = await client.get_manifest("library/nginx", "latest", ACCEPT)
    await client.aclose()
    assert manifest.media_type == mt.OCI_MANIFEST


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"not json", "not a JSON object"),
        (b"[]", "not a JSON object"),
        (b" " * (4 * 1024 * 1024 + 1), "exceeds"),
    ],
)
async def test_bad_manifest_bodies_are_invalid(content: bytes, match: str) -> None:
    client = client_for(serve(200, headers={"content-type": mt.OCI_MANIFEST}, content=content))
    with pytest.raises(UpstreamInvalid, match=match):
        await client.get_manifest("library/nginx", "latest", ACCEPT)
    await client.aclose()


async def test_unknown_manifest_is_not_found(registry: FakeRegistry) -> None:
    client = client_for(registry)
    with pytest.raises(UpstreamNotFound, match="MANIFEST_UNKNOWN") as err:
        await client.get_manifest("library/nginx", "nope", ACCEPT)
    await client.aclose()
    assert err.value.upstream == "registry.test"


async def test_rate_limited_with_retry_after_and_no_failover() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url.host))
        error = {"errors": [{"code": "TOOMANYREQUESTS", "message": "slow down"}]}
        return httpx.Response(429, headers={"retry-after": "21"}, json=error)

    client = client_for(handler, urls=(REGISTRY, MIRROR))
    with pytest.raises(UpstreamRateLimited) as err:
        await client.get_manifest("library/nginx", "latest", ACCEPT)
    await client.aclose()
    assert err.value.retry_after == "21"
    assert seen == ["registry.test"]


async def test_failover_to_the_next_url_on_503(registry: FakeRegistry) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "registry.test":
            return httpx.Response(503)
        return registry(request)

    client = client_for(handler, urls=(REGISTRY, MIRROR))
    manifest = await client.get_manifest("library/nginx", "latest", ACCEPT)
    assert manifest.raw == MANIFEST
    await client.get_manifest("library/nginx", "latest", ACCEPT)
    await client.aclose()
    # The second request went straight to the mirror that answered.
    assert client.requests["GET manifest"] == 4  # 503, 401, 200 with token, 200


async def test_unreachable_everywhere_is_unavailable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client = client_for(handler, urls=(REGISTRY, MIRROR))
    with pytest.raises(UpstreamUnavailable) as err:
        await client.get_manifest("library/nginx", "latest", ACCEPT)
    await client.aclose()
    assert "registry.test" in str(err.value)
    assert REGISTRY in str(err.value) and MIRROR in str(err.value)
    assert client.requests["GET manifest"] == 2


async def test_token_service_down_is_unavailable(registry: FakeRegistry) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.test":
            raise httpx.ConnectTimeout("timed out", request=request)
        return registry(request)

    client = client_for(handler)
    with pytest.raises(UpstreamUnavailable, match="token"):
        await client.get_manifest("library/nginx", "latest", ACCEPT)
    await client.aclose()


async def test_blob_redirect_to_cdn_drops_authorization(registry: FakeRegistry) -> None:
    registry.blobs[str(BLOB_DIGEST)] = BLOB
    client = client_for(registry)
    async with client.open_blob("library/nginx", BLOB_DIGEST) as blob:
        data = b"".join([chunk async for chunk in blob.chunks])
    await client.aclose()

    assert data == BLOB
    assert registry.seen[-1].headers["authorization"].startswith("Bearer ")
    (cdn,) = registry.cdn_requests
    assert "authorization" not in cdn.headers
    assert cdn.headers["accept-encoding"] == "identity"
    assert client.requests["GET blob"] == 2


async def test_stat_blob_follows_the_redirect(registry: FakeRegistry) -> None:
    registry.blobs[str(BLOB_DIGEST)] = BLOB
    client = client_for(registry)
    assert await client.stat_blob("library/nginx", BLOB_DIGEST) == len(BLOB)
    with pytest.raises(UpstreamNotFound):
        await client.stat_blob("library/nginx", Digest.of(b"other"))
    await client.aclose()
    assert registry.cdn_requests[0].method == "HEAD"


class Chunks(httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes], error: Exception | None = None) -> None:
        self.chunks, self.error = chunks, error
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        if self.error:
            raise self.error

    async def aclose(self) -> None:
        self.closed = True


async def test_open_blob_streams_and_closes() -> None:
    stream = Chunks([b"a" * 10, b"b" * 10, b"c" * 5])
    client = client_for(serve(200, headers={"content-length": "25"}, stream=stream))
    async with client.open_blob("library/nginx", BLOB_DIGEST) as blob:
        assert blob.size == 25
        received = [chunk async for chunk in blob.chunks]
    await client.aclose()
    assert received == [b"a" * 10, b"b" * 10, b"c" * 5]
    assert stream.closed


async def test_open_blob_closes_when_left_early() -> None:
    stream = Chunks([b"a" * 10, b"b" * 10])
    client = client_for(serve(200, stream=stream))
    async with client.open_blob("library/nginx", BLOB_DIGEST) as blob:
        assert blob.size is None
        assert await anext(blob.chunks) == b"a" * 10
    await client.aclose()
    assert stream.closed


async def test_blob_sent_with_content_encoding_is_decoded() -> None:
    headers = {"content-encoding": "gzip", "content-length": str(len(gzip.compress(BLOB)))}
    client = client_for(serve(200, headers=headers, content=gzip.compress(BLOB)))
    async with client.open_blob("library/nginx", BLOB_DIGEST) as blob:
        assert blob.size is None
        assert b"".join([chunk async for chunk in blob.chunks]) == BLOB
    await client.aclose()


async def test_dropped_blob_connection_is_unavailable() -> None:
    stream = Chunks([b"a" * 10], httpx.RemoteProtocolError("peer closed connection"))
    client = client_for(serve(200, headers={"content-length": "100"}, stream=stream))
    with pytest.raises(UpstreamUnavailable, match="after 10 bytes"):
        async with client.open_blob("library/nginx", BLOB_DIGEST) as blob:
            async for _ in blob.chunks:
                pass
    await client.aclose()


async def test_short_blob_body_is_unavailable() -> None:
    stream = Chunks([b"a" * 10])
    client = client_for(serve(200, headers={"content-length": "100"}, stream=stream))
    with pytest.raises(UpstreamUnavailable, match="10 of 100"):
        async with client.open_blob("library/nginx", BLOB_DIGEST) as blob:
            async for _ in blob.chunks:
                pass
    await client.aclose()


async def test_list_tags_follows_link_pagination(registry: FakeRegistry) -> None:
    registry.tags = ["1", "2", "3", "4", "5"]
    client = client_for(registry)
    tags = await client.list_tags("library/nginx")
    await client.aclose()
    assert tags == ["1", "2", "3", "4", "5"]
    assert client.requests["GET tags"] == 4  # 401, then three pages
    assert registry.seen[-1].url.params["last"] == "4"


async def test_secrets_never_appear_in_errors(registry: FakeRegistry) -> None:
    registry.credentials = (USER, "another-password")  # ours is refused by the token service
    client = client_for(registry, username=USER, password=PASSWORD)
    with pytest.raises(UpstreamDenied) as refused:
        await client.get_manifest("library/nginx", "latest", ACCEPT)
    await client.aclose()

    registry.credentials = (USER, PASSWORD)

    def revoke_every_token(request: httpx.Request) -> httpx.Response:
        if request.url.host == "registry.test":
            registry.issued.clear()
        return registry(request)

    client = client_for(revoke_every_token, username=USER, password=PASSWORD)
    with pytest.raises(UpstreamDenied) as rejected:
        await client.get_manifest("library/nginx", "latest", ACCEPT)
    await client.aclose()

    secrets = [PASSWORD, basic(USER, PASSWORD).split()[1], "token-1-secret", "token-2-secret"]
    settings = UpstreamSettings("registry.test", (REGISTRY,), username=USER, password=PASSWORD)
    for text in [*error_texts(refused.value), *error_texts(rejected.value), repr(settings)]:
        for secret in secrets:
            assert secret not in text
    assert "refused" in str(refused.value)


def error_texts(exc: BaseException | None) -> list[str]:
    texts: list[str] = []
    while exc is not None:
        texts += [str(exc), repr(exc)]
        exc = exc.__cause__ or exc.__context__
    return texts


def test_challenges_are_parsed() -> None:
    (challenge,) = parse_challenges(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/nginx:pull",error="insufficient_scope"'
    )
    assert challenge.scheme == "bearer"
    assert challenge.params == {
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
        "scope": "repository:library/nginx:pull",
        "error": "insufficient_scope",
    }
    both = parse_challenges('Basic realm="a \\"b\\"", Bearer realm="x",scope="y"')
    assert [(c.scheme, c.params) for c in both] == [
        ("basic", {"realm": 'a "b"'}),
        ("bearer", {"realm": "x", "scope": "y"}),
    ]


async def test_upstream_errors_share_a_base() -> None:
    client = client_for(serve(400))
    with pytest.raises(UpstreamError):
        await client.list_tags("library/nginx")
    await client.aclose()


# -- blob bodies over aiohttp, against loopback servers ------------------------------------

BIG_BLOB = bytes(range(256)) * (3 * 4096 + 7)  # 3 MiB and a bit: several 1 MiB chunks


@dataclass
class LoopbackRegistry:
    """A registry on a loopback aiohttp server: blob GETs, optional token auth (its token
    service on the same server), redirects to a second server (the CDN) or within itself,
    or a fixed error status."""

    server: TestServer
    cdn: TestServer
    auth: str = "none"  # "none", "bearer" or "basic"
    redirect: str = "none"  # "none", "cdn" (via a same-origin hop) or "loop"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    seen: list[web.Request] = field(default_factory=list)
    token_requests: list[web.Request] = field(default_factory=list)
    cdn_requests: list[web.Request] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    async def blob(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request)
        name = request.match_info["name"]
        sent = request.headers.get("Authorization")
        if self.auth == "bearer" and sent not in {f"Bearer {t}" for t in self.issued}:
            realm = f"{self.url}/token"
            scope = f"repository:{name}:pull"
            challenge = f'Bearer realm="{realm}",service="{SERVICE}",scope="{scope}"'
            return aiohttp_unauthorized(challenge)
        if self.auth == "basic" and sent != basic(USER, PASSWORD):
            return aiohttp_unauthorized('Basic realm="registry"')
        if self.status != 200:
            error = {"errors": [{"code": "BLOB_UNKNOWN", "message": "blob unknown"}]}
            return web.json_response(error, status=self.status, headers=self.headers)
        if self.redirect == "cdn":
            raise web.HTTPTemporaryRedirect(f"/hop/{request.match_info['digest']}")
        if self.redirect == "loop":
            raise web.HTTPTemporaryRedirect(request.path)
        return web.Response(body=BIG_BLOB, headers=self.headers)

    async def hop(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request)
        raise web.HTTPTemporaryRedirect(str(self.cdn.make_url(f"/data/{request.path}")))

    async def cdn_blob(self, request: web.Request) -> web.StreamResponse:
        self.cdn_requests.append(request)
        return web.Response(body=BIG_BLOB)

    async def token(self, request: web.Request) -> web.StreamResponse:
        self.token_requests.append(request)
        value = f"token-{len(self.issued) + 1}-secret"
        self.issued.append(value)
        return web.json_response({"token": value, "expires_in": 300})


def aiohttp_unauthorized(challenge: str) -> web.Response:
    error = {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}
    return web.json_response(error, status=401, headers={"WWW-Authenticate": challenge})


@pytest.fixture
async def loopback(monkeypatch: pytest.MonkeyPatch) -> AsyncGenerator[LoopbackRegistry, None]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    registry_app, cdn_app = web.Application(), web.Application()
    server, cdn = TestServer(registry_app, host="127.0.0.1"), TestServer(cdn_app, host="127.0.0.1")
    registry = LoopbackRegistry(server, cdn)
    registry_app.router.add_get("/v2/{name:.+}/blobs/{digest}", registry.blob)
    registry_app.router.add_get("/hop/{digest}", registry.hop)
    registry_app.router.add_get("/token", registry.token)
    cdn_app.router.add_get("/data/{path:.*}", registry.cdn_blob)
    await server.start_server()
    await cdn.start_server()
    yield registry
    await server.close()
    await cdn.close()


def loopback_client(*urls: str, username: str | None = None) -> UpstreamClient:
    password = PASSWORD if username else None
    settings = UpstreamSettings("registry.test", urls, username=username, password=password)
    return UpstreamClient(settings)  # no transport: blobs go over aiohttp


async def download(
    client: UpstreamClient, digest: Digest = BLOB_DIGEST
) -> tuple[int | None, bytes]:
    async with client.open_blob("library/nginx", digest) as blob:
        return blob.size, b"".join([chunk async for chunk in blob.chunks])


def dead_url() -> str:
    with socket.socket() as sock:  # a port nothing listens on once it is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def test_aiohttp_anonymous_blob(loopback: LoopbackRegistry) -> None:
    client = loopback_client(loopback.url)
    size, data = await download(client)
    session = client._blobs._session if client._blobs else None
    await client.aclose()

    assert (size, data) == (len(BIG_BLOB), BIG_BLOB)
    (request,) = loopback.seen
    assert request.path == f"/v2/library/nginx/blobs/{BLOB_DIGEST}"
    assert request.headers["Accept-Encoding"] == "identity"
    assert request.headers["User-Agent"] == f"entrepot/{__version__}"
    assert "Authorization" not in request.headers
    assert client.requests["GET blob"] == 1
    assert session is not None and session.closed


async def test_aiohttp_blob_with_a_bearer_token(loopback: LoopbackRegistry) -> None:
    loopback.auth = "bearer"
    client = loopback_client(loopback.url)
    first = await download(client)
    second = await download(client)  # the token goes up front now
    await client.aclose()

    assert first == second == (len(BIG_BLOB), BIG_BLOB)
    assert [r.headers.get("Authorization") for r in loopback.seen] == [
        None,
        "Bearer token-1-secret",
        "Bearer token-1-secret",
    ]
    (token,) = loopback.token_requests
    assert token.query["scope"] == "repository:library/nginx:pull"
    assert token.query["service"] == SERVICE
    assert client.requests["GET blob"] == 3
    assert client.requests["token"] == 1


async def test_aiohttp_blob_with_basic_credentials(loopback: LoopbackRegistry) -> None:
    loopback.auth = "basic"
    client = loopback_client(loopback.url, username=USER)
    assert await download(client) == (len(BIG_BLOB), BIG_BLOB)
    await client.aclose()
    assert loopback.seen[-1].headers["Authorization"] == basic(USER, PASSWORD)

    anonymous = loopback_client(loopback.url)
    with pytest.raises(UpstreamDenied):
        await download(anonymous)
    await anonymous.aclose()


async def test_aiohttp_redirect_to_another_host_drops_authorization(
    loopback: LoopbackRegistry,
) -> None:
    loopback.auth, loopback.redirect = "bearer", "cdn"
    client = loopback_client(loopback.url)
    assert await download(client) == (len(BIG_BLOB), BIG_BLOB)
    await client.aclose()

    # 401, then the authorized GET, then a same-origin hop (keeps it), then the CDN.
    hops = [(r.path.split("/")[1], r.headers.get("Authorization")) for r in loopback.seen]
    assert hops == [("v2", None), ("v2", "Bearer token-1-secret"), ("hop", "Bearer token-1-secret")]
    (cdn,) = loopback.cdn_requests
    assert loopback.cdn.port != loopback.server.port
    assert "Authorization" not in cdn.headers
    assert cdn.headers["Accept-Encoding"] == "identity"
    assert client.requests["GET blob"] == 2


async def test_aiohttp_redirect_loop_is_unavailable(loopback: LoopbackRegistry) -> None:
    loopback.redirect = "loop"
    client = loopback_client(loopback.url)
    with pytest.raises(UpstreamUnavailable, match="more than 5 redirects"):
        await download(client)
    await client.aclose()
    assert len(loopback.seen) == 6


async def test_aiohttp_unknown_blob_is_not_found(loopback: LoopbackRegistry) -> None:
    loopback.status = 404
    client = loopback_client(loopback.url)
    with pytest.raises(UpstreamNotFound, match=r"HTTP 404 \(BLOB_UNKNOWN: blob unknown\)"):
        await download(client)
    await client.aclose()


async def test_aiohttp_rate_limited_with_retry_after(loopback: LoopbackRegistry) -> None:
    loopback.status, loopback.headers = 429, {"Retry-After": "7"}
    client = loopback_client(loopback.url, dead_url())
    with pytest.raises(UpstreamRateLimited) as limited:
        await download(client)
    await client.aclose()
    assert limited.value.retry_after == "7"
    assert client.requests["GET blob"] == 1  # no failover on 429


async def test_aiohttp_failover_to_a_live_url(loopback: LoopbackRegistry) -> None:
    async def unavailable_handler(_: web.Request) -> web.Response:
        return web.Response(status=503)

    failing = web.Application()
    failing.router.add_get("/{tail:.*}", unavailable_handler)
    unavailable = TestServer(failing, host="127.0.0.1")
    await unavailable.start_server()
    broken = str(unavailable.make_url("")).rstrip("/")
    client = loopback_client(dead_url(), broken, loopback.url)
    first = await download(client)
    second = await download(client)  # straight to the url that answered
    await client.aclose()
    await unavailable.close()

    assert first == second == (len(BIG_BLOB), BIG_BLOB)
    assert client.requests["GET blob"] == 4
    assert len(loopback.seen) == 2


async def test_aiohttp_unreachable_everywhere_is_unavailable() -> None:
    client = loopback_client(dead_url(), dead_url())
    with pytest.raises(UpstreamUnavailable, match="ClientConnectorError"):
        await download(client)
    await client.aclose()


async def test_aiohttp_gzip_encoded_blob_is_decoded(loopback: LoopbackRegistry) -> None:
    encoded = gzip.compress(BIG_BLOB)

    async def gzipped(_: web.Request) -> web.Response:
        return web.Response(body=encoded, headers={"Content-Encoding": "gzip"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", gzipped)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    client = loopback_client(str(server.make_url("")).rstrip("/"))
    assert await download(client) == (None, BIG_BLOB)
    await client.aclose()
    await server.close()


async def cut_off_server(body: bytes, length: int) -> tuple[asyncio.Server, str]:
    """A server that sends headers and part of a body, then closes the connection."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % length + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


async def test_aiohttp_connection_cut_mid_body_is_unavailable() -> None:
    server, url = await cut_off_server(b"a" * 10, 100)
    client = loopback_client(url)
    with pytest.raises(UpstreamUnavailable, match="after 10 bytes"):
        async with client.open_blob("library/nginx", BLOB_DIGEST) as blob:
            assert blob.size == 100
            async for _ in blob.chunks:
                pass
    await client.aclose()
    server.close()
    await server.wait_closed()


async def test_aiohttp_blob_left_early_is_released(loopback: LoopbackRegistry) -> None:
    client = loopback_client(loopback.url)
    async with client.open_blob("library/nginx", BLOB_DIGEST) as blob:
        assert len(await anext(blob.chunks)) <= 1 << 20
    assert await download(client) == (len(BIG_BLOB), BIG_BLOB)
    await client.aclose()
