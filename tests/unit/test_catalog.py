"""The catalog index at scale: pages read lazily in lexical order, a snapshot that spares
other processes the walk, and repositories created elsewhere listed at once."""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator
from pathlib import Path

from entrepot.registry import layout
from entrepot.registry.catalog import RepositoryIndex, list_repositories, paginate, read_page
from entrepot.storage.filesystem import FilesystemDriver


class CountingDriver(FilesystemDriver):
    """Counts the keys its walks hand over: what a catalog request made storage list."""

    walked = 0

    async def walk(
        self, prefix: str, *, after: str = "", collapse: str = ""
    ) -> AsyncGenerator[list[str], None]:
        async for batch in super().walk(prefix, after=after, collapse=collapse):
            self.walked += len(batch)
            yield batch


def make_repositories(root: Path, names: list[str], marker: str = "_layers") -> None:
    """Repositories as registry:2 leaves them on disk (a generated layout)."""
    base = f"{root}/{layout.REPOSITORIES}"
    for name in names:
        path = f"{base}/{name}"
        try:
            os.mkdir(path)
        except FileNotFoundError:  # parents first; mkdir alone is what makes 20,000 fast
            os.makedirs(path)
        os.mkdir(f"{path}/{marker}")


async def create_through(index: RepositoryIndex, root: Path, name: str) -> None:
    """A repository created through a process: its first link, then the catalog hears."""
    make_repositories(root, [name])
    await index.note(name)


TRICKY = ["-stray", "a", "a-b", "a.c", "a/0", "a/b", "a/b-c/d", "a0", "b", "b/a-x", "b/a/x", "z9.z"]


async def test_pages_come_in_lexical_order_whatever_the_tree_order(tmp_path: Path) -> None:
    make_repositories(tmp_path, TRICKY)
    make_repositories(tmp_path, ["cached/only"], marker="_manifests")
    make_repositories(tmp_path, ["uploading"], marker="_uploads")  # not a repository yet
    driver = FilesystemDriver(tmp_path)
    expected = sorted([*TRICKY, "cached/only"])
    assert await list_repositories(driver) == expected
    for n in range(1, len(expected) + 1):
        for last in [None, *expected]:
            assert await read_page(driver, n, last) == paginate(expected, n, last), (n, last)


async def test_first_page_of_20000_repositories_lists_only_what_it_shows(tmp_path: Path) -> None:
    names = [f"team{i % 50:02d}/app-{i:05d}" for i in range(20_000)]
    make_repositories(tmp_path, names)
    names.sort()
    driver = CountingDriver(tmp_path)
    index = RepositoryIndex(driver)
    assert await read_page(driver, 101, None) == names[:101]
    assert driver.walked < 2_000, "page 1 must not walk the whole tree"
    driver.walked = 0
    assert await read_page(driver, 101, names[12_345]) == names[12_346:12_447]
    assert driver.walked < 2_000, "a later page starts where it is, not at the top"
    # Through the index: the first page is served while the full list is being built.
    assert await index.page(101, None) == names[:101]
    assert await index.names() == names
    await index.close()


async def test_another_process_loads_the_snapshot_instead_of_walking(tmp_path: Path) -> None:
    make_repositories(tmp_path, [f"repo{i:04d}" for i in range(3_000)])
    first = RepositoryIndex(CountingDriver(tmp_path))
    await create_through(first, tmp_path, "pushed")
    listed = await first.names()
    assert len(listed) == 3_001 and "pushed" in listed
    second_driver = CountingDriver(tmp_path)
    second = RepositoryIndex(second_driver)
    assert await second.names() == listed
    assert await second.page(10, "repo2000") == paginate(listed, 10, "repo2000")
    assert second_driver.walked == 0


async def test_repositories_created_by_another_process_are_listed_at_once(
    tmp_path: Path,
) -> None:
    make_repositories(tmp_path, ["base"])
    first = RepositoryIndex(FilesystemDriver(tmp_path))
    second = RepositoryIndex(FilesystemDriver(tmp_path))
    assert await second.names() == ["base"]  # second now holds a full, valid list
    await create_through(first, tmp_path, "alpha")
    assert await second.page(10, None) == ["alpha", "base"]  # lazily, from storage
    assert await second.names() == ["alpha", "base"]
    await create_through(second, tmp_path, "zulu")
    await create_through(first, tmp_path, "mid")
    assert await first.page(None, None) == ["alpha", "base", "mid", "zulu"]
    assert await second.page(2, "alpha") == ["base", "mid"]
    await first.close()
    await second.close()


async def test_a_stale_snapshot_is_not_used(tmp_path: Path) -> None:
    make_repositories(tmp_path, ["one"])
    first = RepositoryIndex(FilesystemDriver(tmp_path))
    await create_through(first, tmp_path, "two")
    assert await first.names() == ["one", "two"]  # and saved for this epoch
    await create_through(first, tmp_path, "three")  # a new epoch
    restarted = RepositoryIndex(FilesystemDriver(tmp_path))
    assert await restarted.names() == ["one", "three", "two"]
