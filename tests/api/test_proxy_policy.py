"""What an upstream may serve (allow and deny lists) and an upstream that is offline, in
process: the upstreams are real Entrepot registries on 127.0.0.1, reached by the production
upstream client through a TCP relay that counts every connection made to them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from entrepot.http.app import build_app
from entrepot.http.context import ApiContext
from entrepot.proxy.access import NameRules
from entrepot.proxy.cache import ProxyCache
from entrepot.proxy.health import UpstreamHealth
from entrepot.proxy.routing import ProxyResolver
from entrepot.proxy.upstream_client import UpstreamClient, UpstreamSettings
from entrepot.proxy.upstreams import CachePolicy, Upstream
from entrepot.registry.local import LocalRegistry
from entrepot.storage.filesystem import FilesystemDriver
from tests.api.oci_client import Image, OciClient, error_code, make_image, sha256
from tests.loopback import Loopback, Servers


class CountingRelay:
    """A TCP relay on 127.0.0.1 to an upstream that counts the connections made to it.
    While ``down``, it closes each connection at once: an upstream that does not answer."""

    def __init__(self, target: Loopback) -> None:
        self.target_port = int(target.url.rsplit(":", 1)[1])
        self.connections = 0
        self.down = False
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    def go_down(self) -> None:
        """Close every connection, and refuse to relay new ones."""
        self.down = True
        for writer in self._open:
            writer.close()

    async def start(self) -> CountingRelay:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.down:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._open.update((writer, up_writer))

        async def pump(source: asyncio.StreamReader, dest: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    dest.write(data)
                    await dest.drain()
            dest.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self._open.difference_update((writer, up_writer))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def _upstream_app(root: Path) -> httpx.ASGITransport:
    registry = LocalRegistry(FilesystemDriver(root), delete_enabled=True)
    return httpx.ASGITransport(app=build_app(ApiContext(resolver=registry)))


@dataclass
class UpstreamSpec:
    host: str
    mirror: bool = False
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    offline: bool = False
    offline_after: int = 0
    allow_push: bool = False


@dataclass
class Site:
    """Two upstreams (docker.io and ghcr.io), each with a direct client and a relay."""

    root: Path
    hub: Loopback
    ghcr: Loopback
    relays: dict[str, CountingRelay]
    seeders: dict[str, OciClient]
    opened: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def seed(self, host: str, name: str, tag: str = "latest") -> Image:
        image = make_image(name)
        pushed = await self.seeders[host].push_image(name, image, tag=tag)
        assert pushed.status_code == 201, pushed.text
        return image

    def upstream_requests(self) -> list[tuple[str, str]]:
        return [*self.hub.requests, *self.ghcr.requests]

    def connections(self) -> int:
        return sum(relay.connections for relay in self.relays.values())

    @contextlib.asynccontextmanager
    async def entrepot(
        self, *specs: UpstreamSpec, probe_interval: float = 0.05
    ) -> AsyncIterator[tuple[OciClient, Sequence[Upstream]]]:
        """An Entrepot on the site's store (the same for every call) caching ``specs``."""
        local = LocalRegistry(FilesystemDriver(self.root), delete_enabled=True)
        upstreams = [
            Upstream(
                host=spec.host,
                client=UpstreamClient(
                    UpstreamSettings(spec.host, (self.relays[spec.host].url,)),
                    health=UpstreamHealth(
                        spec.host,
                        configured_offline=spec.offline,
                        offline_after=spec.offline_after,
                        probe_interval=probe_interval,
                    ),
                ),
                policy=CachePolicy(tag_ttl=0.0, negative_ttl=0.0),  # always revalidate
                mirror=spec.mirror,
                allow_push=spec.allow_push,
                names=NameRules.of(
                    spec.host, spec.allow, spec.deny, docker_hub=spec.host == "docker.io"
                ),
            )
            for spec in specs
        ]
        cache = ProxyCache(local)
        app = build_app(ApiContext(resolver=ProxyResolver(local, cache, upstreams)))
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://e.test") as http:
                yield OciClient(http), upstreams
        finally:
            await cache.aclose()
            for upstream in upstreams:
                await upstream.client.aclose()


