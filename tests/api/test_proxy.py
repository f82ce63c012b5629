"""Push and pull-through cache on one endpoint, in-process: each upstream is a second, real
Entrepot registry served on 127.0.0.1, reached by the production upstream client (no mocks)."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from entrepot.http.app import build_app
from entrepot.http.context import ApiContext
from entrepot.http.notify import Event, Notifier
from entrepot.proxy.cache import ProxyCache
from entrepot.proxy.routing import ProxyResolver
from entrepot.proxy.upstream_client import UpstreamClient, UpstreamSettings
from entrepot.proxy.upstreams import CachePolicy, Upstream
from entrepot.registry.local import LocalRegistry
from entrepot.registry.pulls import PullRecorder
from entrepot.storage.filesystem import FilesystemDriver
from tests.api.linkwrites import on_link_write
from tests.api.oci_client import (
    OCI_MANIFEST,
    OciClient,
    error_code,
    make_image,
    make_index,
    sha256,
)
from tests.loopback import Loopback, Servers


@dataclass
class Setup:
    client: OciClient  # talks to Entrepot
    upstream: OciClient  # talks to the upstream registry directly
    hub: Loopback  # docker.io, served on 127.0.0.1; ``await hub.stop()`` takes it down
    ghcr: Loopback
    cache: ProxyCache
    root: Path
    api: ApiContext  # what the app serves with (a test may add a notifier)


def _upstream_app(root: Path) -> httpx.ASGITransport:
    registry = LocalRegistry(FilesystemDriver(root), delete_enabled=True)
    return httpx.ASGITransport(app=build_app(ApiContext(resolver=registry)))


@pytest.fixture
async def setup(tmp_path: Path, loopback: Servers) -> AsyncIterator[Setup]:
    hub_app = _upstream_app(tmp_path / "hub")
    hub = await loopback.asgi(hub_app)
    ghcr = await loopback.asgi(_upstream_app(tmp_path / "ghcr"))
    local = LocalRegistry(FilesystemDriver(tmp_path / "entrepot"), delete_enabled=True)
    # A generous fillwait: whether a fill's clients get the file depends on the fill's pace,
    # not on how loaded this machine is.
    policy = CachePolicy(tag_ttl=0.0, negative_ttl=60.0, fill_wait=60.0)
    upstreams = [
        Upstream(
            host="docker.io",
            client=UpstreamClient(UpstreamSettings("docker.io", (hub.url,))),
            policy=policy,
            mirror=True,
        ),
        Upstream(
            host="ghcr.io",
            client=UpstreamClient(UpstreamSettings("ghcr.io", (ghcr.url,))),
            policy=policy,
        ),
    ]
    cache = ProxyCache(local)
    api = ApiContext(resolver=ProxyResolver(local, cache, upstreams))
    app = build_app(api)
    async with (
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://e.test") as http,
        httpx.AsyncClient(transport=hub_app, base_url="http://hub.test") as hub_http,
    ):
        entrepot = OciClient(http)
        yield Setup(entrepot, OciClient(hub_http), hub, ghcr, cache, tmp_path / "entrepot", api)
    await cache.aclose()
    for upstream in upstreams:
        await upstream.client.aclose()


async def _seed_hub(s: Setup, name: str = "library/nginx", tag: str = "latest") -> object:
    image = make_image(name)
    assert (await s.upstream.push_image(name, image, tag=tag)).status_code == 201
    s.hub.requests.clear()
    return image


async def test_three_routes_reach_one_cached_copy(setup: Setup) -> None:
    image = await _seed_hub(setup)
    routes = [
        ("/v2/library/nginx/manifests/latest", None),  # Docker registry-mirrors
        ("/v2/library/nginx/manifests/latest?ns=docker.io", "docker.io"),  # containerd
        ("/v2/docker.io/library/nginx/manifests/latest", "docker.io"),  # path prefix
        ("/v2/docker.io/nginx/manifests/latest", "docker.io"),  # one-component name
    ]
    for path, namespace in routes:
        response = await setup.client.http.get(
            path, headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}
        )
        assert response.status_code == 200, (path, response.text)
        assert response.content == image.manifest  # type: ignore[attr-defined]
        assert response.headers.get("oci-namespace") == namespace
    # One GET of the manifest upstream; the others were answered by HEAD revalidation.
    assert setup.hub.count("GET", "/manifests/") == 1
    catalog = await setup.client.get_json("/v2/_catalog")
    assert catalog["repositories"] == ["docker.io/library/nginx"]


async def test_blobs_are_cached_after_the_first_pull(setup: Setup) -> None:
    image = await _seed_hub(setup)
    layer = image.layers[0]  # type: ignore[attr-defined]
    from tests.api.oci_client import sha256

    for _ in range(3):
        response = await setup.client.http.get(f"/v2/library/nginx/blobs/{sha256(layer)}")
        assert response.status_code == 200
        assert response.content == layer
    assert setup.hub.count("GET", "/blobs/") == 1


async def test_push_next_to_the_mirror_wins_over_upstream(setup: Setup) -> None:
    await _seed_hub(setup)
    mine = make_image("mine")
    pushed = await setup.client.push_image("library/nginx", mine, tag="latest")
    assert pushed.status_code == 201
    pulled = await setup.client.get_manifest("library/nginx", "latest")
    assert pulled.content == mine.manifest
    # the upstream was not asked, and still has its own
    assert setup.hub.count("GET", "/manifests/") == 0
    other_tag = await setup.client.push_image("team/app", make_image("team"), tag="1")
    assert other_tag.status_code == 201


async def test_push_into_a_cache_namespace_is_denied(setup: Setup) -> None:
    for path in ["/v2/docker.io/library/x/blobs/uploads/", "/v2/ghcr.io/org/app/blobs/uploads/"]:
        response = await setup.client.http.post(path)
        assert response.status_code == 403
        assert error_code(response) == "DENIED"
        assert "cache" in response.json()["errors"][0]["message"]
    via_ns = await setup.client.http.post("/v2/org/app/blobs/uploads/?ns=ghcr.io")
    assert via_ns.status_code == 403
    # Every write, not only uploads: a cache has nothing to write through.
    digest = "sha256:" + "0" * 64
    writes = [
        setup.client.http.put("/v2/ghcr.io/org/app/manifests/v1", content=b"{}"),
        setup.client.http.delete(f"/v2/ghcr.io/org/app/manifests/{digest}"),
        setup.client.http.delete(f"/v2/ghcr.io/org/app/blobs/{digest}"),
        setup.client.http.delete(f"/v2/ghcr.io/org/app/blobs/uploads/{digest[7:43]}"),
    ]
    for write in writes:
        refused = await write
        assert refused.status_code == 403, refused.request.url
        assert "ghcr.io is a cache" in refused.json()["errors"][0]["message"]


async def test_tag_revalidation_uses_head_and_follows_upstream_changes(setup: Setup) -> None:
    await _seed_hub(setup)
    await setup.client.get_manifest("library/nginx", "latest")
    newer = make_image("newer")
    await setup.upstream.push_image("library/nginx", newer, tag="latest")
    setup.hub.requests.clear()
    pulled = await setup.client.get_manifest("library/nginx", "latest")
    assert pulled.content == newer.manifest
    assert setup.hub.count("HEAD", "/manifests/latest") == 1
    # the new digest was fetched once by digest, never by tag
    assert setup.hub.count("GET", "/manifests/latest") == 0
    assert setup.hub.count("GET", f"/manifests/{newer.digest}") == 1


async def test_stale_tag_served_when_upstream_is_down(setup: Setup) -> None:
    image = await _seed_hub(setup)
    await setup.client.get_manifest("library/nginx", "latest")
    await setup.hub.stop()
    stale = await setup.client.get_manifest("library/nginx", "latest")
    assert stale.status_code == 200
    assert stale.content == image.manifest  # type: ignore[attr-defined]
    assert setup.cache.total("stale_served") == 1
    uncached = await setup.client.get_manifest("library/redis", "latest")
    assert uncached.status_code == 503
    assert error_code(uncached) == "UNAVAILABLE"


async def test_upstream_404_is_remembered_briefly(setup: Setup) -> None:
    for _ in range(3):
        response = await setup.client.get_manifest("library/missing", "latest")
        assert response.status_code == 404
        assert error_code(response) == "MANIFEST_UNKNOWN"
    assert setup.hub.count("HEAD", "/manifests/latest") == 1


async def test_index_children_fetched_only_when_asked(setup: Setup) -> None:
    children = [make_image("amd"), make_image("arm")]
    for child in children:
        await setup.upstream.push_image("org/multi", child)
    index = make_index(children)
    await setup.upstream.put_manifest(
        "org/multi", "v1", index, "application/vnd.oci.image.index.v1+json"
    )
    hub_index = await setup.client.get_manifest("docker.io/org/multi", "v1")
    assert hub_index.content == index
    assert setup.hub.count("GET", f"/manifests/{children[0].digest}") == 0
    pulled = await setup.client.get_manifest("docker.io/org/multi", children[1].digest)
    assert pulled.content == children[1].manifest
    assert setup.hub.count("GET", f"/manifests/{children[1].digest}") == 1
    assert setup.hub.count("GET", f"/manifests/{children[0].digest}") == 0


async def test_tags_list_from_upstream_then_from_cache(setup: Setup) -> None:
    await _seed_hub(setup)
    await setup.client.get_manifest("docker.io/library/nginx", "latest")
    listed = await setup.client.get_json("/v2/docker.io/library/nginx/tags/list")
    assert listed["tags"] == ["latest"]
    await setup.hub.stop()
    cached = await setup.client.get_json("/v2/docker.io/library/nginx/tags/list")
    assert cached["tags"] == ["latest"]


async def test_push_to_plain_name_works_while_the_mirror_is_down(setup: Setup) -> None:
    await setup.hub.stop()
    mine = make_image("offline")
    pushed = await setup.client.push_image("team/offline", mine, tag="1")
    assert pushed.status_code == 201
    head = await setup.client.http.head(f"/v2/team/never/blobs/{mine.digest}")
    assert head.status_code == 404  # the mirror cannot answer: unknown here, so clients upload


async def test_push_reusing_mirror_layers_under_the_same_name(setup: Setup) -> None:
    # docker pull nginx; docker tag nginx REG/library/nginx:mine; docker push: Docker's HEAD
    # finds the cached layers, skips uploading them, then PUTs the manifest.
    from tests.api.oci_client import sha256

    upstream_image = await _seed_hub(setup)
    blobs = [upstream_image.config, *upstream_image.layers]  # type: ignore[attr-defined]
    for blob in blobs:  # the earlier pull through the mirror
        assert (
            await setup.client.http.get(f"/v2/library/nginx/blobs/{sha256(blob)}")
        ).content == blob
    for blob in blobs:
        head = await setup.client.http.head(f"/v2/library/nginx/blobs/{sha256(blob)}")
        assert head.status_code == 200  # "Layer already exists": nothing is uploaded
    pushed = await setup.client.put_manifest(
        "library/nginx",
        "mine",
        upstream_image.manifest,  # type: ignore[attr-defined]
        "application/vnd.oci.image.manifest.v1+json",
    )
    assert pushed.status_code == 201, pushed.text
    await setup.hub.stop()  # the pushed image holds its own blobs now
    for blob in blobs:
        assert (
            await setup.client.http.get(f"/v2/library/nginx/blobs/{sha256(blob)}")
        ).content == blob


async def test_push_never_asks_the_mirror_about_private_blobs(setup: Setup) -> None:
    from tests.api.oci_client import sha256

    await _seed_hub(setup)
    head = await setup.client.http.head(f"/v2/team/private/blobs/{sha256(b'secret layer')}")
    assert head.status_code == 404  # the client uploads it
    pushed = await setup.client.push_image("team/private", make_image("private"), tag="1")
    assert pushed.status_code == 201
    assert setup.hub.requests == []


async def test_metrics_count_stale_serves_and_upstream_requests(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from entrepot.config import load_config
    from entrepot.root import create_app

    config = tmp_path / "config.yml"
    config.write_text(
        "version: 0.1\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp_path / 'data'}\n"
        "proxies:\n  - host: quay.io\n    remoteurl: http://127.0.0.1:9\n"
        "    connecttimeout: 1s\n"
    )
    with TestClient(create_app(load_config(config))) as client:
        failed = client.get("/v2/quay.io/org/app/manifests/1")
        assert failed.status_code == 503
        text = client.get("/metrics").text
    assert "# TYPE entrepot_proxy_stale_served_total counter" in text
    assert (
        'entrepot_upstream_requests_total{request="HEAD manifest",upstream="quay.io"} 1.0' in text
    )
    assert (
        'entrepot_proxy_upstream_errors_total{error="unavailable",upstream="quay.io"} 1.0' in text
    )
    assert 'registry_http_requests_total{code="503",handler="manifest",method="GET"} 1.0' in text


async def test_ns_of_a_registry_not_cached_never_reaches_the_mirror(setup: Setup) -> None:
    await _seed_hub(setup)
    response = await setup.client.get_manifest("library/nginx", "latest?ns=registry.example.com")
    assert response.status_code == 404
    assert error_code(response) == "MANIFEST_UNKNOWN"
    assert setup.hub.requests == []


async def test_referrers_of_a_cached_image_come_from_upstream_then_stale(setup: Setup) -> None:
    image = await _seed_hub(setup)
    subject = {"mediaType": OCI_MANIFEST, "digest": image.digest, "size": len(image.manifest)}  # type: ignore[attr-defined]
    sbom = make_image("sbom", subject=subject, artifact_type="application/spdx+json")
    assert (await setup.upstream.push_image("library/nginx", sbom)).status_code == 201
    path = f"/v2/docker.io/library/nginx/referrers/{image.digest}"  # type: ignore[attr-defined]

    listed = await setup.client.get_json(path)
    assert [(e["digest"], e["artifactType"]) for e in listed["manifests"]] == [
        (sbom.digest, "application/spdx+json")
    ]
    assert setup.hub.count("GET", "/referrers/") == 1
    # The referrer itself pulls through the cache by digest.
    pulled = await setup.client.get_manifest("docker.io/library/nginx", sbom.digest)
    assert pulled.content == sbom.manifest

    await setup.hub.stop()  # tagttl is 0 here: the next answer asks upstream, which fails
    stale = await setup.client.get_json(path)
    assert [e["digest"] for e in stale["manifests"]] == [sbom.digest]
    assert setup.cache.total("stale_served") == 1
    never_asked = await setup.client.http.get(
        f"/v2/docker.io/library/nginx/referrers/{sha256(b'other')}"
    )
    assert never_asked.status_code == 503
    assert error_code(never_asked) == "UNAVAILABLE"


async def test_referrers_of_a_pushed_image_never_ask_the_mirror(setup: Setup) -> None:
    mine = make_image("mine")
    assert (await setup.client.push_image("team/app", mine, tag="1")).status_code == 201
    subject = {"mediaType": OCI_MANIFEST, "digest": mine.digest, "size": len(mine.manifest)}
    signature = make_image("sig", subject=subject, artifact_type="application/example.sig")
    assert (await setup.client.push_image("team/app", signature)).status_code == 201
    listed = await setup.client.get_json(f"/v2/team/app/referrers/{mine.digest}")
    assert [e["digest"] for e in listed["manifests"]] == [signature.digest]
    assert setup.hub.requests == []


async def _get_concurrently(s: Setup, path: str, clients: int) -> list[httpx.Response]:
    return list(await asyncio.gather(*(s.client.http.get(path) for _ in range(clients))))


async def test_clients_of_a_fast_fill_get_the_verified_file(setup: Setup) -> None:
    layer = os.urandom(3 << 20)
    assert (await setup.upstream.push_blob("library/busybox", layer)).status_code == 201
    setup.hub.requests.clear()
    path = f"/v2/library/busybox/blobs/{sha256(layer)}"
    for response in await _get_concurrently(setup, path, 8):
        assert response.status_code == 200, response.text
        assert response.content == layer
        # Sent from the stored, verified file, as a cached blob is (not streamed from the
        # fill): a file response carries the file's Last-Modified.
        assert "last-modified" in response.headers
    assert setup.hub.count("GET", "/blobs/") == 1


async def test_clients_of_a_failed_fill_get_the_spec_error_and_nothing_is_cached(
    setup: Setup, tmp_path: Path
) -> None:
    layer = os.urandom(1 << 20)
    digest = sha256(layer)
    assert (await setup.upstream.push_blob("library/busybox", layer)).status_code == 201
    # Bit rot upstream: the same length, other bytes.
    stored = tmp_path / "hub/docker/registry/v2/blobs/sha256" / digest[7:9] / digest[7:] / "data"
    stored.write_bytes(os.urandom(len(layer)))
    path = f"/v2/library/busybox/blobs/{digest}"
    for response in await _get_concurrently(setup, path, 4):
        assert response.status_code == 503, response.text
        assert error_code(response) == "UNAVAILABLE"
        assert digest in response.json()["errors"][0]["message"]
    assert not (setup.root / "docker/registry/v2/blobs/sha256" / digest[7:9]).exists()
    repository = setup.root / "docker/registry/v2/repositories/docker.io/library/busybox"
    assert [p for p in repository.rglob("*") if p.is_file()] == []


async def test_pulls_through_the_cache_are_recorded_by_tag_and_digest(setup: Setup) -> None:
    image = await _seed_hub(setup)
    recorder = setup.cache.pulls = PullRecorder(setup.cache.local.driver, clock=lambda: 5.0)
    digest = image.digest  # type: ignore[attr-defined]
    accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    for reference in ("latest", digest):
        response = await setup.client.http.get(
            f"/v2/docker.io/library/nginx/manifests/{reference}", headers=accept
        )
        assert response.status_code == 200
    name = "docker.io/library/nginx"
    assert dict(recorder.pending) == {(name, "latest", digest): 5.0, (name, None, digest): 5.0}


class RecordedEvents(Notifier):
    """Every event the app publishes, kept in order (no endpoint, nothing sent)."""

    def __init__(self) -> None:
        super().__init__((), source={"addr": "e.test"})
        self.events: list[Event] = []

    def publish(self, event: Event) -> None:
        self.events.append(event)


async def test_a_pull_event_names_the_repository_catalog_lists_on_every_route(
    setup: Setup,
) -> None:
    hub_image = await _seed_hub(setup, "library/hello", "1")
    tool = make_image("tool")
    async with httpx.AsyncClient(base_url=setup.ghcr.url) as ghcr:
        assert (await OciClient(ghcr).push_image("org/tool", tool, tag="1")).is_success
    mine = make_image("mine")
    assert (await setup.client.push_image("library/mine", mine, tag="1")).is_success
    recorded = setup.api.notifier = RecordedEvents()
    layer = sha256(tool.layers[0])
    hub_layer = sha256(hub_image.layers[0])  # type: ignore[attr-defined]
    # (method, path, the repository the event names): each cache as _catalog names it.
    routes = [
        ("GET", "/v2/org/tool/manifests/1?ns=ghcr.io", "ghcr.io/org/tool"),  # containerd
        ("GET", "/v2/ghcr.io/org/tool/manifests/1", "ghcr.io/org/tool"),  # path prefix
        ("HEAD", f"/v2/org/tool/blobs/{layer}?ns=ghcr.io", "ghcr.io/org/tool"),
        ("GET", f"/v2/org/tool/blobs/{layer}?ns=ghcr.io", "ghcr.io/org/tool"),
        ("GET", f"/v2/ghcr.io/org/tool/blobs/{layer}", "ghcr.io/org/tool"),
        ("GET", "/v2/library/hello/manifests/1", "docker.io/library/hello"),  # mirror
        ("GET", "/v2/library/hello/manifests/1?ns=docker.io", "docker.io/library/hello"),
        ("GET", "/v2/docker.io/hello/manifests/1", "docker.io/library/hello"),
        ("GET", f"/v2/library/hello/blobs/{hub_layer}", "docker.io/library/hello"),
        ("HEAD", f"/v2/library/hello/blobs/{hub_layer}", "docker.io/library/hello"),  # held
        ("GET", "/v2/library/mine/manifests/1", "library/mine"),  # pushed, next to the mirror
    ]
    accept = {"Accept": OCI_MANIFEST}
    for method, path, repository in routes:
        recorded.events.clear()
        response = await setup.client.http.request(method, path, headers=accept)
        assert response.status_code == 200, (path, response.text)
        (event,) = recorded.events
        target = event["target"]
        assert target["repository"] == repository, path
        kind = "manifests" if "/manifests/" in path else "blobs"
        url = f"http://e.test/v2/{repository}/{kind}/{target['digest']}"
        assert target["url"] == url, path
        again = await setup.client.http.request(method, url, headers=accept)
        assert again.status_code == 200, url
        assert again.content == response.content, url
    catalog = await setup.client.get_json("/v2/_catalog")
    assert {r for _, _, r in routes} <= set(catalog["repositories"])


async def test_a_failed_ns_request_is_logged_with_its_ns(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    await setup.ghcr.stop()
    response = await setup.client.get_manifest("org/other", "1?ns=ghcr.io")
    assert response.status_code == 503
    warnings = [r.getMessage() for r in caplog.records if r.name == "entrepot.http"]
    assert any(w.startswith("GET /v2/org/other/manifests/1?ns=ghcr.io -> 503") for w in warnings)


async def test_a_held_blob_collected_as_another_repository_links_it_is_fetched_again(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bytes cached for one repository serve another once upstream confirms them, by a
    link; a garbage collection that takes them as the link is written (the check before
    it saw them) leaves that link standing on nothing unless the pull fetches again."""
    image = await _seed_hub(setup)
    layer = image.layers[0]  # type: ignore[attr-defined]
    assert (await setup.upstream.push_blob("library/redis", layer)).status_code == 201
    digest = sha256(layer)
    held = await setup.client.http.get(f"/v2/library/nginx/blobs/{digest}")
    assert held.status_code == 200
    folder = setup.root / "docker/registry/v2/blobs/sha256" / digest[7:9] / digest[7:]
    # What the collection's sweep leaves of it, as the pull links it for library/redis.
    collected = on_link_write(monkeypatch, "/library/redis/_layers/", lambda: shutil.rmtree(folder))
    setup.hub.requests.clear()
    pulled = await setup.client.http.get(f"/v2/library/redis/blobs/{digest}")
    assert collected
    assert pulled.status_code == 200 and pulled.content == layer
    assert setup.hub.count("GET", "/blobs/") == 1  # fetched again
    assert (folder / "data").read_bytes() == layer
