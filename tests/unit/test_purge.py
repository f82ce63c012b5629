"""Upload purging removes old upload sessions and nothing else."""

from __future__ import annotations

import asyncio
from pathlib import Path

from entrepot.oci.digest import Digest
from entrepot.registry import layout
from entrepot.registry.local import LocalRegistry
from entrepot.registry.purge import UndatedUploads, purge_uploads
from entrepot.storage.filesystem import FilesystemDriver

NOW = 1_800_000_000.0


async def _upload(driver: FilesystemDriver, name: str, upload_id: str, started: str) -> None:
    await driver.put_content(layout.upload_data(name, upload_id), b"partial")
    await driver.put_content(layout.upload_started_at(name, upload_id), started.encode())


async def test_old_uploads_are_purged_recent_ones_and_content_kept(tmp_path: Path) -> None:
    driver = FilesystemDriver(tmp_path)
    await _upload(driver, "team/app", "old", "2026-01-01T00:00:00Z")
    await _upload(driver, "team/app", "new", "2027-01-15T07:59:00Z")  # NOW is 2027-01-15T08:00
    await _upload(driver, "other", "ancient", "2020-05-05T10:00:00.123456789Z"[:26] + "Z")
    digest = Digest.of(b"layer")
    await driver.put_content(layout.layer_link("team/app", digest), str(digest).encode())

    purged = await purge_uploads(driver, 3600.0, now=NOW)

    assert sorted(purged) == [
        layout.upload_dir("other", "ancient"),
        layout.upload_dir("team/app", "old"),
    ]
    assert await driver.list(layout.uploads_dir("team/app")) == ["new"]
    assert (await driver.get_content(layout.layer_link("team/app", digest))) == str(digest).encode()


async def test_dry_run_deletes_nothing(tmp_path: Path) -> None:
    driver = FilesystemDriver(tmp_path)
    await _upload(driver, "app", "old", "2026-01-01T00:00:00Z")
    purged = await purge_uploads(driver, 60.0, dry_run=True, now=NOW)
    assert purged == [layout.upload_dir("app", "old")]
    assert await driver.list(layout.uploads_dir("app")) == ["old"]


async def test_a_session_being_created_is_not_purged(tmp_path: Path) -> None:
    # While POST creates a session its directory exists before `data` and `startedat`
    # (the filesystem driver writes a temp file beside them first). Taking that as old
    # lost uploads under load: the client got 503 on POST or 404 on the next PATCH.
    driver = FilesystemDriver(tmp_path)
    creating = tmp_path / layout.upload_dir("team/app", "creating")
    creating.mkdir(parents=True)
    (creating / ".tmp-0123").write_bytes(b"")

    assert await purge_uploads(driver, 3600.0, now=NOW) == []
    assert await purge_uploads(driver, 3600.0, now=NOW, undated=UndatedUploads()) == []
    assert await driver.list(layout.uploads_dir("team/app")) == ["creating"]


async def test_an_undated_session_is_purged_once_it_stays_undated_for_age(
    tmp_path: Path,
) -> None:
    driver = FilesystemDriver(tmp_path)
    leftover = tmp_path / layout.upload_dir("app", "leftover")
    leftover.mkdir(parents=True)
    (leftover / "hashstates").mkdir()
    undated = UndatedUploads()

    assert await purge_uploads(driver, 60.0, now=NOW, undated=undated) == []
    assert await purge_uploads(driver, 60.0, now=NOW + 30, undated=undated) == []
    purged = await purge_uploads(driver, 60.0, now=NOW + 61, undated=undated)

    assert purged == [layout.upload_dir("app", "leftover")]
    assert await driver.list(layout.uploads_dir("app")) == []
    assert undated.first_seen == {}


async def test_uploads_started_while_the_purger_runs_all_survive(tmp_path: Path) -> None:
    driver = FilesystemDriver(tmp_path)
    uploads = LocalRegistry(driver).uploads
    undated = UndatedUploads()
    stop = asyncio.Event()

    async def purge_repeatedly() -> None:
        while not stop.is_set():
            await purge_uploads(driver, 3600.0, undated=undated)
            await asyncio.sleep(0)

    purger = asyncio.create_task(purge_repeatedly())
    try:
        started = [await uploads.start("team/app") for _ in range(50)]
    finally:
        stop.set()
        await purger

    for status in started:
        assert (await uploads.status("team/app", status.upload_id)).size == 0
