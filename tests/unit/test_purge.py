"""Upload purging removes old upload sessions and nothing else."""

from __future__ import annotations

from pathlib import Path

from entrepot.oci.digest import Digest
from entrepot.registry import layout
from entrepot.registry.purge import purge_uploads
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
