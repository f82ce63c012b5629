"""Metrics of the pull-through cache and of HTTP requests, in-process: the upstream is a
second, real Entrepot registry served on 127.0.0.1 (reached by the production upstream
client), which here also says what pull budget is left (Docker Hub's
``ratelimit-remaining``) or answers 429."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.routing import Route

from entrepot.http.app import build_app
from entrepot.http.context import ApiContext
from entrepot.http.metrics import HttpMetrics, metrics_endpoint, samples
from entrepot.proxy.cache import ProxyCache
from entrepot.proxy.metrics import CacheEvents, ProxyMetrics, RequestCounts
from entrepot.proxy.ratelimit import RateBudget
from entrepot.proxy.routing import ProxyResolver
from entrepot.proxy.upstream_client import UpstreamClient, UpstreamSettings
from entrepot.proxy.upstreams import CachePolicy, Upstream
from entrepot.registry.local import LocalRegistry
from entrepot.storage.filesystem import FilesystemDriver
from tests.api.auth_setup import app_client, write_htpasswd
from tests.api.oci_client import OciClient, make_image, sha256
from tests.api.test_auth import BUILTIN
from tests.loopback import Loopback, Servers

HUB = "docker.io"


class Hub(httpx.ASGITransport):
    """Docker Hub: a registry whose responses carry the pull budget (``remaining``, None:
    no header) and whose manifest requests can be refused with 429."""

    remaining: int | None = None
    refusing = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.refusing and "/manifests/" in request.url.path:
            return httpx.Response(429, headers={"Retry-After": "60"}, request=request)
        response = await super().handle_async_request(request)
        if self.remaining is not None:
            response.headers["ratelimit-limit"] = "100;w=21600"
            response.headers["ratelimit-remaining"] = f"{self.remaining};w=21600"
        return response


@dataclass
class Setup:
    client: OciClient
    upstream: OciClient
    hub: Hub
    seen: Loopback  # the requests the hub received
    registry: CollectorRegistry
    budget: RateBudget

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def setup(tmp_path: Path, loopback: Servers) -> AsyncIterator[Setup]:
    upstream_app = build_app(ApiContext(resolver=LocalRegistry(FilesystemDriver(tmp_path / "hub"))))
    hub = Hub(app=upstream_app)
    seen = await loopback.asgi(hub)
    registry = CollectorRegistry()
    metrics = ProxyMetrics(registry)
    metrics.upstream(HUB)
    budget = RateBudget()
    counts = RequestCounts(HUB, metrics, budget)
    client = UpstreamClient(UpstreamSettings(HUB, (seen.url,)), requests=counts)
    # tagttl 0: every tag pull past the first revalidates.
    policy = CachePolicy(tag_ttl=0.0, negative_ttl=60.0)
    upstream = Upstream(host=HUB, client=client, policy=policy, mirror=True, budget=budget)
    local = LocalRegistry(FilesystemDriver(tmp_path / "entrepot"))
    cache = ProxyCache(local, events=CacheEvents(metrics))
    app = build_app(
        ApiContext(resolver=ProxyResolver(local, cache, [upstream])),
        extra_routes=[Route("/metrics", metrics_endpoint(lambda: registry))],
        metrics=HttpMetrics(registry),
    )
    async with (
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://e.test") as http,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=upstream_app), base_url="http://hub.test"
        ) as hub_http,
    ):
        yield Setup(OciClient(http), OciClient(hub_http), hub, seen, registry, budget)
    await cache.aclose()
    await client.aclose()


async def test_a_pull_through_counts_misses_then_hits_and_bytes(setup: Setup) -> None:
    image = make_image("nginx")
    await setup.upstream.push_image("library/nginx", image, tag="1")
    layer = image.layers[0]
    for _ in range(2):
        pulled = await setup.client.get_manifest("library/nginx", "1")
        assert pulled.status_code == 200
        blob = await setup.client.http.get(f"/v2/library/nginx/blobs/{sha256(layer)}")
        assert blob.content == layer
    for kind in ("manifest", "blob"):
        assert setup.value("entrepot_proxy_misses_total", upstream=HUB, type=kind) == 1
        assert setup.value("entrepot_proxy_hits_total", upstream=HUB, type=kind) == 1
        assert setup.value("registry_proxy_requests_total", type=kind) == 2
        assert setup.value("registry_proxy_hits_total", type=kind) == 1
        assert setup.value("registry_proxy_misses_total", type=kind) == 1
    assert setup.value("entrepot_proxy_fills_total", upstream=HUB) == 1
    manifest_size = len(image.manifest)
    assert setup.value("entrepot_proxy_fetched_bytes_total", upstream=HUB, type="manifest") == (
        manifest_size
    )
    assert setup.value("entrepot_proxy_served_bytes_total", upstream=HUB, type="manifest") == (
        manifest_size
    )
    assert setup.value("entrepot_proxy_fetched_bytes_total", upstream=HUB, type="blob") == len(
        layer
    )
    assert setup.value("entrepot_proxy_served_bytes_total", upstream=HUB, type="blob") == len(layer)
    assert setup.value("registry_proxy_pulled_bytes_total", type="blob") == len(layer)
    assert setup.value("registry_proxy_pushed_bytes_total", type="blob") == 2 * len(layer)
    assert setup.value("entrepot_proxy_revalidations_total", upstream=HUB) == 1
    upstream_heads = setup.seen.count("HEAD", "/manifests/")
    assert upstream_heads == 2
    assert (
        setup.value("entrepot_upstream_requests_total", upstream=HUB, request="HEAD manifest")
        == upstream_heads
    )
    assert (
        setup.value("registry_http_requests_total", code="200", handler="manifest", method="GET")
        == 2
    )
    assert (
        setup.value("registry_http_request_duration_seconds_count", handler="blob", method="GET")
        == 2
    )


async def test_stale_serves_and_upstream_errors_are_counted(setup: Setup) -> None:
    image = make_image("nginx")
    await setup.upstream.push_image("library/nginx", image, tag="1")
    assert (await setup.client.get_manifest("library/nginx", "1")).status_code == 200
    setup.hub.refusing = True
    again = await setup.client.get_manifest("library/nginx", "1")
    # A cached tag is never refused because the upstream is rate limiting.
    assert again.status_code == 200
    assert again.content == image.manifest
    uncached = await setup.client.get_manifest("library/redis", "1")
    assert uncached.status_code == 429
    assert uncached.headers["retry-after"] == "60"
    assert setup.value("entrepot_proxy_stale_served_total", upstream=HUB) == 1
    errors = setup.value("entrepot_proxy_upstream_errors_total", upstream=HUB, error="rate_limited")
    assert errors == 2


async def test_a_low_pull_budget_serves_changed_tags_from_cache(setup: Setup) -> None:
    first, second = make_image("one"), make_image("two")
    await setup.upstream.push_image("library/app", first, tag="latest")
    setup.hub.remaining = 90
    assert (await setup.client.get_manifest("library/app", "latest")).content == first.manifest
    assert setup.value("entrepot_upstream_ratelimit_remaining", upstream=HUB) == 90
    assert setup.value("entrepot_upstream_ratelimit_limit", upstream=HUB) == 100

    await setup.upstream.push_image("library/app", second, tag="latest")
    setup.hub.remaining = 5  # at or under 10% of the limit: low
    setup.seen.requests.clear()
    for _ in range(2):
        pulled = await setup.client.get_manifest("library/app", "latest")
        assert pulled.status_code == 200
        assert pulled.content == first.manifest
    assert setup.seen.count("GET", "/manifests/") == 0
    assert setup.seen.count("HEAD", "/manifests/") >= 1  # HEADs are free: they tell the budget
    assert setup.budget.low
    assert setup.value("entrepot_upstream_ratelimit_remaining", upstream=HUB) == 5
    assert setup.value("entrepot_proxy_pulls_deferred_total", upstream=HUB) >= 1

    setup.hub.remaining = 80  # the window restarted: the revalidating HEAD learns it
    pulled = await setup.client.get_manifest("library/app", "latest")
    assert pulled.content == second.manifest
    assert setup.seen.count("GET", "/manifests/") == 1


async def test_metrics_endpoint_speaks_prometheus_text(setup: Setup) -> None:
    await setup.client.http.get("/v2/")
    response = await setup.client.http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    assert "# TYPE registry_http_requests_total counter" in text
    assert 'registry_http_requests_total{code="200",handler="base",method="GET"} 1.0' in text
    # Each upstream's series are there from the start, at 0.
    assert 'entrepot_proxy_hits_total{type="manifest",upstream="docker.io"} 0.0' in text
    by_name = {s.metric for s in samples(setup.registry)}
    assert "registry_proxy_requests_total" in by_name


async def test_main_address_metrics_are_gone_with_access_control(tmp_path: Path) -> None:
    htpasswd = write_htpasswd(tmp_path / "htpasswd")
    async with app_client(tmp_path, BUILTIN.format(htpasswd=htpasswd)) as http:
        assert (await http.get("/metrics")).status_code == 404
