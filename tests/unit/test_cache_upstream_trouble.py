"""The cache's answers when the upstream rate-limits or refuses: TOOMANYREQUESTS with the
upstream's Retry-After for uncached content, the cached tag (stale) otherwise."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from entrepot.oci.errors import ErrorCode, RegistryError
from entrepot.proxy.cache import ProxyCache, cached_repository
from entrepot.proxy.upstream import UpstreamClient, UpstreamSettings
from entrepot.proxy.upstreams import CachePolicy, Upstream
from entrepot.registry.api import Repository
from entrepot.registry.local import LocalRegistry
from entrepot.storage.filesystem import FilesystemDriver

MANIFEST = (
    b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'
    b'"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":'
    b'"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},'
    b'"layers":[]}'
)


class Upstream429:
    def __init__(self) -> None:
        self.limited = False

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.limited:
            return httpx.Response(429, headers={"Retry-After": "42"}, json={"errors": []})
        import hashlib

        digest = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
        headers = {
            "Content-Type": "application/vnd.oci.image.manifest.v1+json",
            "Docker-Content-Digest": digest,
        }
        if request.method == "HEAD":
            return httpx.Response(200, headers={**headers, "Content-Length": str(len(MANIFEST))})
        return httpx.Response(200, headers=headers, content=MANIFEST)


def _repo(tmp_path: Path, upstream: Upstream429, name: str) -> tuple[Repository, ProxyCache]:
    local = LocalRegistry(FilesystemDriver(tmp_path))
    client = UpstreamClient(
        UpstreamSettings("quay.io", ("https://quay.test",)),
        transport=httpx.MockTransport(upstream),
    )
    cache = ProxyCache(local)
    up = Upstream("quay.io", client, CachePolicy(tag_ttl=0.0))
    return cached_repository(cache, up, name), cache


async def test_rate_limited_uncached_content_is_toomanyrequests_with_retry_after(
    tmp_path: Path,
) -> None:
    upstream = Upstream429()
    upstream.limited = True
    repo, _ = _repo(tmp_path, upstream, "org/app")
    with pytest.raises(RegistryError) as err:
        await repo.manifests.get("v1")
    assert err.value.code is ErrorCode.TOOMANYREQUESTS
    assert err.value.status == 429
    assert err.value.headers["Retry-After"] == "42"


async def test_rate_limited_revalidation_serves_the_cached_tag(tmp_path: Path) -> None:
    upstream = Upstream429()
    repo, cache = _repo(tmp_path, upstream, "org/app")
    first = await repo.manifests.get("v1")
    upstream.limited = True
    again = await repo.manifests.get("v1")
    assert again.raw == first.raw == MANIFEST
    assert cache.total("stale_served") == 1
