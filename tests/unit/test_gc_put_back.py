"""A collection and a push that links a blob after the collection read the links again
(or pushes into a repository the collection found empty).

The push checked the blob before the collection set it aside, so it links it without a
second look; the collection, its re-check done, deletes what it set aside. The server's
look after its link (BlobStore.confirm) finds the bytes aside and puts them back, leaving
a note; the collection reads the notes after its deletes and keeps those blobs' layer
links (a manifest's layers are linked before it is pushed, and the mark saw them).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest

from entrepot.oci.digest import Digest
from entrepot.oci.manifest import parse_manifest
from entrepot.registry import gcsweep, layout
from entrepot.registry.gcrecheck import EarlyRecheck
from entrepot.registry.gcscan import RepoScan
from entrepot.registry.local import LocalRegistry
from entrepot.registry.storecalls import Limited
from entrepot.storage.filesystem import FilesystemDriver
from tests.unit.test_gc import OCI_MANIFEST, blob, collect, descriptor, exists, layer


@pytest.fixture
def driver(tmp_path: Path) -> FilesystemDriver:
    return FilesystemDriver(tmp_path / "root")


def image_manifest(config: Digest, layer: Digest) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(config),
        "layers": [descriptor(layer)],
    }
    return json.dumps(doc).encode()


async def test_a_manifest_linked_after_the_re_check_keeps_its_blobs_and_their_links(
    driver: FilesystemDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Blobs an old push linked into team/app, which no manifest references (yet).
    config = await layer(driver, "team/app", b"a config")
    base = await layer(driver, "team/app", b"a base layer")
    stray = await layer(driver, "team/app", b"a layer nothing will reference")
    raw = image_manifest(config, base)
    manifest = parse_manifest(raw, OCI_MANIFEST)
    local = LocalRegistry(driver)

    settled = EarlyRecheck.settled

    async def recheck_then_push(
        early: EarlyRecheck, swept: Iterable[str]
    ) -> dict[str, RepoScan] | None:
        done = await settled(early, swept)
        assert done is not None  # nothing linked since the re-check began: it stands
        # The push checked config and base before they were set aside; it links now.
        await local.manifests.of("team/app").store(manifest, "v1", pushed=True)
        return done

    monkeypatch.setattr(EarlyRecheck, "settled", recheck_then_push)
    result = await collect(driver)

    assert set(result.blobs_deleted) == {stray}
    assert result.blobs_relinked == 2
    for digest in (config, base, manifest.digest):
        assert await exists(driver, layout.blob_data(digest)), digest
    for digest in (config, base):
        assert await exists(driver, layout.layer_link("team/app", digest)), digest
    assert not await exists(driver, layout.layer_link("team/app", stray))
    assert await driver.list(layout.PUT_BACK) == []  # read, so dropped

    # The image is whole: the next collection keeps all of it.
    monkeypatch.undo()
    again = await collect(driver)
    assert again.blobs_deleted == {}
    assert await exists(driver, layout.layer_link("team/app", base))


async def test_a_note_left_before_a_collection_does_not_keep_a_deleted_blobs_link(
    driver: FilesystemDriver,
) -> None:
    """A note written after the last collection read them (a request that found the bytes
    aside once that collection had ended) says nothing about the next one's deletes."""
    stray = await layer(driver, "team/app", b"never referenced")
    kept = await blob(driver, b"kept")
    await driver.put_content(layout.put_back_note(stray), b"")
    await driver.put_content(layout.put_back_note(kept), b"")
    result = await collect(driver)
    assert stray in result.blobs_deleted
    assert not await exists(driver, layout.layer_link("team/app", stray))
    assert await driver.list(layout.PUT_BACK) == []


async def emptied_repository_next_to_a_kept_one(
    driver: FilesystemDriver,
) -> tuple[LocalRegistry, bytes, list[Digest]]:
    """team/kept's image, and team/old: once an image of the same blobs, its manifest
    deleted since, so that the sweep finds it empty and removes it."""
    base = await layer(driver, "team/kept", b"a base layer")
    config = await layer(driver, "team/kept", b"a config")
    raw = image_manifest(config, base)
    local = LocalRegistry(driver)
    assert (await local.manifests.of("team/kept").put("v1", raw, OCI_MANIFEST)).digest
    for digest in (base, config):
        await driver.put_content(layout.layer_link("team/old", digest), str(digest).encode())
    return local, raw, [base, config]


async def assert_pushed_and_whole(
    driver: FilesystemDriver, raw: bytes, blobs: list[Digest]
) -> None:
    pushed = parse_manifest(raw, OCI_MANIFEST).digest
    assert await exists(driver, layout.manifest_revision_link("team/old", pushed))
    assert await exists(driver, layout.tag_current_link("team/old", "v2"))
    for digest in blobs:
        assert await exists(driver, layout.layer_link("team/old", digest)), digest
        assert await exists(driver, layout.blob_data(digest)), digest


async def test_a_repository_pushed_into_as_it_is_removed_stays(
    driver: FilesystemDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A repository whose manifests were all deleted is removed after the blobs are: a
    push into it in between (its layers found linked there, as a client's HEADs find
    them) keeps it, with what the push linked."""
    local, raw, blobs = await emptied_repository_next_to_a_kept_one(driver)
    found = gcsweep.CollectorSweep._empty_repositories

    async def found_then_pushed(self: Any, *args: Any) -> list[str]:
        empty = await found(self, *args)
        if empty == ["team/old"]:  # the push lands after the deletes, before the removal
            await local.manifests.of("team/old").put("v2", raw, OCI_MANIFEST)
        return empty

    monkeypatch.setattr(gcsweep.CollectorSweep, "_empty_repositories", found_then_pushed)
    result = await collect(driver)
    assert result.repositories_removed == []
    await assert_pushed_and_whole(driver, raw, blobs)


async def test_a_push_between_the_removals_read_and_its_deletes_stays_whole(
    driver: FilesystemDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The removal deletes the objects it read: the layer links the push's check found
    go too; it looks once more after its deletes, links them again and keeps the
    repository (the push, once its manifest is linked, looks at them as well)."""
    local, raw, blobs = await emptied_repository_next_to_a_kept_one(driver)
    delete_many = Limited.delete_many
    pushed: list[str] = []

    async def push_then_delete(self: Limited, keys: Sequence[str]) -> None:
        if not pushed and any("/team/old/" in key for key in keys):
            pushed.append("team/old")
            await local.manifests.of("team/old").put("v2", raw, OCI_MANIFEST)
        await delete_many(self, keys)

    monkeypatch.setattr(Limited, "delete_many", push_then_delete)
    result = await collect(driver)
    assert pushed
    assert result.repositories_removed == []
    await assert_pushed_and_whole(driver, raw, blobs)


async def test_an_upload_begun_as_the_folders_are_removed_stays(
    driver: FilesystemDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The removal takes away folders that hold nothing, never one a push has just put
    something in (an upload's folder, begun after the removal's last look)."""
    local, _, _ = await emptied_repository_next_to_a_kept_one(driver)
    remove = FilesystemDriver.remove_empty_folders
    begun: list[str] = []

    async def begin_then_remove(self: FilesystemDriver, keys: Sequence[str]) -> None:
        if not begun and any("/team/old" in key for key in keys):
            begun.append((await local.uploads.start("team/old")).upload_id)
        await remove(self, keys)

    monkeypatch.setattr(FilesystemDriver, "remove_empty_folders", begin_then_remove)
    await collect(driver)
    assert begun
    status = await local.uploads.status("team/old", begun[0])
    assert status.size == 0
