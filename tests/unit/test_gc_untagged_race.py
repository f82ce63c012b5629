"""--delete-untagged against a push of the same manifest during the sweep.

The sweep reads a repository's tags and manifests again, then unlinks the untagged ones
it planned to delete. A push that tags one of them, or links it again, in between must
keep it: a fresh link keeps it (pushed again before that read), and a tag written after
that read is found by a last read once the manifests are unlinked, and the manifest is
linked back (the server, for its part, looks at its manifest's link once it has written
a tag: tests/api/test_push_while_collecting.py).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from entrepot.registry import gcsweep, layout
from entrepot.registry.gcscan import RepoScan, scan_repository
from entrepot.storage.filesystem import FilesystemDriver
from tests.unit.test_gc import collect, exists, layer, manifest


@pytest.fixture
def driver(tmp_path: Path) -> FilesystemDriver:
    return FilesystemDriver(tmp_path / "root")


def age_everything(root: Path, seconds: float) -> None:
    """Every file and folder under ``root`` written ``seconds`` ago."""
    then = time.time() - seconds
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            os.utime(os.path.join(folder, name), (then, then))


async def untagged_next_to_a_tagged_one(driver: FilesystemDriver) -> tuple[Any, Any, Any]:
    kept = await manifest(driver, "team/app", [await layer(driver, "team/app", b"kept")], tag="v1")
    own = await layer(driver, "team/app", b"the untagged one's layer")
    untagged = await manifest(driver, "team/app", [own])
    return kept, untagged, own


def after_the_sweeps_read(monkeypatch: pytest.MonkeyPatch, push: Any) -> list[str]:
    """Run ``push`` once, right after the sweep reads team/app again before unlinking."""
    read = scan_repository
    pushed: list[str] = []

    async def scan_then_push(store: Any, name: str, *args: Any, **kwargs: Any) -> RepoScan:
        scan = await read(store, name, *args, **kwargs)
        if name == "team/app" and not pushed:
            pushed.append(name)
            await push()
        return scan

    monkeypatch.setattr(gcsweep, "scan_repository", scan_then_push)
    return pushed


async def test_an_untagged_manifest_tagged_after_the_sweeps_read_is_linked_back(
    driver: FilesystemDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, untagged, own = await untagged_next_to_a_tagged_one(driver)
    tag = str(untagged).encode()

    async def tag_it() -> None:  # as a push by tag writes it: index entry, then current
        await driver.put_content(layout.tag_index_link("team/app", "v2", untagged), tag)
        await driver.put_content(layout.tag_current_link("team/app", "v2"), tag)

    pushed = after_the_sweeps_read(monkeypatch, tag_it)
    result = await collect(driver, delete_untagged=True)
    assert pushed
    assert result.manifests_deleted == []
    assert await exists(driver, layout.manifest_revision_link("team/app", untagged))
    assert await exists(driver, layout.tag_index_link("team/app", "v2", untagged))
    for digest in (untagged, own):
        assert await exists(driver, layout.blob_data(digest)), digest
    # Whole: the next collection keeps it as any tagged image.
    monkeypatch.undo()
    assert (await collect(driver, delete_untagged=True)).blobs_deleted == {}


async def test_an_untagged_manifest_pushed_again_before_the_sweeps_read_stays(
    driver: FilesystemDriver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, untagged, own = await untagged_next_to_a_tagged_one(driver)
    age_everything(tmp_path / "root", 7200)  # an hour older than the grace window below
    read = scan_repository
    pushes: list[str] = []

    async def push_then_scan(store: Any, name: str, *args: Any, **kwargs: Any) -> RepoScan:
        if name == "team/app" and not pushes:  # pushed by digest again: its link written now
            pushes.append(name)
            link = layout.manifest_revision_link("team/app", untagged)
            await driver.put_content(link, str(untagged).encode())
        return await read(store, name, *args, **kwargs)

    monkeypatch.setattr(gcsweep, "scan_repository", push_then_scan)
    # The collector's clock two hours ahead (test_gc.collect): a grace of three hours
    # puts what the test writes now inside the window, the store outside it.
    result = await collect(driver, delete_untagged=True, grace=3 * 3600.0)
    assert pushes
    assert result.manifests_deleted == []
    assert await exists(driver, layout.manifest_revision_link("team/app", untagged))
    assert await exists(driver, layout.blob_data(own))
