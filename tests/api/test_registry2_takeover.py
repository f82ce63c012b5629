"""A registry:2 pull-through cache's store, served by Entrepot (proxy/registry2_store.py),
in-process. The store is written in registry:2's layout by a plain registry (the layout is
the same; tests/e2e/test_registry2_takeover.py takes over one that Debian's docker-registry
wrote in proxy mode). The mirror upstream is a second registry served on 127.0.0.1."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from entrepot.http.app import build_app
from entrepot.http.context import ApiContext
from entrepot.proxy.cache import ProxyCache
from entrepot.proxy.registry2_store import Registry2Store, marker
from entrepot.proxy.routing import ProxyResolver
from entrepot.proxy.upstream_client import UpstreamClient, UpstreamSettings
from entrepot.proxy.upstreams import CachePolicy, Upstream
from entrepot.registry import layout
from entrepot.registry.local import LocalRegistry
from entrepot.storage.filesystem import FilesystemDriver
from tests.api.oci_client import Image, OciClient, make_image, sha256
from tests.loopback import Loopback, Servers

NAME = "library/nginx"


def _registry_app(root: Path) -> httpx.ASGITransport:
    registry = LocalRegistry(FilesystemDriver(root), delete_enabled=True)
    return httpx.ASGITransport(app=build_app(ApiContext(resolver=registry)))


@dataclass
class Takeover:
    hub: OciClient  # the mirror's upstream, directly
    hub_server: Loopback
    root: Path
    # An Entrepot worker on the store: registry2store mode -> (client, its Registry2Store).
    worker: Callable[[str], tuple[OciClient, Registry2Store]]


@pytest.fixture
async def takeover(tmp_path: Path, loopback: Servers) -> AsyncIterator[Takeover]:
    hub_app = _registry_app(tmp_path / "hub")
    hub_server = await loopback.asgi(hub_app)
    root = tmp_path / "store"
    opened: list[tuple[httpx.AsyncClient, UpstreamClient, ProxyCache]] = []

    def worker(mode: str) -> tuple[OciClient, Registry2Store]:
        driver = FilesystemDriver(root)
        local = LocalRegistry(driver, delete_enabled=True)
        client = UpstreamClient(UpstreamSettings("docker.io", (hub_server.url,)))
        mirror = Upstream("docker.io", client, CachePolicy(tag_ttl=0.0), mirror=True)
        store = Registry2Store(driver, mode=mode, mirror=True, routed=mirror.aliases)
        cache = ProxyCache(local)
        app = build_app(ApiContext(resolver=ProxyResolver(local, cache, [mirror], registry2=store)))
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://e.test")
        opened.append((http, client, cache))
        return OciClient(http), store

    async with httpx.AsyncClient(transport=hub_app, base_url="http://hub.test") as hub_http:
        yield Takeover(OciClient(hub_http), hub_server, root, worker)
    for http, client, cache in opened:
        await http.aclose()
        await cache.aclose()
        await client.aclose()


async def _cached_by_registry2(t: Takeover, image: Image) -> None:
    """What registry:2 in proxy mode leaves: the upstream's image under its plain name."""
    assert (await t.hub.push_image(NAME, image, tag="latest")).status_code == 201
    async with httpx.AsyncClient(
        transport=_registry_app(t.root), base_url="http://registry2.test"
    ) as http:
        assert (await OciClient(http).push_image(NAME, image, tag="latest")).status_code == 201
    # registry:2 writes nothing outside docker/registry/v2; Entrepot's epochs would say that
    # an earlier Entrepot wrote here.
    shutil.rmtree(t.root / "entrepot")


def _tag_link(root: Path) -> str:
    return (root / layout.tag_current_link(NAME, "latest")).read_text()


async def test_registry2_cache_follows_a_moved_tag_in_place(takeover: Takeover) -> None:
    old, new = make_image("old"), make_image("new")
    await _cached_by_registry2(takeover, old)
    client, store = takeover.worker("auto")
    assert await store.open() == {NAME}

    assert (await takeover.hub.push_image(NAME, new, tag="latest")).status_code == 201
    pulled = await client.get_manifest(NAME, "latest")
    assert pulled.status_code == 200 and pulled.content == new.manifest
    layer = await client.http.get(f"/v2/{NAME}/blobs/{sha256(new.layers[-1])}")
    assert layer.status_code == 200
    # Followed in registry:2's place, not copied under docker.io/.
    assert _tag_link(takeover.root) == new.digest
    catalog = await client.get_json("/v2/_catalog")
    assert catalog["repositories"] == [NAME]
    assert sorted((await client.get_json(f"/v2/{NAME}/tags/list"))["tags"]) == ["latest"]


async def test_a_push_makes_a_cached_name_pushed_for_every_worker(takeover: Takeover) -> None:
    await _cached_by_registry2(takeover, make_image("old"))
    first, first_store = takeover.worker("auto")
    second, second_store = takeover.worker("auto")
    assert await first_store.open() == await second_store.open() == {NAME}

    mine = make_image("mine")
    assert (await first.push_image(NAME, mine, tag="latest")).status_code == 201
    assert not (takeover.root / marker(NAME)).exists()
    # Upstream moves the tag: the pushed tag wins, through either worker.
    await takeover.hub.push_image(NAME, make_image("upstream"), tag="latest")
    for client in (first, second):
        pulled = await client.get_manifest(NAME, "latest")
        assert pulled.content == mine.manifest
    assert takeover.hub_server.count("HEAD", "/manifests/latest") == 0


async def test_pushed_mode_keeps_registry2_content_and_releases_a_recorded_decision(
    takeover: Takeover,
) -> None:
    old = make_image("old")
    await _cached_by_registry2(takeover, old)
    _, auto = takeover.worker("auto")
    assert await auto.open() == {NAME}  # recorded

    client, pushed = takeover.worker("pushed")
    assert await pushed.open() == frozenset()
    await takeover.hub.push_image(NAME, make_image("new"), tag="latest")
    pulled = await client.get_manifest(NAME, "latest")
    assert pulled.content == old.manifest
    assert takeover.hub_server.count("HEAD", "/manifests/") == 0
    assert not (takeover.root / marker(NAME)).exists()