@pytest.fixture
async def site(tmp_path: Path, loopback: Servers) -> AsyncIterator[Site]:
    hub_app, ghcr_app = _upstream_app(tmp_path / "hub"), _upstream_app(tmp_path / "ghcr")
    hub, ghcr = await loopback.asgi(hub_app), await loopback.asgi(ghcr_app)
    relays = {"docker.io": await CountingRelay(hub).start()}
    relays["ghcr.io"] = await CountingRelay(ghcr).start()
    async with (
        httpx.AsyncClient(transport=hub_app, base_url="http://hub.test") as hub_http,
        httpx.AsyncClient(transport=ghcr_app, base_url="http://ghcr.test") as ghcr_http,
    ):
        seeders = {"docker.io": OciClient(hub_http), "ghcr.io": OciClient(ghcr_http)}
        yield Site(tmp_path / "entrepot", hub, ghcr, relays, seeders)
    for relay in relays.values():
        await relay.close()


MANIFEST_ACCEPT = (
    "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"
)


def _message(response: httpx.Response) -> str:
    return str(response.json()["errors"][0]["message"])


# --- allow and deny lists -----------------------------------------------------------------------

HUB = UpstreamSpec(
    "docker.io", mirror=True, allow=("library/*", "myorg/*"), deny=("library/secret*",)
)
GHCR = UpstreamSpec("ghcr.io", deny=("org/private*",))
DENY_RULE = "deny rule 'library/secret*' of upstream docker.io"
NO_ALLOW_RULE = "no allow rule of upstream docker.io"

# (request path, expected status, a fragment of the DENIED message); every route.
NAME_TABLE = [
    ("/v2/library/nginx/manifests/latest", 200, None),  # plain name, the mirror
    ("/v2/nginx/manifests/latest", 200, None),  # Docker Hub's library/ added
    ("/v2/library/nginx/manifests/latest?ns=docker.io", 200, None),  # containerd
    ("/v2/docker.io/library/nginx/manifests/latest", 200, None),  # path prefix
    ("/v2/myorg/app/manifests/latest?ns=docker.io", 200, None),
    ("/v2/library/secret-db/manifests/latest", 403, DENY_RULE),
    ("/v2/secret-db/manifests/latest", 403, DENY_RULE),
    ("/v2/library/secret-db/manifests/latest?ns=docker.io", 403, DENY_RULE),
    ("/v2/docker.io/library/secret-db/manifests/latest", 403, DENY_RULE),
    ("/v2/docker.io/secret-db/tags/list", 403, DENY_RULE),
    ("/v2/other/tool/manifests/latest", 403, NO_ALLOW_RULE),
    ("/v2/other/tool/manifests/latest?ns=index.docker.io", 403, NO_ALLOW_RULE),
    ("/v2/docker.io/other/tool/manifests/latest", 403, NO_ALLOW_RULE),
    ("/v2/ghcr.io/org/app/manifests/latest", 200, None),
    ("/v2/org/app/manifests/latest?ns=ghcr.io", 200, None),
    ("/v2/ghcr.io/org/private-x/manifests/latest", 403, "deny rule 'org/private*'"),
    ("/v2/org/private-x/tags/list?ns=ghcr.io", 403, "of upstream ghcr.io"),
]


async def test_allow_and_deny_lists_on_every_route(site: Site) -> None:
    for name in ("library/nginx", "myorg/app", "library/secret-db", "other/tool"):
        await site.seed("docker.io", name)
    for name in ("org/app", "org/private-x"):
        await site.seed("ghcr.io", name)
    site.hub.requests.clear()
    site.ghcr.requests.clear()
    async with site.entrepot(HUB, GHCR) as (client, _):
        for path, status, fragment in NAME_TABLE:
            response = await client.http.get(path, headers={"Accept": MANIFEST_ACCEPT})
            assert response.status_code == status, (path, response.text)
            if fragment is not None:
                assert error_code(response) == "DENIED"
                assert fragment in _message(response), (path, _message(response))
    # Refused names were never asked for upstream.
    asked = " ".join(path for _, path in site.upstream_requests())
    for refused in ("secret-db", "other/tool", "private-x"):
        assert refused not in asked


async def test_refused_blobs_and_referrers_too(site: Site) -> None:
    image = await site.seed("docker.io", "library/secret-db")
    layer = sha256(image.layers[0])
    site.hub.requests.clear()
    async with site.entrepot(HUB) as (client, _):
        for path in (
            f"/v2/docker.io/library/secret-db/blobs/{layer}",
            f"/v2/library/secret-db/blobs/{layer}?ns=docker.io",
            f"/v2/library/secret-db/blobs/{layer}",
            f"/v2/docker.io/library/secret-db/referrers/{image.digest}",
        ):
            response = await client.http.get(path)
            assert response.status_code == 403, (path, response.text)
            assert DENY_RULE in _message(response)
        head = await client.http.head(f"/v2/docker.io/library/secret-db/blobs/{layer}")
        assert head.status_code == 403
    assert site.hub.requests == []


