"""The upstream client against fake registries on loopback (real servers on 127.0.0.1, so
the production HTTP path runs): token auth as Docker Hub does it, Basic auth, failover,
errors, timeouts, redirects to a CDN, streaming, Content-Encoding, pagination."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from entrepot import __version__
from entrepot.oci import mediatypes as mt
from entrepot.oci.digest import Digest
from entrepot.proxy.upstream_auth import parse_challenges
from entrepot.proxy.upstream_client import UpstreamClient, UpstreamSettings
from entrepot.proxy.upstream_errors import (
    UpstreamDenied,
    UpstreamError,
    UpstreamInvalid,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from tests.loopback import Handler, Servers, dead_url

SERVICE = "registry.test"
USER, PASSWORD = "alice", "pa55-w0rd-secret"
ACCEPT = [mt.OCI_MANIFEST, mt.DOCKER_MANIFEST]
MANIFEST = json.dumps(
    {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": {}, "layers": []}
).encode()
BLOB = bytes(range(256)) * (3 * 4096 + 7)  # 3 MiB and a bit: several 1 MiB chunks
BLOB_DIGEST = Digest.of(BLOB)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def error_response(status: int, code: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"errors": [{"code": code, "message": code.lower().replace("_", " ")}]}
    return web.json_response(body, status=status, headers=headers)


def rate_limited(retry_after: str) -> Handler:
    async def handle(_: web.BaseRequest) -> web.StreamResponse:
        return error_response(429, "TOOMANYREQUESTS", {"Retry-After": retry_after})

    return handle


@dataclass
class FakeRegistry:
    """A registry with Docker token auth ("bearer"), Basic auth or none; its token service
    and its CDN run on servers of their own. Blob GETs redirect to the CDN through a hop on
    the registry itself (which keeps the Authorization), or loop (``redirect="loop"``)."""

    auth: str = "bearer"
    credentials: tuple[str, str] | None = None  # required by the token service / Basic
    expires_in: int | None = 300
    redirect: str = "cdn"  # or "loop"
    revoke_all: bool = False  # forget every token at every request
    manifests: dict[tuple[str, str], bytes] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    seen: list[web.BaseRequest] = field(default_factory=list)
    token_requests: list[web.BaseRequest] = field(default_factory=list)
    cdn_requests: list[web.BaseRequest] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)
    url: str = ""
    realm: str = ""
    cdn: str = ""

    async def start(self, loopback: Servers) -> FakeRegistry:
        self.realm = (await loopback.start(self.token)).url + "/token"
        self.cdn = (await loopback.start(self.cdn_blob)).url
        self.url = (await loopback.start(self.registry)).url
        return self

    async def registry(self, request: web.BaseRequest) -> web.StreamResponse:
        self.seen.append(request)
        if self.revoke_all:
            self.issued.clear()
        if request.path.startswith("/hop/"):
            return redirect(f"{self.cdn}/data/{request.path.rsplit('/', 1)[1]}")
        name = request.path.removeprefix("/v2/").rsplit("/", 2)[0]
        sent = request.headers.get("Authorization")
        if self.auth == "bearer" and sent not in {f"Bearer {t}" for t in self.issued}:
            scope = f"repository:{name}:pull"
            return unauthorized(f'Bearer realm="{self.realm}",service="{SERVICE}",scope="{scope}"')
        if self.auth == "basic" and (not self.credentials or sent != basic(*self.credentials)):
            return unauthorized('Basic realm="registry"')
        kind, _, ref = request.path.removeprefix(f"/v2/{name}/").partition("/")
        if kind == "manifests" and (name, ref) in self.manifests:
            raw = self.manifests[(name, ref)]
            headers = {
                "Content-Type": mt.OCI_MANIFEST,
                "Docker-Content-Digest": str(Digest.of(raw)),
            }
            return web.Response(body=raw, headers=headers)  # HEAD: the length, no body
        if kind == "blobs" and ref in self.blobs:
            return redirect(request.path if self.redirect == "loop" else f"/hop/{ref}")
        if kind == "tags":
            return self.tag_page(request, name)
        return error_response(404, "MANIFEST_UNKNOWN" if kind == "manifests" else "BLOB_UNKNOWN")

    def tag_page(self, request: web.BaseRequest, name: str) -> web.Response:
        rest = [t for t in self.tags if t > request.query.get("last", "")]
        page, more = rest[:2], rest[2:]
        headers = {}
        if more:
            headers["Link"] = f'</v2/{name}/tags/list?n=2&last={page[-1]}>; rel="next"'
        return web.json_response({"name": name, "tags": page}, headers=headers)

    async def token(self, request: web.BaseRequest) -> web.StreamResponse:
        self.token_requests.append(request)
        if self.credentials and request.headers.get("Authorization") != basic(*self.credentials):
            return web.json_response({"details": "incorrect username or password"}, status=401)
        value = f"token-{len(self.issued) + 1}-secret"
        self.issued.append(value)
        body: dict[str, object] = {"token": value}
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        return web.json_response(body)

    async def cdn_blob(self, request: web.BaseRequest) -> web.StreamResponse:
        self.cdn_requests.append(request)
        return web.Response(body=self.blobs[request.path.rsplit("/", 1)[1]])


def redirect(location: str) -> web.Response:
    return web.Response(status=307, headers={"Location": location})


def unauthorized(challenge: str) -> web.Response:
    return error_response(401, "UNAUTHORIZED", {"WWW-Authenticate": challenge})


def answer(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Handler:
    """A handler answering every request alike."""

    async def handle(_: web.BaseRequest) -> web.StreamResponse:
        return web.Response(status=status, body=body, headers=headers)

    return handle


def client_for(
    *urls: str,
    username: str | None = None,
    password: str | None = None,
    clock: Callable[[], float] | None = None,
    read_timeout: float = 30.0,
) -> UpstreamClient:
    settings = UpstreamSettings(
        "registry.test", urls, username=username, password=password, read_timeout=read_timeout
    )
    return UpstreamClient(settings) if clock is None else UpstreamClient(settings, clock=clock)


async def download(client: UpstreamClient) -> tuple[int | None, bytes]:
    async with client.open_blob("library/nginx", BLOB_DIGEST) as blob:
        return blob.size, b"".join([chunk async for chunk in blob.chunks])


@pytest.fixture
async def registry(loopback: Servers) -> FakeRegistry:
    registry = FakeRegistry(manifests={("library/nginx", "latest"): MANIFEST})
    registry.blobs[str(BLOB_DIGEST)] = BLOB
    return await registry.start(loopback)


# -- signing in ----------------------------------------------------------------------------


async def test_anonymous_token_flow_then_reuse(registry: FakeRegistry) -> None:
    client = client_for(registry.url)
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
    assert "Authorization" not in token_request.headers
    assert dict(token_request.query) == {
        "service": SERVICE,
        "scope": "repository:library/nginx:pull",
    }
    assert registry.seen[-1].headers["Authorization"] == "Bearer token-1-secret"
    assert registry.seen[-1].headers["Accept"] == ", ".join(ACCEPT)
    assert registry.seen[-1].headers["User-Agent"] == f"entrepot/{__version__}"


async def test_concurrent_requests_fetch_one_token(registry: FakeRegistry) -> None:
    client = client_for(registry.url)
    results = await asyncio.gather(
        *(client.get_manifest("library/nginx", "latest", ACCEPT) for _ in range(5))
    )
    await client.aclose()
    assert {r.raw for r in results} == {MANIFEST}
    # Five 401s (all were sent before the first challenge came back), one token fetch
    # shared by all five, five retries with it.
    assert client.requests["GET manifest"] == 10
    assert client.requests["token"] == 1


async def test_basic_credentials_for_the_token_service(registry: FakeRegistry) -> None:
    registry.credentials = (USER, PASSWORD)
    client = client_for(registry.url, username=USER, password=PASSWORD)
    manifest = await client.get_manifest("library/nginx", "latest", ACCEPT)
    await client.aclose()

    assert manifest.raw == MANIFEST
    assert registry.token_requests[0].headers["Authorization"] == basic(USER, PASSWORD)
    assert registry.seen[-1].headers["Authorization"] == "Bearer token-1-secret"


async def test_new_repository_gets_its_token_up_front(registry: FakeRegistry) -> None:
    registry.manifests[("library/redis", "7")] = MANIFEST
    client = client_for(registry.url)
    await client.get_manifest("library/nginx", "latest", ACCEPT)
    await client.get_manifest("library/redis", "7", ACCEPT)
    await client.aclose()
    assert client.requests["GET manifest"] == 3  # no 401 for the second repository
    assert registry.token_requests[1].query["scope"] == "repository:library/redis:pull"


async def test_basic_challenge(loopback: Servers) -> None:
    registry = FakeRegistry(auth="basic", credentials=(USER, PASSWORD))
    registry.manifests[("team/app", "1")] = MANIFEST
    await registry.start(loopback)
    client = client_for(registry.url, username=USER, password=PASSWORD)
    await client.get_manifest("team/app", "1", ACCEPT)
    await client.get_manifest("team/app", "1", ACCEPT)
    await client.aclose()
    assert client.requests["GET manifest"] == 3  # then Basic is sent up front
    assert registry.seen[-1].headers["Authorization"] == basic(USER, PASSWORD)
    assert client.requests["token"] == 0

    anonymous = client_for(registry.url)
    with pytest.raises(UpstreamDenied, match="none are configured"):
        await anonymous.get_manifest("team/app", "1", ACCEPT)
    await anonymous.aclose()


async def test_token_is_fetched_again_when_it_expires(registry: FakeRegistry) -> None:
    registry.expires_in = 60
    now = [1000.0]
    client = client_for(registry.url, clock=lambda: now[0])
    await client.get_manifest("library/nginx", "latest", ACCEPT)
    now[0] += 30
    await client.get_manifest("library/nginx", "latest", ACCEPT)
    assert client.requests["token"] == 1
    now[0] += 25  # 55 s after issue: too close to expiry to use
    await client.get_manifest("library/nginx", "latest", ACCEPT)
    await client.aclose()

    assert client.requests["token"] == 2
    assert client.requests["GET manifest"] == 4  # fetched before sending: no extra 401
    assert registry.seen[-1].headers["Authorization"] == "Bearer token-2-secret"


async def test_missing_expires_in_defaults_to_60_seconds(registry: FakeRegistry) -> None:
    registry.expires_in = None
    now = [0.0]
    client = client_for(registry.url, clock=lambda: now[0])
    await client.get_manifest("library/nginx", "latest", ACCEPT)
    now[0] = 45.0
    await client.get_manifest("library/nginx", "latest", ACCEPT)
    now[0] = 61.0
    await client.get_manifest("library/nginx", "latest", ACCEPT)
    await client.aclose()
    assert client.requests["token"] == 2


async def test_a_rejected_token_is_replaced(registry: FakeRegistry) -> None:
    client = client_for(registry.url)
    await client.get_manifest("library/nginx", "latest", ACCEPT)
    registry.issued.clear()  # the registry forgets (revokes) every token
    await client.get_manifest("library/nginx", "latest", ACCEPT)
    await client.aclose()
    assert client.requests["token"] == 2
    assert registry.seen[-1].headers["Authorization"] == "Bearer token-1-secret"


async def test_secrets_never_appear_in_errors(registry: FakeRegistry) -> None:
    registry.credentials = (USER, "another-password")  # ours is refused by the token service
    client = client_for(registry.url, username=USER, password=PASSWORD)
    with pytest.raises(UpstreamDenied) as refused:
        await client.get_manifest("library/nginx", "latest", ACCEPT)
    await client.aclose()

    registry.credentials, registry.revoke_all = (USER, PASSWORD), True
    client = client_for(registry.url, username=USER, password=PASSWORD)
    with pytest.raises(UpstreamDenied) as rejected:
        await client.get_manifest("library/nginx", "latest", ACCEPT)
    await client.aclose()

    secrets = [PASSWORD, basic(USER, PASSWORD).split()[1], "token-1-secret", "token-2-secret"]
    settings = UpstreamSettings("registry.test", (registry.url,), username=USER, password=PASSWORD)
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


# -- manifests -----------------------------------------------------------------------------


async def test_head_manifest_returns_the_digest(registry: FakeRegistry) -> None:
    client = client_for(registry.url)
    head = await client.head_manifest("library/nginx", "latest", ACCEPT)
    await client.aclose()
    assert head.digest == Digest.of(MANIFEST)
    assert head.size == len(MANIFEST)
    assert head.media_type == mt.OCI_MANIFEST
    assert head.raw is None
    assert client.requests["GET manifest"] == 0
    assert client.requests["HEAD manifest"] == 2
    assert [r.method for r in registry.seen] == ["HEAD", "HEAD"]


async def test_head_manifest_without_digest_header(loopback: Servers) -> None:
    headers = {"Content-Type": mt.DOCKER_MANIFEST + "; charset=utf-8"}
    server = await loopback.start(answer(200, b"x" * 10, headers))
    client = client_for(server.url)
    head = await client.head_manifest("library/nginx", "latest", ACCEPT)
    by_digest = await client.head_manifest("library/nginx", str(Digest.of(MANIFEST)), ACCEPT)
    await client.aclose()
    assert head.digest is None
    assert head.size == 10
    assert head.media_type == mt.DOCKER_MANIFEST
    assert by_digest.digest == Digest.of(MANIFEST)


async def test_get_by_digest_with_other_bytes_is_invalid(registry: FakeRegistry) -> None:
    asked = Digest.of(b"something else")
    registry.manifests[("library/nginx", str(asked))] = MANIFEST
    client = client_for(registry.url)
    with pytest.raises(UpstreamInvalid, match=str(Digest.of(MANIFEST))):
        await client.get_manifest("library/nginx", str(asked), ACCEPT)
    await client.aclose()


async def test_digest_header_disagreeing_with_the_bytes_is_invalid(loopback: Servers) -> None:
    headers = {"Content-Type": mt.OCI_MANIFEST, "Docker-Content-Digest": str(Digest.of(b"x"))}
    server = await loopback.start(answer(200, MANIFEST, headers))
    client = client_for(server.url)
    with pytest.raises(UpstreamInvalid, match="Docker-Content-Digest"):
        await client.get_manifest("library/nginx", str(Digest.of(MANIFEST)), ACCEPT)
    with pytest.raises(UpstreamInvalid, match="Docker-Content-Digest"):
        await client.get_manifest("library/nginx", "latest", ACCEPT)
    await client.aclose()


async def test_media_type_falls_back_to_the_body(loopback: Servers) -> None:
    server = await loopback.start(answer(200, MANIFEST, {"Content-Type": "application/json"}))
    client = client_for(server.url)
    manifest = await client.get_manifest("library/nginx", "latest", ACCEPT)
    await client.aclose()
    assert manifest.media_type == mt.OCI_MANIFEST


async def test_gzip_encoded_manifest_keeps_its_exact_bytes(loopback: Servers) -> None:
    headers = {"Content-Type": mt.OCI_MANIFEST, "Content-Encoding": "gzip"}
    server = await loopback.start(answer(200, gzip.compress(MANIFEST), headers))
    client = client_for(server.url)
    manifest = await client.get_manifest("library/nginx", str(Digest.of(MANIFEST)), ACCEPT)
    await client.aclose()
    assert manifest.raw == MANIFEST


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"not json", "not a JSON object"),
        (b"[]", "not a JSON object"),
        (b" " * (4 * 1024 * 1024 + 1), "exceeds"),
    ],
)
async def test_bad_manifest_bodies_are_invalid(
    loopback: Servers, content: bytes, match: str
) -> None:
    server = await loopback.start(answer(200, content, {"Content-Type": mt.OCI_MANIFEST}))
    client = client_for(server.url)
    with pytest.raises(UpstreamInvalid, match=match):
        await client.get_manifest("library/nginx", "latest", ACCEPT)
    await client.aclose()


async def test_unknown_manifest_is_not_found(registry: FakeRegistry) -> None:
    client = client_for(registry.url)
    with pytest.raises(UpstreamNotFound, match="MANIFEST_UNKNOWN") as err:
        await client.get_manifest("library/nginx", "nope", ACCEPT)
    await client.aclose()
    assert err.value.upstream == "registry.test"


async def test_list_tags_follows_link_pagination(registry: FakeRegistry) -> None:
    registry.tags = ["1", "2", "3", "4", "5"]
    client = client_for(registry.url)
    tags = await client.list_tags("library/nginx")
    await client.aclose()
    assert tags == ["1", "2", "3", "4", "5"]
    assert client.requests["GET tags"] == 4  # 401, then three pages
    assert registry.seen[-1].query["last"] == "4"


async def test_upstream_errors_share_a_base(loopback: Servers) -> None:
    client = client_for((await loopback.start(answer(400))).url)
    with pytest.raises(UpstreamError):
        await client.list_tags("library/nginx")
    await client.aclose()


# -- failover, rate limits, timeouts --------------------------------------------------------


async def test_rate_limited_with_retry_after_and_no_failover(loopback: Servers) -> None:
    first = await loopback.start(rate_limited("21"))
    second = await loopback.start(answer(200))
    client = client_for(first.url, second.url)
    with pytest.raises(UpstreamRateLimited, match="TOOMANYREQUESTS") as err:
        await client.get_manifest("library/nginx", "latest", ACCEPT)
    await client.aclose()
    assert err.value.retry_after == "21"
    assert len(first.requests) == 1
    assert second.requests == []


async def test_failover_to_the_next_url_on_503(loopback: Servers, registry: FakeRegistry) -> None:
    unavailable = await loopback.start(answer(503))
    client = client_for(dead_url(), unavailable.url, registry.url)
    manifest = await client.get_manifest("library/nginx", "latest", ACCEPT)
    assert manifest.raw == MANIFEST
    await client.get_manifest("library/nginx", "latest", ACCEPT)
    assert await download(client) == (len(BLOB), BLOB)
    await client.aclose()
    # Refused, 503, 401, 200 with the token; then straight to the url that answered.
    assert client.requests["GET manifest"] == 5
    assert len(unavailable.requests) == 1
    assert client.requests["GET blob"] == 1


async def test_unreachable_everywhere_is_unavailable() -> None:
    urls = (dead_url(), dead_url())
    client = client_for(*urls)
    with pytest.raises(UpstreamUnavailable) as err:
        await client.get_manifest("library/nginx", "latest", ACCEPT)
    with pytest.raises(UpstreamUnavailable, match="ClientConnectorError"):
        await download(client)
    await client.aclose()
    assert "registry.test" in str(err.value)
    assert urls[0] in str(err.value) and urls[1] in str(err.value)
    assert client.requests["GET manifest"] == 2


async def test_token_service_down_is_unavailable(registry: FakeRegistry) -> None:
    registry.realm = dead_url() + "/token"
    client = client_for(registry.url)
    with pytest.raises(UpstreamUnavailable, match="token"):
        await client.get_manifest("library/nginx", "latest", ACCEPT)
    await client.aclose()


async def test_an_upstream_that_never_answers_times_out(loopback: Servers) -> None:
    silent = await loopback.raw(lambda _: loopback.hold())
    client = client_for(silent, read_timeout=0.3)
    with pytest.raises(UpstreamUnavailable, match="timed out"):
        await client.get_manifest("library/nginx", "latest", ACCEPT)
    await client.aclose()


async def test_a_body_that_stalls_times_out(loopback: Servers) -> None:
    async def stall(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"a" * 10)
        await writer.drain()
        await loopback.hold()

    client = client_for(await loopback.raw(stall), read_timeout=0.3)
    with pytest.raises(UpstreamUnavailable, match="after 10 bytes: timed out"):
        await download(client)
    await client.aclose()


# -- blobs ---------------------------------------------------------------------------------


async def test_blob_redirect_to_another_host_drops_authorization(registry: FakeRegistry) -> None:
    client = client_for(registry.url)
    first = await download(client)
    second = await download(client)  # the token goes up front now
    session = client._session
    await client.aclose()

    assert first == second == (len(BLOB), BLOB)
    # 401, the authorized GET, a same-origin hop (keeps it), then the CDN (without it).
    hops = [(r.path.split("/")[1], r.headers.get("Authorization")) for r in registry.seen]
    bearer = "Bearer token-1-secret"
    assert hops == [("v2", None), ("v2", bearer), ("hop", bearer), ("v2", bearer), ("hop", bearer)]
    assert registry.cdn != registry.url  # another origin: another port
    assert len(registry.cdn_requests) == 2
    for cdn in registry.cdn_requests:
        assert "Authorization" not in cdn.headers
        assert cdn.headers["Accept-Encoding"] == "identity"
        assert cdn.headers["User-Agent"] == f"entrepot/{__version__}"
    assert client.requests["GET blob"] == 3
    assert client.requests["token"] == 1
    assert session is not None and session.closed


async def test_blob_with_basic_credentials(loopback: Servers) -> None:
    registry = FakeRegistry(auth="basic", credentials=(USER, PASSWORD))
    registry.blobs[str(BLOB_DIGEST)] = BLOB
    await registry.start(loopback)
    client = client_for(registry.url, username=USER, password=PASSWORD)
    assert await download(client) == (len(BLOB), BLOB)
    await client.aclose()
    assert registry.seen[-1].headers["Authorization"] == basic(USER, PASSWORD)

    anonymous = client_for(registry.url)
    with pytest.raises(UpstreamDenied):
        await download(anonymous)
    await anonymous.aclose()


async def test_stat_blob_follows_the_redirect(registry: FakeRegistry) -> None:
    client = client_for(registry.url)
    assert await client.stat_blob("library/nginx", BLOB_DIGEST) == len(BLOB)
    with pytest.raises(UpstreamNotFound, match="HTTP 404"):  # a HEAD: no error body
        await client.stat_blob("library/nginx", Digest.of(b"other"))
    await client.aclose()
    assert [r.method for r in registry.cdn_requests] == ["HEAD"]


async def test_redirect_loop_is_unavailable(registry: FakeRegistry) -> None:
    registry.auth, registry.redirect = "none", "loop"
    client = client_for(registry.url)
    with pytest.raises(UpstreamUnavailable, match="more than 5 redirects"):
        await download(client)
    await client.aclose()
    assert len(registry.seen) == 6


async def test_blob_rate_limited_with_retry_after(loopback: Servers) -> None:
    server = await loopback.start(rate_limited("7"))
    client = client_for(server.url, dead_url())
    with pytest.raises(UpstreamRateLimited) as err:
        await download(client)
    await client.aclose()
    assert err.value.retry_after == "7"
    assert client.requests["GET blob"] == 1  # no failover on 429


async def chunked(request: web.BaseRequest, parts: list[bytes]) -> web.StreamResponse:
    response = web.StreamResponse()
    if request.headers.get("X-Length"):
        response.content_length = sum(map(len, parts))
    await response.prepare(request)
    for part in parts:
        await response.write(part)
    await response.write_eof()
    return response


async def test_open_blob_streams_with_or_without_a_length(loopback: Servers) -> None:
    parts = [b"a" * 10, b"b" * 10, b"c" * 5]
    server = await loopback.start(lambda request: chunked(request, parts))
    client = client_for(server.url)
    async with client.open_blob("library/nginx", BLOB_DIGEST) as blob:
        assert blob.size is None  # chunked: no Content-Length
        assert b"".join([chunk async for chunk in blob.chunks]) == b"".join(parts)
    await client.aclose()


async def test_blob_left_early_is_released(loopback: Servers) -> None:
    aborted = asyncio.Event()

    async def endless(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        try:
            for _ in range(1024):
                await response.write(b"x" * (1 << 20))
        except (ConnectionError, asyncio.CancelledError):
            aborted.set()
            raise
        return response

    server = await loopback.start(endless)
    client = client_for(server.url)
    async with client.open_blob("library/nginx", BLOB_DIGEST) as blob:
        assert len(await anext(blob.chunks)) <= 1 << 20
    await asyncio.wait_for(aborted.wait(), 30)  # the connection was closed, not drained
    await client.aclose()


def raw_deflate(data: bytes) -> bytes:
    encoder = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return encoder.compress(data) + encoder.flush()


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [("gzip", gzip.compress), ("deflate", zlib.compress), ("deflate", raw_deflate)],
)
async def test_encoded_blob_is_decoded(
    loopback: Servers, encoding: str, encode: Callable[[bytes], bytes]
) -> None:
    server = await loopback.start(answer(200, encode(BLOB), {"Content-Encoding": encoding}))
    client = client_for(server.url)
    assert await download(client) == (None, BLOB)
    await client.aclose()


@pytest.mark.parametrize(
    ("headers", "body", "match"),
    [
        ({"Content-Encoding": "compress"}, BLOB, "unsupported Content-Encoding 'compress'"),
        ({"Content-Encoding": "gzip"}, b"not gzip at all" * 10, "does not decode"),
    ],
)
async def test_undecodable_blob_is_invalid(
    loopback: Servers, headers: dict[str, str], body: bytes, match: str
) -> None:
    client = client_for((await loopback.start(answer(200, body, headers))).url)
    with pytest.raises(UpstreamInvalid, match=match):
        await download(client)
    await client.aclose()


async def test_connection_cut_mid_body_is_unavailable(loopback: Servers) -> None:
    async def cut(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"a" * 10)
        await writer.drain()

    client = client_for(await loopback.raw(cut))
    with pytest.raises(UpstreamUnavailable, match="after 10 bytes"):
        async with client.open_blob("library/nginx", BLOB_DIGEST) as blob:
            assert blob.size == 100
            async for _ in blob.chunks:
                pass
    await client.aclose()
