"""The cache's answers when the upstream rate-limits or refuses: TOOMANYREQUESTS with the
upstream's Retry-After for uncached content, the cached tag (stale) otherwise."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from entrepot.oci.errors import ErrorCode, RegistryError
from entrepot.proxy.cache import ProxyCache, cached_repository
from entrepot.proxy.upstream_client import UpstreamClient, UpstreamSettings
from entrepot.proxy.upstreams import CachePolicy, Upstream
from entrepot.registry.api import Repository
from entrepot.registry.local import LocalRegistry
from entrepot.storage.filesystem import FilesystemDriver
from tests.loopback import Servers

MANIFEST = (
    b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'
    b'"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":'
    b'"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},'
    b'"layers":[]}'
)


class Upstream429:
    """A registry answering the manifest, or 429 with Retry-After once ``limited``."""

    def __init__(self) -> None:
        self.limited = False

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        if self.limited:
            return web.json_response({"errors": []}, status=429, headers={"Retry-After": "42"})
        headers = {
            "Content-Type": "application/vnd.oci.image.manifest.v1+json",
            "Docker-Content-Digest": "sha256:" + hashlib.sha256(MANIFEST).hexdigest(),
        }
        return web.Response(body=MANIFEST, headers=headers)  # HEAD: the length, no body


@dataclass
class Setup:
    upstream: Upstream429
    repo: Repository
    cache: ProxyCache


@pytest.fixture
async def setup(tmp_path: Path, loopback: Servers) -> AsyncIterator[Setup]:
    upstream = Upstream429()
    server = await loopback.start(upstream)
    client = UpstreamClient(UpstreamSettings("quay.io", (server.url,)))
    cache = ProxyCache(LocalRegistry(FilesystemDriver(tmp_path)))
    repo = cached_repository(
        cache, Upstream("quay.io", client, CachePolicy(tag_ttl=0.0)), "org/app"
    )
    yield Setup(upstream, repo, cache)
    await cache.aclose()
    await client.aclose()


async def test_rate_limited_uncached_content_is_toomanyrequests_with_retry_after(
    setup: Setup,
) -> None:
    setup.upstream.limited = True
    with pytest.raises(RegistryError) as err:
        await setup.repo.manifests.get("v1")
    assert err.value.code is ErrorCode.TOOMANYREQUESTS
    assert err.value.status == 429
    assert err.value.headers["Retry-After"] == "42"


async def test_rate_limited_revalidation_serves_the_cached_tag(setup: Setup) -> None:
    first = await setup.repo.manifests.get("v1")
    setup.upstream.limited = True
    again = await setup.repo.manifests.get("v1")
    assert again.raw == first.raw == MANIFEST
    assert setup.cache.total("stale_served") == 1