async def test_cached_content_of_a_name_denied_later_is_not_served(site: Site) -> None:
    image = await site.seed("docker.io", "library/nginx")
    layer = sha256(image.layers[0])
    async with site.entrepot(UpstreamSpec("docker.io", mirror=True)) as (client, _):
        assert (await client.get_manifest("library/nginx", "latest")).status_code == 200
        assert (await client.http.get(f"/v2/library/nginx/blobs/{layer}")).status_code == 200
    site.hub.requests.clear()
    denied = UpstreamSpec("docker.io", mirror=True, deny=("nginx",))  # library/nginx
    async with site.entrepot(denied) as (client, _):
        for path in (
            "/v2/library/nginx/manifests/latest",
            f"/v2/nginx/manifests/{image.digest}",
            f"/v2/docker.io/library/nginx/blobs/{layer}",
            f"/v2/library/nginx/blobs/{layer}?ns=docker.io",
            "/v2/docker.io/library/nginx/tags/list",
        ):
            response = await client.http.get(path)
            assert response.status_code == 403, (path, response.text)
            assert "deny rule 'library/nginx' of upstream docker.io" in _message(response)
        # A name the rule does not cover is still served: myorg/nginx is not library/nginx.
        await site.seed("docker.io", "myorg/nginx")
        assert (await client.get_manifest("myorg/nginx", "latest")).status_code == 200
    assert not [p for _, p in site.hub.requests if p.startswith("/v2/library/nginx")]


async def test_pushed_plain_names_are_not_governed_by_the_mirrors_lists(site: Site) -> None:
    only_library = UpstreamSpec("docker.io", mirror=True, allow=("library/*",))
    async with site.entrepot(only_library) as (client, _):
        mine = make_image("team")
        # A push to a name the mirror refuses: its blob HEADs are 404s, so it uploads.
        head = await client.http.head(f"/v2/team/app/blobs/{sha256(mine.layers[0])}")
        assert head.status_code == 404
        assert (await client.push_image("team/app", mine, tag="1")).status_code == 201
        pulled = await client.get_manifest("team/app", "1")
        assert pulled.status_code == 200
        assert pulled.content == mine.manifest
        # What the pushed repository lacks is unknown (404), as without a mirror.
        missing = await client.get_manifest("team/app", "2")
        assert missing.status_code == 404
        assert error_code(missing) == "MANIFEST_UNKNOWN"
        # A plain name that nobody pushed and the mirror refuses.
        refused = await client.get_manifest("team/other", "1")
        assert refused.status_code == 403
        assert NO_ALLOW_RULE in _message(refused)
    assert site.connections() == 0


async def test_allowpush_namespace_refuses_what_it_could_not_pull(site: Site) -> None:
    pushable = UpstreamSpec("ghcr.io", deny=("org/private*",), allow_push=True)
    async with site.entrepot(pushable) as (client, _):
        refused = await client.http.post("/v2/ghcr.io/org/private-x/blobs/uploads/")
        assert refused.status_code == 403
        assert "deny rule 'org/private*' of upstream ghcr.io" in _message(refused)
        mine = make_image("pushed into the cache namespace")
        assert (await client.push_image("ghcr.io/org/app", mine, tag="1")).status_code == 201


# --- offline ------------------------------------------------------------------------------------


async def test_configured_offline_serves_the_cache_and_connects_to_nothing(site: Site) -> None:
    image = await site.seed("docker.io", "library/nginx")
    await site.seed("docker.io", "library/redis")
    layer = sha256(image.layers[0])
    async with site.entrepot(UpstreamSpec("docker.io", mirror=True)) as (client, _):
        assert (await client.get_manifest("library/nginx", "latest")).status_code == 200
        assert (await client.http.get(f"/v2/library/nginx/blobs/{layer}")).status_code == 200
    before = site.connections()
    offline = UpstreamSpec("docker.io", mirror=True, offline=True)
    async with site.entrepot(offline) as (client, upstreams):
        assert upstreams[0].offline
        # tagttl is 0: online, this tag would be revalidated; offline it never expires.
        for _ in range(3):
            cached = await client.get_manifest("nginx", "latest?ns=docker.io")
            assert cached.status_code == 200
            assert cached.content == image.manifest
        blob = await client.http.get(f"/v2/docker.io/library/nginx/blobs/{layer}")
        assert blob.content == image.layers[0]
        tags = await client.get_json("/v2/docker.io/library/nginx/tags/list")
        assert tags["tags"] == ["latest"]
        uncached = [
            ("/v2/library/redis/manifests/latest", "MANIFEST_UNKNOWN"),
            (f"/v2/library/nginx/manifests/{'sha256:' + '1' * 64}", "MANIFEST_UNKNOWN"),
            (f"/v2/docker.io/library/redis/blobs/{sha256(b'x')}", "BLOB_UNKNOWN"),
            ("/v2/docker.io/library/redis/tags/list", "NAME_UNKNOWN"),
        ]
        for path, code in uncached:
            response = await client.http.get(path)
            assert response.status_code == 404, (path, response.text)
            assert error_code(response) == code
            assert "upstream docker.io is configured offline" in _message(response)
    assert site.connections() == before


