"""The cache's eviction by image: least recently pulled first, with tags and manifests;
pulls recorded in memory and written in batches; ttl; shared and pushed blobs kept."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from entrepot.oci import mediatypes as mt
from entrepot.oci.digest import Digest
from entrepot.oci.manifest import parse_manifest
from entrepot.proxy.cache import ProxyCache
from entrepot.proxy.janitor import CacheJanitor
from entrepot.proxy.metrics import CacheEvents, ProxyMetrics
from entrepot.registry import layout
from entrepot.registry.local import LocalRegistry
from entrepot.registry.pullcompact import compact_once
from entrepot.registry.pulls import BATCHES, MERGED, PullRecorder, load_record, load_times
from entrepot.storage import StorageDriver, StorageError
from entrepot.storage.filesystem import FilesystemDriver

KB = 1000


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class CountingDriver(FilesystemDriver):
    """Counts the objects written (put_content), to prove pulls cost no write."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.puts: list[str] = []

    async def put_content(self, key: str, data: bytes) -> None:
        self.puts.append(key)
        await super().put_content(key, data)


def _age(driver: StorageDriver, key: str, when: float) -> None:
    path = driver.local_path(key)
    assert path is not None
    os.utime(path, (when, when))


async def _blob(local: LocalRegistry, repo: str, data: bytes) -> Digest:
    digest = Digest.of(data)
    await local.blobs.put(digest, data)
    await local.links.write(repo, layout.layer_link(repo, digest), digest)
    return digest


async def _image(
    local: LocalRegistry, repo: str, tag: str | None, layers: list[bytes], cached_at: float
) -> Digest:
    """An image cached at ``cached_at``: config and layers linked, the manifest stored and
    tagged, every file dated then (as a cache fill long ago would have left them)."""
    config = await _blob(local, repo, json.dumps({"repo": repo, "tag": tag}).encode())
    digests = [await _blob(local, repo, data) for data in layers]
    raw = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": str(config),
                "size": 1,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": str(d),
                    "size": len(data),
                }
                for d, data in zip(digests, layers, strict=True)
            ],
        }
    ).encode()
    manifest = parse_manifest(raw, mt.OCI_MANIFEST)
    await local.manifests.of(repo).store(manifest, tag)
    for key in (
        layout.manifest_revision_link(repo, manifest.digest),
        *(layout.blob_data(d) for d in (manifest.digest, config, *digests)),
        *([layout.tag_current_link(repo, tag)] if tag else []),
    ):
        _age(local.driver, key, cached_at)
    return manifest.digest


async def _index(
    local: LocalRegistry, repo: str, tag: str, children: list[Digest], cached_at: float
) -> Digest:
    raw = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_INDEX,
            "manifests": [
                {"mediaType": mt.OCI_MANIFEST, "digest": str(c), "size": 1} for c in children
            ],
        }
    ).encode()
    manifest = parse_manifest(raw, mt.OCI_INDEX)
    await local.manifests.of(repo).store(manifest, tag)
    for key in (
        layout.manifest_revision_link(repo, manifest.digest),
        layout.blob_data(manifest.digest),
        layout.tag_current_link(repo, tag),
    ):
        _age(local.driver, key, cached_at)
    return manifest.digest


def _tagged(root: Path, repo: str, tag: str) -> bool:
    return (root / layout.tag_current_link(repo, tag)).exists()


def _held(root: Path, digest: Digest) -> bool:
    return (root / layout.blob_data(digest)).exists()


def _janitor(local: LocalRegistry, clock: Clock, maxsize: int | None, **kw: object) -> CacheJanitor:
    cache = ProxyCache(local)
    cache.pulls = PullRecorder(local.driver, clock)
    return CacheJanitor(cache, ["docker.io"], maxsize, clock=clock, **kw)  # type: ignore[arg-type]


async def test_the_least_recently_pulled_image_goes_with_its_tag_and_manifest(
    tmp_path: Path,
) -> None:
    local = LocalRegistry(FilesystemDriver(tmp_path))
    clock = Clock()
    repo_a, repo_b, repo_c = "docker.io/library/a", "docker.io/library/b", "docker.io/library/c"
    # Cached in the order A, B, C; A's layer is the biggest (evicting it would free most).
    a = await _image(local, repo_a, "1", [b"A" * 30 * KB], clock.now - 300)
    b = await _image(local, repo_b, "1", [b"B" * 10 * KB], clock.now - 200)
    c = await _image(local, repo_c, "1", [b"C" * 10 * KB], clock.now - 100)
    janitor = _janitor(local, clock, maxsize=45 * KB)
    assert janitor.cache.pulls is not None
    janitor.cache.pulls.record(repo_a, a)  # A pulled again, after C was cached

    result = await janitor.sweep()

    assert result.images == [f"{repo_b}@{b}"]  # B: cached after A, but pulled before it
    assert not _tagged(tmp_path, repo_b, "1")
    assert not (tmp_path / layout.manifest_revision_link(repo_b, b)).exists()
    assert not _held(tmp_path, b)
    assert (result.tags, result.manifests, len(result.evicted)) == (1, 1, 3)
    assert _tagged(tmp_path, repo_a, "1") and _held(tmp_path, a)
    assert _tagged(tmp_path, repo_c, "1") and _held(tmp_path, c)
    assert result.cached_bytes - result.freed_bytes <= 45 * KB


