"""The sweep's re-check on a disk: only the repositories whose folders changed since the mark
began are read again. Every folder under ``repositories/`` is backdated first (a store
written long before the collection), so a push during the sweep is the only change; each
such push must still save the blobs it links."""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path

import pytest

from entrepot.oci.digest import Digest
from entrepot.registry import gcrecheck, layout
from entrepot.registry.blobs import count_link
from entrepot.registry.gc import QUARANTINE, GarbageCollector, GcOptions
from entrepot.registry.gcwalk import WALK_SHARDS, repository_records
from entrepot.storage.driver import Aside, Fold, Infos, Records, Shard
from entrepot.storage.filesystem import FilesystemDriver
from entrepot.storage.localwalk import LocalWalk
from tests.unit.test_gc import (
    LATER,
    Interleaving,
    SeesWalks,
    age,
    blob,
    collect,
    descriptor,
    exists,
    layer,
    link,
    manifest,
)


class Counting(Interleaving):
    """Counts the walks of the whole of ``repositories/`` (gcwalk's, or a folded scan), and
    notes the repositories read one by one (scan_repository)."""

    store_scans = 0

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.read_alone: set[str] = set()

    async def scan(self, prefix: str, *, fold: Fold | None = None) -> AsyncGenerator[Infos, None]:
        if prefix == layout.REPOSITORIES:
            self.store_scans += 1
        elif prefix.startswith(f"{layout.REPOSITORIES}/"):
            repository, _, marker = prefix.removeprefix(f"{layout.REPOSITORIES}/").rpartition("/")
            assert marker in ("_manifests", "_layers", "_uploads")
            self.read_alone.add(repository)
        async for batch in super().scan(prefix, fold=fold):
            yield batch

    def walked(self, prefix: str, walk: LocalWalk, args: tuple[str, ...]) -> None:
        if walk is repository_records:  # not the re-check's walk (changed_records)
            self.store_scans += 1


def age_repositories(driver: FilesystemDriver) -> None:
    """Every folder and file under ``repositories/`` last changed hours ago."""
    then = time.time() - LATER
    top = driver.local_path(layout.REPOSITORIES)
    for folder, folders, files in os.walk(top):
        for name in (*folders, *files):
            os.utime(os.path.join(folder, name), (then, then))
    os.utime(top, (then, then))


async def test_an_unchanged_store_is_not_read_again_whole(tmp_path: Path) -> None:
    driver = Counting(tmp_path / "root")
    kept = await layer(driver, "team/app", b"kept")
    await manifest(driver, "team/app", [kept], tag="v1")
    stray = await blob(driver, b"never linked")
    age_repositories(driver)
    result = await collect(driver)
    assert set(result.blobs_deleted) == {stray}
    assert driver.store_scans == 1  # the mark's; the re-check's walk stats folders instead
    assert driver.read_alone == set()


async def test_a_store_changed_all_over_is_read_again_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each repository read alone costs several times its share of a walk of the store.
    monkeypatch.setattr(gcrecheck, "READ_ALONE", 0)
    driver = Counting(tmp_path / "root")
    for name in ("team/app", "team/other"):
        await manifest(driver, name, [await layer(driver, name, name.encode())], tag="v1")
    stray = await blob(driver, b"never linked")
    age_repositories(driver)

    async def push_to_each() -> None:  # after the mark read them: all changed
        for name in ("team/app", "team/other"):
            os.utime(driver.local_path(f"{layout.repository(name)}/_layers/sha256"))
            await count_link(driver)

    driver.marking = push_to_each
    result = await collect(driver)
    assert set(result.blobs_deleted) == {stray}
    assert driver.store_scans == 2
    assert driver.read_alone == set()