async def test_automatic_offline_after_failures_then_back(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    image = await site.seed("docker.io", "library/nginx")
    caplog.set_level(logging.INFO, "entrepot.proxy")
    flaky = UpstreamSpec("docker.io", mirror=True, offline_after=3)
    relay = site.relays["docker.io"]
    async with site.entrepot(flaky, probe_interval=0.05) as (client, upstreams):
        assert (await client.get_manifest("library/nginx", "latest")).status_code == 200
        relay.go_down()
        for _ in range(3):  # each: a connection that gets no answer
            failed = await client.get_manifest("library/redis", "latest")
            assert failed.status_code == 503, failed.text
        assert upstreams[0].offline
        assert "upstream docker.io is offline after 3 failed connections" in caplog.text

        # Offline: cached content at once, uncached refused; only health checks connect.
        probes = upstreams[0].client.requests["probe"]
        connections = relay.connections
        for _ in range(10):
            cached = await client.get_manifest("library/nginx", "latest")
            assert cached.content == image.manifest
            uncached = await client.get_manifest("library/redis", "latest")
            assert uncached.status_code == 404
            assert "upstream docker.io is offline" in _message(uncached)
        new_connections = relay.connections - connections
        # aiohttp sends an idempotent request again once when the server hangs up (as the
        # relay does while down): at most two connections per health check.
        assert new_connections <= 2 * (upstreams[0].client.requests["probe"] - probes)

        relay.down = False
        redis = await site.seed("docker.io", "library/redis")
        deadline = asyncio.get_running_loop().time() + 60
        while upstreams[0].offline:
            assert asyncio.get_running_loop().time() < deadline, "never came back online"
            await asyncio.sleep(0.05)
        assert "upstream docker.io is back online (GET /v2/ answered HTTP" in caplog.text
        back = await client.get_manifest("library/redis", "latest")
        assert back.status_code == 200
        assert back.content == redis.manifest


async def test_offline_state_in_metrics_and_on_the_cache_page(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from entrepot.config import load_config
    from entrepot.root import create_app

    config = tmp_path / "config.yml"
    config.write_text(
        "version: 0.1\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp_path / 'data'}\n"
        "proxies:\n"
        "  - {host: quay.io, remoteurl: 'http://127.0.0.1:9', offline: true}\n"
        "  - {host: ghcr.io, remoteurl: 'http://127.0.0.1:9', connecttimeout: 1s,"
        " offlineafter: 1, probeinterval: 1h}\n"
    )
    with TestClient(create_app(load_config(config))) as client:
        assert client.get("/v2/quay.io/org/app/manifests/1").status_code == 404
        assert client.get("/v2/ghcr.io/org/app/manifests/1").status_code == 503  # refused
        text = client.get("/metrics").text
        page = client.get("/ui/cache").text
    assert 'entrepot_upstream_offline{upstream="quay.io"} 1.0' in text
    assert 'entrepot_upstream_offline{upstream="ghcr.io"} 1.0' in text  # after 1 failure
    assert 'entrepot_proxy_upstream_errors_total{error="offline",upstream="quay.io"} 1.0' in text
    assert 'request="HEAD manifest",upstream="quay.io"' not in text  # nothing sent
    assert page.count("offline: cached content only") == 2


async def test_registry2_proxy_block_takes_the_lists_too(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from entrepot.config import load_config
    from entrepot.root import create_app

    config = tmp_path / "config.yml"
    config.write_text(
        "version: 0.1\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp_path / 'data'}\n"
        "proxy:\n  remoteurl: http://127.0.0.1:9\n  deny: ['secret*']\n"
    )
    with TestClient(create_app(load_config(config))) as client:
        for path in ("/v2/secret-db/manifests/1", "/v2/secret-db/manifests/1?ns=docker.io"):
            refused = client.get(path)
            assert refused.status_code == 403
            assert "deny rule 'library/secret*' of upstream docker.io" in _message(refused)
        text = client.get("/metrics").text
    assert 'request="HEAD manifest",upstream="docker.io"' not in text  # nothing sent
