"""Garbage collection on a store written through the driver, in registry:2's layout.

The collector's clock runs two hours ahead, so what a test writes is older than the default
one-hour grace window unless the test says otherwise.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from pathlib import Path

import pytest

from entrepot.oci.digest import Digest
from entrepot.registry import layout, storecalls
from entrepot.registry.blobs import count_link
from entrepot.registry.catalog import RepositoryIndex
from entrepot.registry.gc import QUARANTINE, GarbageCollector, GcOptions, GcResult
from entrepot.registry.gcscan import (
    UNREAD,
    Blobs,
    RepoScan,
    find_blobs,
    read_blobs,
    scan_repository,
    scan_store,
)
from entrepot.registry.gcwalk import TAGS, repository_records
from entrepot.registry.manifestrefs import ManifestRefs
from entrepot.registry.storecalls import Limited
from entrepot.storage import StorageDriver, StorageNotFound
from entrepot.storage.driver import Aside, Fold, Infos, Moved, Records, Shard
from entrepot.storage.filesystem import FilesystemDriver
from entrepot.storage.localwalk import LocalWalk

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
LATER = 2 * 3600.0


@pytest.fixture
def driver(tmp_path: Path) -> FilesystemDriver:
    return FilesystemDriver(tmp_path / "root")


async def blob(driver: StorageDriver, data: bytes) -> Digest:
    digest = Digest.of(data)
    await driver.put_content(layout.blob_data(digest), data)
    return digest


async def link(driver: StorageDriver, key: str, digest: Digest) -> None:
    """A repository link, written as a server writes one: counted after (blobs.count_link),
    so that a collection whose re-check read the store before sees that one came."""
    await driver.put_content(key, str(digest).encode())
    await count_link(driver)


async def layer(driver: StorageDriver, name: str, data: bytes) -> Digest:
    digest = await blob(driver, data)
    await link(driver, layout.layer_link(name, digest), digest)
    return digest


def descriptor(digest: Digest, media_type: str = "application/octet-stream") -> dict[str, object]:
    return {"mediaType": media_type, "digest": str(digest), "size": 1}


async def manifest(
    driver: StorageDriver,
    name: str,
    layers: list[Digest],
    *,
    tag: str | None = None,
    subject: Digest | None = None,
    children: list[Digest] | None = None,
) -> Digest:
    doc: dict[str, object] = {"schemaVersion": 2}
    if children is not None:
        doc["mediaType"] = OCI_INDEX
        doc["manifests"] = [descriptor(c, OCI_MANIFEST) for c in children]
    else:
        config = await layer(driver, name, f"config of {name} {layers}".encode())
        doc["mediaType"] = OCI_MANIFEST
        doc["config"] = descriptor(config)
        doc["layers"] = [descriptor(d) for d in layers]
    if subject is not None:
        doc["subject"] = descriptor(subject, OCI_MANIFEST)
    digest = await blob(driver, json.dumps(doc).encode())
    await link(driver, layout.manifest_revision_link(name, digest), digest)
    if tag is not None:
        await driver.put_content(layout.tag_current_link(name, tag), str(digest).encode())
        await driver.put_content(layout.tag_index_link(name, tag, digest), str(digest).encode())
    return digest


async def collect(
    driver: StorageDriver, lines: list[str] | None = None, **options: object
) -> GcResult:
    """A collection two hours from now (``lines``: what it says)."""
    lines = [] if lines is None else lines
    gc = GarbageCollector(
        driver,
        GcOptions(**options),  # type: ignore[arg-type]
        emit=lines.append,
        clock=lambda: time.time() + LATER,
    )
    return await gc.run()


async def exists(driver: StorageDriver, key: str) -> bool:
    try:
        await driver.stat(key)
    except StorageNotFound:
        return False
    return True


def age(driver: FilesystemDriver, *keys: str) -> None:
    then = time.time() - LATER
    for key in keys:
        os.utime(driver.local_path(key), (then, then))


async def test_unreferenced_blobs_go_with_their_links(driver: FilesystemDriver) -> None:
    kept = await layer(driver, "team/app", b"kept layer")
    await manifest(driver, "team/app", [kept], tag="v1")
    stray = await layer(driver, "team/app", b"never referenced")
    result = await collect(driver)
    assert set(result.blobs_deleted) == {stray}
    assert result.bytes_freed == len(b"never referenced")
    assert not await exists(driver, layout.blob_dir(stray))
    assert not await exists(driver, layout.layer_link("team/app", stray))
    assert await exists(driver, layout.blob_data(kept))


async def test_each_blob_eligible_is_said_on_a_line_of_its_own(
    driver: FilesystemDriver,
) -> None:
    # As a server's scheduled collection logs them: one line each, in digest order.
    strays = [await layer(driver, "team/app", b"stray %d" % n) for n in range(5)]
    lines: list[str] = []
    await collect(driver, lines)
    said = [line for line in lines if line.startswith("blob eligible for deletion: ")]
    assert said == [f"blob eligible for deletion: {d}" for d in sorted(strays)]


async def test_dry_run_deletes_nothing(driver: FilesystemDriver, tmp_path: Path) -> None:
    stray = await layer(driver, "team/app", b"never referenced")
    await manifest(driver, "team/gone", [await layer(driver, "team/gone", b"x")])
    before = sorted(p for p in (tmp_path / "root").rglob("*"))
    result = await collect(driver, dry_run=True, delete_untagged=True)
    assert stray in result.blobs_eligible
    assert result.blobs_deleted == {}
    assert [name for name, _ in result.manifests_eligible] == ["team/gone"]
    assert result.repositories_removed == ["team/app", "team/gone"]
    assert sorted(p for p in (tmp_path / "root").rglob("*")) == before


async def test_what_the_grace_window_alone_kept_is_said(driver: FilesystemDriver) -> None:
    # Right after pushes: a tag moved on (its old image untagged), a repository whose only
    # manifest was deleted, a stray upload. With -m and no grace all three would go.
    shared = await layer(driver, "team/app", b"layer")
    await manifest(driver, "team/app", [shared], tag="v1")
    old_image = await manifest(driver, "team/app", [await layer(driver, "team/app", b"l2")])
    await driver.put_content(layout.tag_current_link("team/app", "v1"), str(old_image).encode())
    gone = await manifest(driver, "team/gone", [await layer(driver, "team/gone", b"l3")])
    await driver.delete(layout.manifest_revision_dir("team/gone", gone))
    lines: list[str] = []
    gc = GarbageCollector(driver, GcOptions(delete_untagged=True), emit=lines.append)

    result = await gc.run()  # the real clock: everything is within the hour's grace

    assert result.blobs_deleted == {} and result.manifests_deleted == []
    assert (result.manifests_kept_fresh, result.repositories_kept_fresh) == (1, 1)
    assert result.blobs_kept_fresh == 3  # team/gone's manifest, config and layer
    assert lines[-1] == (
        "kept as written or linked within the grace window (the last 3600s, --grace): "
        "0 tags, 1 manifests, 3 unreferenced blobs and 1 emptied repositories; a later "
        "collection deletes them"
    )
    aged = await collect(driver, delete_untagged=True)  # two hours on: they go
    assert len(aged.manifests_deleted) == 1 and aged.repositories_removed == ["team/gone"]


async def test_nothing_kept_for_grace_says_nothing_of_it(driver: FilesystemDriver) -> None:
    await manifest(driver, "team/app", [await layer(driver, "team/app", b"l")], tag="v1")
    lines: list[str] = []
    await GarbageCollector(driver, GcOptions(delete_untagged=True), emit=lines.append).run()
    assert not any("grace window (the last" in line for line in lines)


async def test_grace_window_keeps_fresh_blobs_and_links(driver: FilesystemDriver) -> None:
    fresh_blob = await layer(driver, "team/app", b"just uploaded")
    old_blob_fresh_link = await layer(driver, "team/app", b"old bytes, linked again")
    old = await layer(driver, "team/app", b"old and unlinked for long")
    age(driver, layout.blob_data(old_blob_fresh_link), layout.blob_data(old))
    age(driver, layout.layer_link("team/app", old))
    gc = GarbageCollector(driver, GcOptions(), emit=lambda _: None)  # the real clock
    result = await gc.run()
    assert set(result.blobs_deleted) == {old}
    assert result.blobs_kept_fresh == 2
    assert await exists(driver, layout.blob_data(fresh_blob))
    assert await exists(driver, layout.blob_data(old_blob_fresh_link))


async def test_upload_in_progress_keeps_its_repository_layers(driver: FilesystemDriver) -> None:
    # A long push: its first layer went up hours ago, the next one is still uploading.
    sent = await layer(driver, "team/app", b"first layer of a push under way")
    age(driver, layout.blob_data(sent), layout.layer_link("team/app", sent))
    upload = layout.upload_data("team/app", "abc-123")
    await driver.put_content(upload, b"second layer...")
    gc = GarbageCollector(driver, GcOptions(), emit=lambda _: None)  # the real clock
    result = await gc.run()
    assert result.blobs_deleted == {}
    assert await exists(driver, layout.blob_data(sent))
    # Abandoned (nothing written for longer than the grace window), it protects nothing.
    age(driver, upload)
    result = await GarbageCollector(driver, GcOptions(), emit=lambda _: None).run()
    assert set(result.blobs_deleted) == {sent}


class SegmentedFilesystem(FilesystemDriver):
    """Keeps chunks as segments of their own, as on S3 (see registry/segments.py)."""

    appends_in_place = False


async def test_an_upload_whose_newest_segment_is_fresh_is_in_progress(tmp_path: Path) -> None:
    driver = SegmentedFilesystem(tmp_path / "segmented")
    sent = await layer(driver, "team/app", b"first layer of a push under way")
    age(driver, layout.blob_data(sent), layout.layer_link("team/app", sent))
    upload = layout.upload_data("team/app", "abc-123")
    await driver.put_content(upload, b"first chunk, hours ago")
    age(driver, upload)
    await driver.put_content(f"{upload}.{22:020d}", b"the next chunk, just now")
    result = await GarbageCollector(driver, GcOptions(), emit=lambda _: None).run()
    assert result.blobs_deleted == {}
    age(driver, f"{upload}.{22:020d}")
    result = await GarbageCollector(driver, GcOptions(), emit=lambda _: None).run()
    assert set(result.blobs_deleted) == {sent}


async def test_delete_untagged_keeps_index_children_and_referrers(
    driver: FilesystemDriver,
) -> None:
    name = "team/multi"
    amd = await manifest(driver, name, [await layer(driver, name, b"amd64 layer")])
    arm = await manifest(driver, name, [await layer(driver, name, b"arm64 layer")])
    index = await manifest(driver, name, [], children=[amd, arm], tag="v1")
    signature = await manifest(driver, name, [await layer(driver, name, b"sig")], subject=index)
    sbom_of_child = await manifest(driver, name, [await layer(driver, name, b"sbom")], subject=amd)
    old_layer = await layer(driver, name, b"overwritten")
    overwritten = await manifest(driver, name, [old_layer])
    result = await collect(driver, delete_untagged=True)
    assert result.manifests_deleted == [(name, overwritten)]
    assert old_layer in result.blobs_deleted
    for kept in (index, amd, arm, signature, sbom_of_child):
        assert await exists(driver, layout.manifest_revision_link(name, kept))
    assert not await exists(driver, layout.manifest_revision_dir(name, overwritten))


async def test_emptied_repository_is_removed_and_leaves_the_catalog(
    driver: FilesystemDriver, tmp_path: Path
) -> None:
    shared = await layer(driver, "team/kept", b"shared")
    await manifest(driver, "team/kept", [shared], tag="v1")
    await driver.put_content(layout.layer_link("team/gone", shared), str(shared).encode())
    nested = await manifest(
        driver, "team/gone/nested", [await layer(driver, "team/gone/nested", b"n")]
    )
    untagged = await manifest(driver, "team/gone", [shared])
    index = RepositoryIndex(driver)
    assert await index.names() == ["team/gone", "team/gone/nested", "team/kept"]

    result = await collect(driver, delete_untagged=True)

    assert set(result.manifests_deleted) == {("team/gone", untagged), ("team/gone/nested", nested)}
    assert result.repositories_removed == ["team/gone", "team/gone/nested"]
    assert await index.names() == ["team/kept"]
    assert not (tmp_path / "root" / layout.repository("team")).joinpath("gone").exists()
    assert await exists(driver, layout.blob_data(shared))


Interleave = Callable[[], Awaitable[None]]


class SeesWalks(FilesystemDriver):
    """A filesystem driver that calls ``walked`` with each local walk's prefix, walk and
    arguments, and runs ``marking`` once, as a walk of the mark's (gcwalk's) has read
    all of its repositories: a push the mark missed, before the mark ends."""

    marking: Interleave | None = None

    def walked(self, prefix: str, walk: LocalWalk, args: tuple[str, ...]) -> None:
        pass

    async def walk_local(
        self,
        prefix: str,
        walk: LocalWalk,
        args: tuple[str, ...] = (),
        *,
        shard: Shard | None = None,
        apart: bool = False,
    ) -> AsyncGenerator[Records, None]:
        self.walked(prefix, walk, args)
        async for batch in super().walk_local(prefix, walk, args, shard=shard, apart=apart):
            yield batch
        if walk is repository_records and self.marking is not None:
            action, self.marking = self.marking, None
            await action()


class Interleaving(SeesWalks):
    """A filesystem driver that runs ``action`` once, just before the first move onto a
    quarantine key (the sweep has marked, and is about to put blobs aside)."""

    action: Interleave | None = None

    async def _before(self, dst: str) -> None:
        if dst.endswith(f"/{QUARANTINE}") and self.action is not None:
            action, self.action = self.action, None
            await action()

    async def move(
        self, src: str, dst: str, *, sync: bool = True, if_version: str | None = None
    ) -> None:
        await self._before(dst)
        await super().move(src, dst, sync=sync, if_version=if_version)

    async def move_many(self, moves: Sequence[tuple[str, str]], *, sync: bool = True) -> Moved:
        for _, dst in moves:
            await self._before(dst)
        return await super().move_many(moves, sync=sync)

    async def move_stale_in(
        self,
        folders: Sequence[str],
        src: str,
        dst: str,
        older_than: float,
        *,
        sync: bool = True,
    ) -> Aside:
        for folder in folders:
            await self._before(f"{folder}/{dst}")
        return await super().move_stale_in(folders, src, dst, older_than, sync=sync)


async def test_a_push_linking_a_blob_during_the_sweep_keeps_it(tmp_path: Path) -> None:
    driver = Interleaving(tmp_path / "root")
    orphan = await layer(driver, "team/app", b"unreferenced at mark time")

    async def push_mounts_it() -> None:
        # A cross-repository mount (or an upload of the same bytes) into a new repository.
        await link(driver, layout.layer_link("team/new", orphan), orphan)

    driver.action = push_mounts_it
    result = await collect(driver)
    assert result.blobs_relinked == 1
    assert result.blobs_deleted == {}
    assert await exists(driver, layout.blob_data(orphan))
    assert not await exists(driver, f"{layout.blob_dir(orphan)}/{QUARANTINE}")


async def test_a_push_linking_again_a_blob_a_repository_had_keeps_it(tmp_path: Path) -> None:
    # The re-check reads again the links of the blobs put aside: one that a push wrote
    # again (where a stale link was, or where a blob DELETE left the folder) saves it.
    driver = Interleaving(tmp_path / "root")
    stale = await layer(driver, "team/app", b"linked long ago, never referenced")
    emptied = await layer(driver, "team/other", b"unlinked by a blob DELETE")
    await driver.delete(layout.layer_link("team/other", emptied))  # its folder stays
    age(driver, layout.layer_link("team/app", stale))
    gone = await layer(driver, "team/app", b"linked long ago, left alone")

    async def push_links_again() -> None:
        for name, digest in (("team/app", stale), ("team/other", emptied)):
            await link(driver, layout.layer_link(name, digest), digest)

    driver.action = push_links_again
    result = await collect(driver)
    assert result.blobs_relinked == 2
    assert set(result.blobs_deleted) == {gone}
    for digest in (stale, emptied):
        assert await exists(driver, layout.blob_data(digest))
        assert not await exists(driver, f"{layout.blob_dir(digest)}/{QUARANTINE}")


async def test_a_manifest_pushed_during_the_sweep_keeps_its_blobs(tmp_path: Path) -> None:
    driver = Interleaving(tmp_path / "root")
    orphan = await layer(driver, "team/app", b"linked, no manifest yet")

    async def manifest_arrives() -> None:
        await manifest(driver, "team/app", [orphan], tag="v1")

    driver.action = manifest_arrives
    result = await collect(driver)
    assert orphan not in result.blobs_deleted
    assert await exists(driver, layout.blob_data(orphan))


async def test_a_tag_set_during_the_sweep_saves_its_manifest(tmp_path: Path) -> None:
    driver = Interleaving(tmp_path / "root")
    name = "team/app"
    base = await layer(driver, name, b"layer of an untagged image")
    untagged = await manifest(driver, name, [base])

    class TagsWhileSweeping(Interleaving):
        async def scan(
            self, prefix: str, *, fold: Fold | None = None
        ) -> AsyncGenerator[Infos, None]:
            # The mark scans the whole store; the sweep reads the repository's manifests
            # and tags again before unlinking: a push tags the manifest just before.
            if prefix == f"{layout.repository(name)}/_manifests":
                await self.put_content(
                    layout.tag_current_link(name, "late"), str(untagged).encode()
                )
            async for batch in super().scan(prefix, fold=fold):
                yield batch

    result = await collect(TagsWhileSweeping(tmp_path / "root"), delete_untagged=True)
    assert result.manifests_deleted == []
    assert result.blobs_deleted == {}
    assert await exists(driver, layout.manifest_revision_link(name, untagged))
    assert await exists(driver, layout.blob_data(base))


async def test_a_repository_pushed_again_after_removal_is_listed_by_every_worker(
    driver: FilesystemDriver,
) -> None:
    pusher, lister = RepositoryIndex(driver), RepositoryIndex(driver)  # two workers
    await manifest(driver, "team/app", [await layer(driver, "team/app", b"a")])
    await pusher.note("team/app")
    assert await lister.names() == ["team/app"]
    result = await collect(driver, delete_untagged=True)
    assert result.repositories_removed == ["team/app"]
    assert await lister.names() == []
    # The pusher announced team/app before; pushed anew, it announces it again.
    await manifest(driver, "team/app", [await layer(driver, "team/app", b"b")], tag="v1")
    await pusher.note("team/app")
    assert await lister.names() == ["team/app"]


async def test_layer_folders_without_a_link(driver: FilesystemDriver) -> None:
    # The store's scan takes a layer folder's name without opening it; one repository's
    # scan (the cache's eviction reads it) counts only the layers still linked.
    linked = await layer(driver, "team/app", b"linked")
    unlinked = await layer(driver, "team/app", b"unlinked by a blob DELETE")
    await driver.delete(layout.layer_link("team/app", unlinked))  # its folder stays
    store = Limited(driver, 4)
    assert (await scan_store(store, 0.0))["team/app"].layers == {linked, unlinked}
    assert (await scan_repository(store, "team/app", 0.0)).layers == {linked}


async def test_a_repository_an_upload_just_began_in_is_not_removed(
    driver: FilesystemDriver, tmp_path: Path
) -> None:
    # A POST made the upload's folder and has not written its first file yet: the
    # repository has no manifest, and removing it failed the POST (and would lose it).
    started = tmp_path / "root" / layout.repository("team/new") / "_uploads" / "c8e82546"
    started.mkdir(parents=True)
    result = await collect(driver, grace=0)
    assert result.repositories_removed == []
    assert started.is_dir()


async def test_an_upload_begun_after_the_scan_keeps_its_repository(
    driver: FilesystemDriver, tmp_path: Path
) -> None:
    gone = await manifest(driver, "team/app", [await layer(driver, "team/app", b"x")])
    await driver.delete(layout.manifest_revision_dir("team/app", gone))
    age(driver, *[str(p.relative_to(tmp_path / "root")) for p in (tmp_path / "root").rglob("link")])
    gc = GarbageCollector(driver, GcOptions(grace=0), emit=lambda _: None)
    real_empty = gc._empty_repositories

    async def then_a_post(*args: object) -> list[str]:
        empty = await real_empty(*args)  # type: ignore[arg-type]
        (tmp_path / "root" / layout.repository("team/app") / "_uploads" / "u1").mkdir(parents=True)
        return empty

    gc._empty_repositories = then_a_post  # type: ignore[method-assign,assignment]
    await gc.run()
    assert (tmp_path / "root" / layout.repository("team/app") / "_uploads" / "u1").is_dir()


class CountingTagReads(SeesWalks):
    """Counts the reads of tags' current links: each one the driver reads, and each walk
    of the store that reads them as it goes (gcwalk's, asked to)."""

    tag_reads = 0

    async def get_content(self, key: str) -> bytes:
        if key.endswith("/current/link"):
            self.tag_reads += 1
        return await super().get_content(key)

    def walked(self, prefix: str, walk: LocalWalk, args: tuple[str, ...]) -> None:
        self.tag_reads += TAGS in args


@pytest.mark.parametrize(("options", "reads"), [({}, False), ({"delete_untagged": True}, True)])
async def test_tags_are_read_only_where_they_decide_something(
    tmp_path: Path, options: dict[str, object], reads: bool
) -> None:
    # Without --delete-untagged (or retention rules) every manifest is kept, tagged or not.
    driver = CountingTagReads(tmp_path / "root")
    for name in ("team/a", "team/b"):
        await manifest(driver, name, [await layer(driver, name, name.encode())], tag="v1")
    await manifest(driver, "team/a", [await layer(driver, "team/a", b"untagged")])
    stray = await blob(driver, b"unreferenced")
    result = await collect(driver, None, **options)
    assert (driver.tag_reads > 0) == reads
    assert stray in result.blobs_deleted
    assert len(result.manifests_deleted) == (1 if reads else 0)


async def test_a_disk_lists_blob_folders_and_reads_only_the_unmarked(
    driver: FilesystemDriver,
) -> None:
    # A stat of each of a large store's blobs cost more than the rest of the mark.
    kept = await layer(driver, "team/app", b"kept")
    await manifest(driver, "team/app", [kept], tag="v1")
    stray = await blob(driver, b"stray")
    store = Limited(driver, 8)
    blobs = await find_blobs(store)
    assert stray in blobs and kept in blobs
    assert all(info is UNREAD for info in blobs.values())
    await read_blobs(store, blobs, [stray])
    info = blobs[stray]
    assert info is not None and info.size == len(b"stray")
    assert blobs[kept] is UNREAD


@pytest.mark.parametrize("seed", range(25))
async def test_marking_every_manifest_at_once_marks_as_repository_by_repository(
    tmp_path: Path, seed: int
) -> None:
    # Where every manifest is a root (no --delete-untagged, no rule), the mark gathers what
    # is present set by set; a rule, any rule, makes it go repository by repository. Both
    # mark the same blobs and count the same manifests: shared revisions and layers,
    # revisions whose bytes are missing, manifests read or not, uploads in progress.
    rng = random.Random(seed)
    pool = [Digest.trusted("sha256", f"{n:064x}") for n in range(40)]
    blobs: Blobs = {digest: UNREAD for digest in pool if rng.random() < 0.8}
    refs: dict[Digest, ManifestRefs] = {}
    scans: dict[str, RepoScan] = {}
    for n in range(rng.randint(0, 12)):
        scan = RepoScan(f"team/app{n}", upload_active=rng.random() < 0.3)
        scan.revisions = set(rng.sample(pool, rng.randint(0, 4)))
        scan.layers = set(rng.sample(pool, rng.randint(0, 4)))
        scans[scan.name] = scan
        for digest in scan.revisions:
            if rng.random() < 0.8:  # else read now: its bytes are not in the store
                refs[digest] = ManifestRefs(frozenset(rng.sample(pool, 3)), (), None)

    async def mark(rules: bool) -> tuple[object, ...]:
        collector = GarbageCollector(FilesystemDriver(tmp_path), GcOptions())
        collector.refs = dict(refs)
        if rules:
            collector.plan.tags = {"no/such/repository": {}}
        marked, unkept = await collector._mark(scans, blobs)
        result = collector.result
        counts = (result.manifests_marked, result.blobs_marked, result.repositories)
        return marked, unkept, counts, collector.refs

    assert await mark(rules=False) == await mark(rules=True)


async def test_a_long_collection_says_how_far_it_has_come(
    driver: FilesystemDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A line per phase every progress_every seconds: here, each time there is news; the
    # deletes' after each bulk call (two blobs each here).
    monkeypatch.setattr(storecalls, "BULK_SLICE", 2)
    for n in range(5):
        await blob(driver, b"unreferenced %d" % n)
    lines: list[str] = []
    await collect(driver, lines, progress_every=0.0)
    assert "marking: blobs found: 5" in lines
    deletes = [line for line in lines if line.startswith("sweeping: blobs deleted: ")]
    assert deletes == [f"sweeping: blobs deleted: {n}/5" for n in (2, 4, 5)]
