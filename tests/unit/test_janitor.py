"""The cache's size cap on blobs held with no cached manifest (fetched on their own): the
ones cached longest ago go first; pushed content never. Images: test_janitor_lru.py."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from entrepot.oci.digest import Digest
from entrepot.proxy.cache import ProxyCache
from entrepot.proxy.janitor import CacheJanitor
from entrepot.registry import layout
from entrepot.registry.local import LocalRegistry
from entrepot.storage.filesystem import FilesystemDriver


async def _hold(local: LocalRegistry, repo: str, data: bytes, age: float) -> Digest:
    """A blob held under ``repo`` (linked), written ``age`` seconds ago."""
    digest = Digest.of(data)
    await local.blobs.put(digest, data)
    await local.links.write(repo, layout.layer_link(repo, digest), digest)
    path = local.driver.local_path(layout.blob_data(digest))
    assert path is not None
    when = time.time() - age
    os.utime(path, (when, when))
    return digest


async def _held(local: LocalRegistry, digest: Digest) -> bool:
    return await local.blobs.stat(digest) is not None


async def test_oldest_cached_blobs_are_evicted_until_under_the_cap(tmp_path: Path) -> None:
    local = LocalRegistry(FilesystemDriver(tmp_path))
    oldest = await _hold(local, "docker.io/library/a", b"o" * 1000, age=300)
    middle = await _hold(local, "docker.io/library/b", b"m" * 1000, age=200)
    newest = await _hold(local, "ghcr.io/org/c", b"n" * 1000, age=100)
    janitor = CacheJanitor(ProxyCache(local), ["docker.io", "ghcr.io"], maxsize=1500)

    result = await janitor.sweep()

    assert result.cached_bytes == 3000
    assert result.evicted == [oldest, middle]
    assert not await _held(local, oldest)
    assert not await _held(local, middle)
    assert await _held(local, newest)
    # the cache no longer claims what it evicted: the next pull refetches it
    link = layout.layer_link("docker.io/library/a", oldest)
    assert not (tmp_path / link).exists()


async def test_pushed_content_is_never_evicted(tmp_path: Path) -> None:
    local = LocalRegistry(FilesystemDriver(tmp_path))
    shared = await _hold(local, "docker.io/library/base", b"s" * 1000, age=500)
    await local.links.write("team/app", layout.layer_link("team/app", shared), shared)
    mine = await _hold(local, "docker.io/team/pushed", b"p" * 1000, age=400)
    tag_dir = tmp_path / layout.tag_dir("docker.io/team/pushed", "v1")
    tag_dir.mkdir(parents=True)
    (tag_dir / "pushed").write_text(str(mine))  # allowpush's marker
    cached = await _hold(local, "docker.io/library/other", b"c" * 1000, age=100)
    janitor = CacheJanitor(ProxyCache(local), ["docker.io"], maxsize=0)

    result = await janitor.sweep()

    assert result.evicted == [cached]
    assert await _held(local, shared)  # also linked by a pushed repository
    assert await _held(local, mine)  # pushed into the cache namespace
    assert not await _held(local, cached)


async def test_under_the_cap_nothing_happens(tmp_path: Path) -> None:
    local = LocalRegistry(FilesystemDriver(tmp_path))
    kept = await _hold(local, "quay.io/x/y", b"k" * 100, age=10)
    result = await CacheJanitor(ProxyCache(local), ["quay.io"], maxsize=1000).sweep()
    assert result.evicted == []
    assert await _held(local, kept)


async def test_a_push_that_links_the_blob_during_eviction_keeps_it(tmp_path: Path) -> None:
    local = LocalRegistry(FilesystemDriver(tmp_path))
    digest = await _hold(local, "docker.io/library/base", b"r" * 1000, age=100)
    janitor = CacheJanitor(ProxyCache(local), ["docker.io"], maxsize=0)
    # A push's manifest links the same layer right after the janitor quarantined it.
    original_move = local.driver.move

    async def move_then_push(
        src: str, dst: str, *, sync: bool = True, if_version: str | None = None
    ) -> None:
        await original_move(src, dst, sync=sync, if_version=if_version)
        if dst.endswith("/evicting"):
            await local.links.write("team/app", layout.layer_link("team/app", digest), digest)

    local.driver.move = move_then_push  # type: ignore[method-assign]
    result = await janitor.sweep()
    assert result.evicted == []
    assert await _held(local, digest)


async def test_a_blob_a_request_puts_back_after_the_re_read_keeps_its_bytes(
    tmp_path: Path,
) -> None:
    """A request that checked the blob before the eviction set it aside, and links it after
    the eviction read the links again, puts the bytes back itself (BlobStore.confirm):
    the eviction then deletes only its set-aside copy, not the folder with the bytes."""
    local = LocalRegistry(FilesystemDriver(tmp_path))
    digest = await _hold(local, "docker.io/library/base", b"r" * 1000, age=100)
    janitor = CacheJanitor(ProxyCache(local), ["docker.io"], maxsize=0)
    late = layout.layer_link("team/late", digest)
    driver = local.driver
    original_delete, original_delete_in = driver.delete, driver.delete_in

    async def link_late() -> None:
        if not (tmp_path / late).exists():
            await local.links.write("team/late", late, digest)

    async def delete(key: str) -> None:
        if key.startswith(layout.blob_dir(digest)):
            await link_late()
        await original_delete(key)

    async def delete_in(folders: Sequence[str], name: str) -> None:
        if layout.blob_dir(digest) in folders:
            await link_late()
        await original_delete_in(folders, name)

    driver.delete = delete  # type: ignore[method-assign]
    driver.delete_in = delete_in  # type: ignore[method-assign]
    result = await janitor.sweep()
    assert (tmp_path / late).exists()
    assert result.evicted == [digest]  # the eviction did not see the late link
    assert await _held(local, digest)
    assert (tmp_path / layout.blob_data(digest)).read_bytes() == b"r" * 1000
    assert not (tmp_path / layout.blob_dir(digest) / "evicting").exists()