@pytest.mark.parametrize(
    "into",
    [
        "team/app",  # a repository the mark read: its layer folder changed
        "team/new",  # a new repository: found by its name
        "team/app/nested",  # a new one in a repository's folder
        "team/restored",  # a new one moved in whole (its folders' mtimes kept): by its name
    ],
)
async def test_a_layer_linked_during_the_sweep_keeps_its_blob(tmp_path: Path, into: str) -> None:
    driver = Counting(tmp_path / "root")
    await manifest(driver, "team/app", [await layer(driver, "team/app", b"kept")], tag="v1")
    await manifest(driver, "team/other", [await layer(driver, "team/other", b"o")], tag="v1")
    orphan = await blob(driver, b"unreferenced at mark time")
    gone = await blob(driver, b"unreferenced, never linked")
    age_repositories(driver)

    async def push_mounts_it() -> None:
        await link(driver, layout.layer_link(into, orphan), orphan)
        if into == "team/restored":
            age_repositories(driver)

    driver.action = push_mounts_it
    result = await collect(driver)
    assert driver.store_scans == 1
    assert driver.read_alone == {into}  # read again alone, team/other not
    assert result.blobs_relinked == 1
    assert set(result.blobs_deleted) == {gone}
    assert await exists(driver, layout.blob_data(orphan))
    assert not await exists(driver, f"{layout.blob_dir(orphan)}/{QUARANTINE}")


async def test_a_manifest_linked_again_where_it_was_deleted_keeps_its_blobs(
    tmp_path: Path,
) -> None:
    # registry:2 deletes a manifest by its link only: a push of the same manifest writes
    # the link again in the folder the mark saw empty.
    driver = Counting(tmp_path / "root")
    name = "team/app"
    base = await layer(driver, name, b"layer of a deleted manifest")
    digest = await manifest(driver, name, [base])
    await driver.delete(layout.manifest_revision_link(name, digest))
    await manifest(driver, name, [await layer(driver, name, b"kept")], tag="v1")
    age_repositories(driver)
    body = await driver.get_content(layout.blob_data(digest))

    async def pushed_again() -> None:  # its bytes (put aside meanwhile), then its link
        await driver.put_content(layout.blob_data(digest), body)
        await link(driver, layout.manifest_revision_link(name, digest), digest)

    driver.action = pushed_again
    result = await collect(driver)
    assert driver.store_scans == 1
    assert base not in result.blobs_deleted
    assert await exists(driver, layout.blob_data(base))


async def test_an_upload_resumed_during_the_sweep_keeps_its_repository_layers(
    tmp_path: Path,
) -> None:
    # Resuming an upload only appends to its data: no folder changes.
    driver = Counting(tmp_path / "root")
    name = "team/app"
    sent = await layer(driver, name, b"first layer of a push left for hours")
    upload = layout.upload_data(name, "abc-123")
    await driver.put_content(upload, b"second layer...")
    age_repositories(driver)

    async def resumed() -> None:
        writer = await driver.writer(upload, append=True)
        await writer.write(b" more of it")
        await writer.commit()

    driver.action = resumed
    age(driver, layout.blob_data(sent))
    # The real clock: the upload is stale at the mark, written to during the sweep.
    result = await GarbageCollector(driver, GcOptions(), emit=lambda _: None).run()
    assert driver.store_scans == 1
    assert result.blobs_relinked == 1
    assert result.blobs_deleted == {}
    assert await exists(driver, layout.blob_data(sent))


async def test_an_upload_begun_during_the_sweep_keeps_its_repository_layers(
    tmp_path: Path,
) -> None:
    driver = Counting(tmp_path / "root")
    name = "team/app"
    sent = await layer(driver, name, b"a layer sent hours ago, its manifest not yet")
    finished = layout.upload_data(name, "an-upload-done-long-ago")
    await driver.put_content(finished, b"...")
    await driver.delete(finished.rsplit("/", 1)[0])  # its repository keeps ``_uploads``
    age_repositories(driver)
    age(driver, layout.blob_data(sent))

    async def upload_begins() -> None:
        await driver.put_content(layout.upload_data(name, "abc-123"), b"next layer...")
        await count_link(driver)  # as UploadSessions.start

    driver.action = upload_begins
    # The real clock: the layer is stale at the mark, the upload begins during the sweep.
    result = await GarbageCollector(driver, GcOptions(), emit=lambda _: None).run()
    assert driver.store_scans == 1
    assert result.blobs_relinked == 1
    assert result.blobs_deleted == {}
    assert await exists(driver, layout.blob_data(sent))


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
async def test_a_layer_of_another_algorithm_linked_during_the_sweep_keeps_its_blob(
    tmp_path: Path, algorithm: str
) -> None:
    # The repository's layers are sha256 ones: a sha512 link makes a folder of its own.
    driver = Counting(tmp_path / "root")
    name = "team/app"
    await manifest(driver, name, [await layer(driver, name, b"kept")], tag="v1")
    data = b"unreferenced at mark time"
    orphan = Digest.of(data, algorithm)
    await driver.put_content(layout.blob_data(orphan), data)
    age_repositories(driver)

    async def push_mounts_it() -> None:
        await link(driver, layout.layer_link(name, orphan), orphan)

    driver.action = push_mounts_it
    result = await collect(driver)
    assert driver.store_scans == 1
    assert result.blobs_relinked == 1
    assert await exists(driver, layout.blob_data(orphan))