async def test_a_pull_by_digest_of_an_index_child_keeps_the_tagged_index(tmp_path: Path) -> None:
    local = LocalRegistry(FilesystemDriver(tmp_path))
    clock = Clock()
    multi, single = "docker.io/library/multi", "docker.io/library/single"
    amd64 = await _image(local, multi, None, [b"x" * 10 * KB], clock.now - 500)
    arm64 = await _image(local, multi, None, [b"y" * 10 * KB], clock.now - 500)
    index = await _index(local, multi, "latest", [amd64, arm64], clock.now - 500)
    lone = await _image(local, single, "1", [b"s" * 10 * KB], clock.now - 100)
    janitor = _janitor(local, clock, maxsize=25 * KB)
    assert janitor.cache.pulls is not None
    # A client resolved the tag long ago; now it pulls one platform by digest.
    janitor.cache.pulls.record(multi, amd64)

    result = await janitor.sweep()

    assert result.images == [f"{single}@{lone}"]
    assert _tagged(tmp_path, multi, "latest")
    for digest in (index, amd64, arm64):  # the whole index stays: one image
        assert (tmp_path / layout.manifest_revision_link(multi, digest)).exists()


async def test_pulls_are_written_in_batches_and_read_across_workers(tmp_path: Path) -> None:
    driver = CountingDriver(tmp_path)
    clock = Clock()
    first, second = PullRecorder(driver, clock), PullRecorder(driver, clock)
    digest = Digest.of(b"manifest")
    for _ in range(1000):
        first.record("docker.io/library/a", digest)
    clock.now += 5
    second.record("docker.io/library/a", digest)
    second.record("docker.io/library/b", digest)
    assert driver.puts == []  # recording costs no storage write

    await first.flush()
    await second.flush()
    await first.flush()  # nothing new: no write

    assert len(driver.puts) == 2 and all(k.startswith(BATCHES) for k in driver.puts)
    pulls = (await load_times(driver)).by_digest
    assert pulls == {
        ("docker.io/library/a", str(digest)): clock.now,  # the later of the two workers'
        ("docker.io/library/b", str(digest)): clock.now,
    }


async def test_a_failed_batch_write_keeps_the_pulls_for_the_next_one(tmp_path: Path) -> None:
    driver = CountingDriver(tmp_path)
    recorder = PullRecorder(driver)
    digest = Digest.of(b"m")
    recorder.record("docker.io/x/y", digest)
    (tmp_path / "entrepot").write_text("a file where the folder should be")
    with pytest.raises(StorageError):
        await recorder.flush()
    assert ("docker.io/x/y", None, str(digest)) in recorder.pending


async def test_ttl_expires_images_not_pulled_and_keeps_shared_blobs(tmp_path: Path) -> None:
    local = LocalRegistry(FilesystemDriver(tmp_path))
    clock = Clock()
    shared = b"base layer" * KB
    old = await _image(local, "docker.io/library/old", "1", [shared], clock.now - 7200)
    new = await _image(local, "docker.io/library/new", "1", [shared], clock.now - 7200)
    janitor = _janitor(local, clock, maxsize=None, ttls={"docker.io": 3600.0})
    assert janitor.cache.pulls is not None
    janitor.cache.pulls.record("docker.io/library/new", new)  # pulled just now

    result = await janitor.sweep()

    assert result.images == [f"docker.io/library/old@{old}"] and result.expired == 1
    assert not _tagged(tmp_path, "docker.io/library/old", "1")
    assert _tagged(tmp_path, "docker.io/library/new", "1")
    assert _held(tmp_path, Digest.of(shared))  # the retained image still uses it
    # ... but the expired image's repository no longer claims it
    assert not (tmp_path / layout.layer_link("docker.io/library/old", Digest.of(shared))).exists()
    assert not _held(tmp_path, old)


