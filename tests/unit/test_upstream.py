"""The upstream client against a fake registry (httpx.MockTransport): token auth as Docker
Hub does it, Basic auth, failover, errors, redirects to a CDN, streaming, pagination."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

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
