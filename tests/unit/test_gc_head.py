"""A mark begun ahead (registry.gchead): the collection is as if it began when its walks
were told, so what was written after that is within its grace window."""

from __future__ import annotations

import marshal
import time
from pathlib import Path

import pytest

from entrepot import cli_gcargs
from entrepot.registry import layout
from entrepot.registry.gc import GarbageCollector, GcOptions
from entrepot.registry.gchead import HeadStart, begin_mark
from entrepot.storage import earlywalks
from entrepot.storage.filesystem import FilesystemDriver
from entrepot.storage.fswalk import LENGTH
from entrepot.storage.localwalk import LocalWalk
from tests.unit.test_gc import SeesWalks, age, blob, exists, layer, manifest


async def test_a_blob_written_after_the_mark_began_ahead_is_kept(tmp_path: Path) -> None:
    driver = FilesystemDriver(tmp_path / "root")
    kept = await layer(driver, "team/app", b"kept")
    await manifest(driver, "team/app", [kept], tag="v1")
    old = await blob(driver, b"unreferenced long ago")
    age(driver, layout.blob_data(old))
    # The walks were told a few seconds ago (before the collector's imports); a push
    # wrote a blob since, which no manifest references yet.
    head = HeadStart(time.time() - 5, ("sha512",))
    new = await blob(driver, b"pushed after the walks began")
    collector = GarbageCollector(driver, GcOptions(grace=0), emit=lambda line: None, head=head)

    result = await collector.run()

    assert set(result.blobs_deleted) == {old}
    assert await exists(driver, layout.blob_data(new))  # written within the grace window
    assert result.blobs_kept_fresh == 1
    assert collector.skipped == ("sha512",) and collector.marked_at == head.started


class NotesWalks(SeesWalks):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.walks: list[str] = []

    def walked(self, prefix: str, walk: LocalWalk, args: tuple[str, ...]) -> None:
        self.walks.append(walk.__name__)


@pytest.mark.parametrize("counted_since", [0, 1])
async def test_a_mark_begun_ahead_is_re_checked_as_it_ends_where_a_link_was_counted_since(
    tmp_path: Path, counted_since: int
) -> None:
    # The count read as the walks were told (HeadStart.links): where it moved since, a
    # link may have come after the mark read its repository.
    driver = NotesWalks(tmp_path / "root")
    await manifest(driver, "team/app", [await layer(driver, "team/app", b"kept")], tag="v1")
    stray = await blob(driver, b"unreferenced long ago")
    age(driver, layout.blob_data(stray))
    counted = (await driver.stat(layout.LINKS_WRITTEN)).size
    head = HeadStart(time.time() - 5, ("sha512",), counted - counted_since)
    collector = GarbageCollector(driver, GcOptions(grace=0), emit=lambda line: None, head=head)

    result = await collector.run()

    assert set(result.blobs_deleted) == {stray}
    assert ("changed_records" in driver.walks) == bool(counted_since)


def test_a_mark_begins_ahead_only_where_it_can(tmp_path: Path) -> None:
    # No blob folder (a store not made yet, a wrong path): nothing is told, the collector
    # finds what is wrong. Fewer waiting children than walks: none is told.
    root = str(tmp_path)
    assert begin_mark(root, tag_links=False) is None
    (tmp_path / layout.BLOBS / "sha256").mkdir(parents=True)
    assert begin_mark(root, tag_links=False) is None  # no child started
    earlywalks.start(3, "entrepot.registry.gcwalk")
    (tmp_path / layout.LINKS_WRITTEN).parent.mkdir(parents=True)
    (tmp_path / layout.LINKS_WRITTEN).write_bytes(b"\0\0\0")  # three links counted
    head = begin_mark(root, tag_links=False)
    children = earlywalks.taken()
    assert head is not None and head.skipped == ("sha512",) and head.links == 3
    told = [argv for _, argv in children]
    assert [argv[2:5] if argv else None for argv in told] == [
        [layout.REPOSITORIES, "entrepot.registry.gcwalk:repository_records", "0/2"],
        [layout.REPOSITORIES, "entrepot.registry.gcwalk:repository_records", "1/2"],
        [layout.BLOBS, "entrepot.registry.gcwalk:blob_records", "-"],
    ]
    for child, _ in children:  # each walks the (empty) store, then waits for another walk
        assert child.stdout is not None and child.stdin is not None
        while size := LENGTH.unpack(child.stdout.read(LENGTH.size))[0]:  # to fswalk's END
            assert marshal.loads(child.stdout.read(size)) in ([], [[]])
        assert child.poll() is None
        child.stdin.close()
        assert child.wait(timeout=30) == 0


@pytest.mark.parametrize(
    ("glanced", "kept"),
    [("same", True), ("another root", False), ("tags read", False), ("unreadable", True)],
)
def test_walks_told_at_a_glance_are_the_collections_only_where_the_config_agrees(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, glanced: str, kept: bool
) -> None:
    # The walks are told what a glance at the file says (YAML alone), then the config is
    # read whole: walks told another store, or without the tags a retention rule needs,
    # are not the collection's; where the glance could not tell, the walks are told once
    # the config is read.
    root = tmp_path / "r"
    (root / layout.BLOBS / "sha256").mkdir(parents=True)
    config = tmp_path / "config.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root}\n")
    glances = {
        "same": (str(root), False),
        "another root": (str(tmp_path / "elsewhere"), False),
        "tags read": (str(root), True),
        "unreadable": None,
    }
    monkeypatch.setattr(cli_gcargs, "_glance", lambda argv: glances[glanced])
    told: list[list[list[str]]] = []

    def tell(argvs: list[list[str]]) -> bool:
        told.append(argvs)
        return True

    monkeypatch.setattr(earlywalks, "tell", tell)
    (tmp_path / "elsewhere" / layout.BLOBS / "sha256").mkdir(parents=True)

    begun = cli_gcargs.head_start(["garbage-collect", str(config)])

    assert begun is not None and begun.config.storage.rootdirectory == root
    assert (begun.head is not None) is kept
    assert len(told) == 1  # the walks are told once, whatever the glance said
    if kept:
        assert {argv[1] for argv in told[0]} == {str(root)}