async def test_a_blob_shared_with_a_pushed_image_survives_eviction(tmp_path: Path) -> None:
    local = LocalRegistry(FilesystemDriver(tmp_path))
    clock = Clock()
    shared = b"shared with a push" * KB
    cached = await _image(local, "docker.io/library/base", "1", [shared], clock.now - 900)
    await _image(local, "team/app", "v1", [shared], clock.now - 900)  # pushed, same layer
    janitor = _janitor(local, clock, maxsize=1)

    result = await janitor.sweep()

    assert result.images == [f"docker.io/library/base@{cached}"]
    assert not _tagged(tmp_path, "docker.io/library/base", "1")
    assert _held(tmp_path, Digest.of(shared))
    assert _tagged(tmp_path, "team/app", "v1")
    # The evicted image's links go too, the shared blob's included: a repository left
    # with links and no image stayed in _catalog.
    links = tmp_path / layout.repository("docker.io/library/base") / "_layers"
    assert not [p for p in links.rglob("link")]
    assert (tmp_path / layout.layer_link("team/app", Digest.of(shared))).exists()


async def test_an_image_whose_bytes_pushed_content_holds_is_not_evicted_for_space(
    tmp_path: Path,
) -> None:
    # Evicting it would free nothing: the cap is met by images that free bytes.
    local = LocalRegistry(FilesystemDriver(tmp_path))
    clock = Clock()
    same = await _image(local, "docker.io/library/same", "1", [b"a" * KB], clock.now - 900)
    raw = (tmp_path / layout.blob_data(same)).read_bytes()
    for link in (tmp_path / layout.repository("docker.io/library/same") / "_layers").rglob("link"):
        digest = Digest.parse(link.read_text())
        await local.links.write("team/same", layout.layer_link("team/same", digest), digest)
    await local.manifests.of("team/same").store(parse_manifest(raw, mt.OCI_MANIFEST), "v1")
    other = await _image(local, "docker.io/library/other", "1", [b"b" * KB], clock.now - 800)

    result = await _janitor(local, clock, maxsize=1).sweep()

    assert result.images == [f"docker.io/library/other@{other}"]
    assert _tagged(tmp_path, "docker.io/library/same", "1")


async def test_pull_records_of_evicted_images_are_dropped(tmp_path: Path) -> None:
    local = LocalRegistry(FilesystemDriver(tmp_path))
    clock = Clock()
    gone = await _image(local, "docker.io/library/gone", "1", [b"g" * KB], clock.now - 50)
    janitor = _janitor(local, clock, maxsize=None, ttls={"docker.io": 10.0})
    assert janitor.cache.pulls is not None
    janitor.cache.pulls.record("docker.io/library/gone", gone)
    clock.now += 60  # not pulled since

    await janitor.sweep()
    assert await compact_once(local.driver) is not None

    record = await load_record(local.driver)
    assert record.pulls == {} and record.read == []
    assert (tmp_path / MERGED).exists()


async def test_each_run_logs_one_summary_line_and_counts_in_metrics(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    local = LocalRegistry(FilesystemDriver(tmp_path))
    clock = Clock()
    registry = CollectorRegistry()
    metrics = ProxyMetrics(registry)
    await _image(local, "docker.io/library/old", "1", [b"o" * 10 * KB], clock.now - 9000)
    await _image(local, "docker.io/library/big", "1", [b"b" * 20 * KB], clock.now - 100)
    await _image(local, "docker.io/library/new", "1", [b"n" * 10 * KB], clock.now - 50)
    cache = ProxyCache(local, events=CacheEvents(metrics))
    janitor = CacheJanitor(
        cache, ["docker.io"], 15 * KB, ttls={"docker.io": 3600.0}, metrics=metrics, clock=clock
    )

    with caplog.at_level(logging.INFO, logger="entrepot.proxy.janitor"):
        result = await janitor.sweep()
        await janitor.sweep()  # nothing left to evict: no line

    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(
        "cache eviction: 2 image(s) evicted (1 not pulled within their ttl, 1 least recently "
        f"pulled beyond maxsize {15 * KB} bytes), 2 tag(s), 2 manifest(s), 6 blob(s), "
    )
    assert f"{result.freed_bytes} bytes freed" in line
    assert line.endswith("; evicted: docker.io/library/old:1, docker.io/library/big:1")
    sample = registry.get_sample_value
    assert sample("entrepot_proxy_evicted_images_total", {"reason": "ttl"}) == 1
    assert sample("entrepot_proxy_evicted_images_total", {"reason": "maxsize"}) == 1
    assert sample("entrepot_proxy_evicted_tags_total", {}) == 2
    assert sample("entrepot_proxy_evicted_blobs_total", {}) == len(result.evicted) == 6
    assert sample("entrepot_proxy_evicted_bytes_total", {}) == result.freed_bytes > 30 * KB
    assert sample("entrepot_proxy_eviction_runs_total", {}) == 2
    assert sample("entrepot_proxy_cached_bytes", {}) == result.cached_bytes - result.freed_bytes
