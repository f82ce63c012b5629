"""The re-check begun as the mark ends, before the blobs are set aside: a server's link or
upload that comes after it read its repository, while the blob's bytes are still in place,
is counted (blobs.count_link), and the count moved sends the collection to read the store
again once the blobs are aside. Each push here goes through the server's own code
(LocalRegistry), after the early re-check's reads and before the set-aside."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from entrepot.registry import gcrecheck, layout
from entrepot.registry.gc import QUARANTINE, GarbageCollector, GcOptions
from entrepot.registry.gcrecheck import EarlyRecheck
from entrepot.registry.gcscan import RepoScan
from entrepot.registry.local import LocalBlobs, LocalRegistry
from tests.unit.test_gc import Interleaving, age, blob, collect, exists, layer, manifest
from tests.unit.test_gc_recheck import age_repositories


@pytest.fixture
def read_early(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Set once the early re-check has read the store (its walk, and the repositories it
    read again alone)."""
    done = asyncio.Event()
    read = EarlyRecheck._read

    async def noting(early: EarlyRecheck) -> dict[str, RepoScan] | None:
        try:
            return await read(early)
        finally:
            done.set()

    monkeypatch.setattr(EarlyRecheck, "_read", noting)
    return done


@pytest.mark.parametrize("into", ["team/app", "team/new"])
async def test_a_blob_mounted_after_the_early_re_check_read_the_store_is_kept(
    tmp_path: Path, read_early: asyncio.Event, into: str
) -> None:
    driver = Interleaving(tmp_path / "root")
    await manifest(driver, "team/app", [await layer(driver, "team/app", b"kept")], tag="v1")
    orphan = await blob(driver, b"unreferenced at mark time")
    gone = await blob(driver, b"unreferenced, never linked")
    age_repositories(driver)
    server = LocalRegistry(driver)

    async def push_mounts_it() -> None:
        await read_early.wait()
        # Its bytes are in place: the server's look after its link finds them.
        assert await LocalBlobs(server, into).mount(orphan, None) is not None

    driver.action = push_mounts_it
    result = await collect(driver)
    assert result.blobs_relinked == 1
    assert set(result.blobs_deleted) == {gone}
    assert await exists(driver, layout.blob_data(orphan))
    assert not await exists(driver, f"{layout.blob_dir(orphan)}/{QUARANTINE}")


async def test_an_upload_begun_after_the_early_re_check_read_the_store_keeps_its_layers(
    tmp_path: Path, read_early: asyncio.Event
) -> None:
    driver = Interleaving(tmp_path / "root")
    name = "team/app"
    sent = await layer(driver, name, b"a layer sent hours ago, its manifest not yet")
    age_repositories(driver)
    age(driver, layout.blob_data(sent))
    server = LocalRegistry(driver)

    async def upload_begins() -> None:
        await read_early.wait()
        await LocalBlobs(server, name).start_upload()

    driver.action = upload_begins
    # The real clock: the layer is stale at the mark, the upload begins during the sweep.
    result = await GarbageCollector(driver, GcOptions(), emit=lambda _: None).run()
    assert result.blobs_relinked == 1
    assert result.blobs_deleted == {}
    assert await exists(driver, layout.blob_data(sent))


async def test_the_count_of_links_is_emptied_once_large(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A byte a link: a collection deletes it once it holds TALLY_KEPT (it reads the count
    # before its re-check begins, so a link counted in the file it deletes came before).
    monkeypatch.setattr(gcrecheck, "TALLY_KEPT", 8)
    driver = Interleaving(tmp_path / "root")
    for n in range(3):  # a layer and a config link each, and the manifest's revision link
        await manifest(driver, "team/app", [await layer(driver, "team/app", b"%d" % n)])
    assert (await driver.stat(layout.LINKS_WRITTEN)).size == 9
    await collect(driver)
    assert not await exists(driver, layout.LINKS_WRITTEN)
    await manifest(driver, "team/app", [await layer(driver, "team/app", b"3")])
    await collect(driver)
    assert (await driver.stat(layout.LINKS_WRITTEN)).size == 3  # under the bound: kept