class Preparing(SeesWalks):
    """Notes the walks prepared and made, the spares waiting at each, and the set-aside."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.calls: list[tuple[str, ...]] = []

    async def prepare_walks(self, walk: LocalWalk, count: int) -> None:
        self.calls.append(("prepare", walk.__name__, str(count)))
        await super().prepare_walks(walk, count)

    async def walk_local(
        self,
        prefix: str,
        walk: LocalWalk,
        args: tuple[str, ...] = (),
        *,
        shard: Shard | None = None,
        apart: bool = False,
    ) -> AsyncGenerator[Records, None]:
        waiting = 0 if self._spares is None else len(self._spares._ready)
        self.calls.append(("walk", walk.__name__, f"{waiting} spares"))
        async for batch in super().walk_local(prefix, walk, args, shard=shard, apart=apart):
            yield batch

    async def move_stale_in(
        self, folders: Sequence[str], src: str, dst: str, older_than: float, *, sync: bool = True
    ) -> Aside:
        self.calls.append(("aside",))
        return await super().move_stale_in(folders, src, dst, older_than, sync=sync)


async def test_the_re_check_walks_as_the_mark_ends_before_the_set_aside(
    tmp_path: Path,
) -> None:
    # Its walk children are started (a Python's start and imports: 80 ms of a CPU each)
    # and walk while the collector computes with one CPU and sets blobs aside, not after.
    driver = Preparing(tmp_path / "root")
    kept = await layer(driver, "team/app", b"kept")
    await manifest(driver, "team/app", [kept], tag="v1")
    stray = await blob(driver, b"never linked")
    # Linked again after the mark read it: the count moved during the mark.
    driver.marking = lambda: link(driver, layout.layer_link("team/app", kept), kept)
    result = await collect(driver, apart=True)
    assert set(result.blobs_deleted) == {stray}
    prepared = driver.calls.index(("prepare", "changed_records", str(WALK_SHARDS)))
    mark, sweep = driver.calls[:prepared], driver.calls[prepared + 1 :]
    assert sorted(mark) == [
        ("walk", "blob_records", "0 spares"),
        *[("walk", "repository_records", "0 spares")] * WALK_SHARDS,
    ]
    assert sweep == [
        *[("walk", "changed_records", f"{n} spares") for n in range(WALK_SHARDS, 0, -1)],
        ("aside",),
    ]


async def test_a_store_no_link_came_to_during_the_mark_is_not_read_again_as_it_ends(
    tmp_path: Path,
) -> None:
    # The count of links did not move since before the mark read anything: every link
    # came before the mark read its repository, so the re-check has nothing to walk.
    driver = Preparing(tmp_path / "root")
    await manifest(driver, "team/app", [await layer(driver, "team/app", b"kept")], tag="v1")
    stray = await blob(driver, b"never linked")
    result = await collect(driver, apart=True)
    assert set(result.blobs_deleted) == {stray}
    assert sorted(driver.calls) == [
        ("aside",),
        ("walk", "blob_records", "0 spares"),
        *[("walk", "repository_records", "0 spares")] * WALK_SHARDS,
    ]


@pytest.mark.parametrize("into", ["team/app", "team/new"])
async def test_a_blob_linked_after_the_mark_read_its_repository_is_kept(
    tmp_path: Path, into: str
) -> None:
    driver = Counting(tmp_path / "root")
    await manifest(driver, "team/app", [await layer(driver, "team/app", b"kept")], tag="v1")
    orphan = await blob(driver, b"unreferenced when the mark read the store")
    gone = await blob(driver, b"unreferenced, never linked")
    age_repositories(driver)

    async def push_mounts_it() -> None:  # counted: the re-check walks as the mark ends
        await link(driver, layout.layer_link(into, orphan), orphan)

    driver.marking = push_mounts_it
    result = await collect(driver)
    assert driver.read_alone == {into}
    assert result.blobs_relinked == 1
    assert set(result.blobs_deleted) == {gone}
    assert await exists(driver, layout.blob_data(orphan))


class NotingWalks(Counting):
    """Counting, noting the mark's walk's arguments."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.mark_args: list[tuple[str, ...]] = []

    def walked(self, prefix: str, walk: LocalWalk, args: tuple[str, ...]) -> None:
        super().walked(prefix, walk, args)
        if walk is repository_records:
            self.mark_args.append(args)


def sha512_manifest(layers: Sequence[Digest]) -> tuple[Digest, bytes]:
    doc = {"schemaVersion": 2, "layers": [descriptor(d) for d in layers]}
    doc["mediaType"] = "application/vnd.oci.image.manifest.v1+json"
    body = json.dumps(doc).encode()
    return Digest.of(body, "sha512"), body


@pytest.mark.parametrize("with_sha512_blob", [False, True])
async def test_the_mark_walks_the_link_folders_of_the_algorithms_the_store_holds(
    tmp_path: Path, with_sha512_blob: bool
) -> None:
    # Listing a sha512 folder that is not there cost as much as listing one that is.
    driver = NotingWalks(tmp_path / "root")
    await manifest(driver, "team/app", [await layer(driver, "team/app", b"kept")], tag="v1")
    if with_sha512_blob:
        data = b"a sha512 layer"
        await driver.put_content(layout.blob_data(Digest.of(data, "sha512")), data)
    await collect(driver)
    walked = "only:sha256,sha512" if with_sha512_blob else "only:sha256"
    assert [args[-1] for args in driver.mark_args] == [walked] * len(driver.mark_args)
    assert driver.mark_args


async def test_a_manifest_of_an_algorithm_the_mark_skipped_linked_again_keeps_its_blobs(
    tmp_path: Path,
) -> None:
    # A sha512 manifest deleted (its link only, as registry:2 does) and its bytes collected:
    # the store holds no sha512 blob, the mark lists no sha512 folder. Pushed again during
    # the sweep, its link goes in the folder left behind (the folder above it unchanged).
    driver = NotingWalks(tmp_path / "root")
    name = "team/app"
    base = await layer(driver, name, b"layer of a deleted sha512 manifest")
    await manifest(driver, name, [await layer(driver, name, b"kept")], tag="v1")
    digest, body = sha512_manifest([base])
    os.makedirs(driver.local_path(layout.manifest_revision_dir(name, digest)))
    age_repositories(driver)

    async def pushed_again() -> None:  # its bytes, then its link
        await driver.put_content(layout.blob_data(digest), body)
        await link(driver, layout.manifest_revision_link(name, digest), digest)

    driver.action = pushed_again
    result = await collect(driver)
    assert driver.mark_args[0][-1] == "only:sha256"
    assert driver.read_alone == {name}
    assert base not in result.blobs_deleted
    assert await exists(driver, layout.blob_data(base))


@pytest.mark.parametrize("dry_run", [True, False])
async def test_a_repository_with_links_of_an_algorithm_the_mark_skipped_is_not_empty(
    tmp_path: Path, dry_run: bool
) -> None:
    # Its only manifest link names a sha512 manifest whose bytes are gone; as when the
    # mark reads every algorithm, the repository stays (a dry run says so too).
    driver = NotingWalks(tmp_path / "root")
    name = "team/dangling"
    digest, _ = sha512_manifest([])
    await driver.put_content(layout.manifest_revision_link(name, digest), str(digest).encode())
    await manifest(driver, "team/app", [await layer(driver, "team/app", b"kept")], tag="v1")
    age_repositories(driver)
    result = await collect(driver, dry_run=dry_run)
    assert driver.mark_args[0][-1] == "only:sha256"
    assert result.repositories_removed == []
    assert await exists(driver, layout.manifest_revision_link(name, digest))
