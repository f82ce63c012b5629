"""The storage contract: every StorageDriver passes this suite (see conftest.driver)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest

from entrepot.storage import (
    FileInfo,
    StorageConflict,
    StorageDriver,
    StorageError,
    StorageNotFound,
)
from entrepot.storage.driver import Fold
from entrepot.storage.localwalk import LocalView

BLOB = "docker/registry/v2/blobs/sha256/ab/abcdef/data"


async def collect(
    driver: StorageDriver,
    key: str,
    offset: int = 0,
    length: int | None = None,
    chunk_size: int = 1 << 20,
) -> list[bytes]:
    return [chunk async for chunk in driver.read(key, offset, length, chunk_size)]


# ---- whole objects --------------------------------------------------------------------


async def test_put_get_round_trip(driver: StorageDriver) -> None:
    await driver.put_content(BLOB, b"hello")
    assert await driver.get_content(BLOB) == b"hello"


async def test_put_empty_object(driver: StorageDriver) -> None:
    await driver.put_content("a/empty", b"")
    assert await driver.get_content("a/empty") == b""
    assert (await driver.stat("a/empty")).size == 0


async def test_put_overwrites(driver: StorageDriver) -> None:
    await driver.put_content("a/b", b"first, longer value")
    await driver.put_content("a/b", b"second")
    assert await driver.get_content("a/b") == b"second"


async def test_get_missing(driver: StorageDriver) -> None:
    with pytest.raises(StorageNotFound) as info:
        await driver.get_content("no/such/key")
    assert info.value.key == "no/such/key"


async def test_get_prefix_is_not_an_object(driver: StorageDriver) -> None:
    await driver.put_content("a/b/c", b"x")
    with pytest.raises(StorageNotFound):
        await driver.get_content("a/b")


async def test_concurrent_puts_leave_one_whole_value(driver: StorageDriver) -> None:
    values = [bytes([i]) * (256 * 1024 + i) for i in range(16)]
    await asyncio.gather(*(driver.put_content("race/key", v) for v in values))
    assert await driver.get_content("race/key") in values
    assert await driver.list("race") == ["key"]


async def test_put_new_stores_only_where_nothing_is(driver: StorageDriver) -> None:
    assert await driver.put_new("lease/1", b"mine")
    assert not await driver.put_new("lease/1", b"theirs")
    assert await driver.get_content("lease/1") == b"mine"


async def test_racing_put_new_has_exactly_one_winner(driver: StorageDriver) -> None:
    won = await asyncio.gather(*(driver.put_new("lease/2", bytes([i])) for i in range(8)))
    assert won.count(True) == 1
    assert await driver.get_content("lease/2") == bytes([won.index(True)])
    assert await driver.list("lease") == ["2"]


async def test_racing_tallies_each_add_a_byte_where_folders_have_mtimes(
    driver: StorageDriver,
) -> None:
    # Servers count the links they write so (blobs.count_link), where a collection reads
    # the count (a disk); elsewhere none is kept, and the call says so.
    key = "entrepot/gc/links-written"
    if not driver.folder_mtimes:
        with pytest.raises(NotImplementedError, match="keeps no tallies"):
            await driver.tally(key)
        return
    await asyncio.gather(*(driver.tally(key) for _ in range(40)))
    assert (await driver.stat(key)).size == 40
    await driver.tally(key)
    assert (await driver.stat(key)).size == 41


# ---- streaming reads ------------------------------------------------------------------


async def test_read_whole(driver: StorageDriver) -> None:
    await driver.put_content("k", b"0123456789")
    assert b"".join(await collect(driver, "k")) == b"0123456789"


async def test_read_offset_length(driver: StorageDriver) -> None:
    await driver.put_content("k", b"0123456789")
    assert b"".join(await collect(driver, "k", offset=3)) == b"3456789"
    assert b"".join(await collect(driver, "k", offset=3, length=4)) == b"3456"
    assert b"".join(await collect(driver, "k", length=0)) == b""
    assert b"".join(await collect(driver, "k", offset=8, length=100)) == b"89"
    assert b"".join(await collect(driver, "k", offset=10)) == b""


async def test_read_chunks(driver: StorageDriver) -> None:
    data = bytes(range(256)) * 40  # 10240 bytes
    await driver.put_content("k", data)
    chunks = await collect(driver, "k", chunk_size=4096)
    assert [len(c) for c in chunks] == [4096, 4096, 2048]
    assert b"".join(chunks) == data
    chunks = await collect(driver, "k", offset=100, length=5000, chunk_size=4096)
    assert [len(c) for c in chunks] == [4096, 904]
    assert b"".join(chunks) == data[100:5100]
    exact = await collect(driver, "k", length=8192, chunk_size=4096)
    assert [len(c) for c in exact] == [4096, 4096]


async def test_read_empty_object(driver: StorageDriver) -> None:
    await driver.put_content("k", b"")
    assert await collect(driver, "k") == []


async def test_read_missing_raises_on_iteration(driver: StorageDriver) -> None:
    stream = driver.read("missing/key")  # creating the iterator does not raise
    with pytest.raises(StorageNotFound):
        await stream.__anext__()


# ---- writers --------------------------------------------------------------------------


async def test_writer_visible_only_after_commit(driver: StorageDriver) -> None:
    w = await driver.writer("up/data")
    await w.write(b"abc")
    await w.write(b"def")
    assert w.size == 6
    with pytest.raises(StorageNotFound):
        await driver.stat("up/data")
    with pytest.raises(StorageNotFound):
        await driver.get_content("up/data")
    await w.commit()
    assert await driver.get_content("up/data") == b"abcdef"
    assert (await driver.stat("up/data")).size == 6


async def test_writer_replaces_existing_at_commit(driver: StorageDriver) -> None:
    await driver.put_content("k", b"old")
    w = await driver.writer("k")
    await w.write(b"new value")
    assert await driver.get_content("k") == b"old"
    await w.commit()
    assert await driver.get_content("k") == b"new value"


async def test_writer_in_flight_not_listed(driver: StorageDriver) -> None:
    await driver.put_content("dir/one", b"1")
    w = await driver.writer("dir/two")
    await w.write(b"2" * 1024 * 1024)
    assert await driver.list("dir") == ["one"]
    await w.commit()
    assert await driver.list("dir") == ["one", "two"]


async def test_writer_cancel_leaves_nothing(driver: StorageDriver) -> None:
    await driver.put_content("dir/other", b"o")
    w = await driver.writer("dir/data")
    await w.write(b"x" * (1024 * 1024))
    await w.cancel()
    with pytest.raises(StorageNotFound):
        await driver.stat("dir/data")
    assert await driver.list("dir") == ["other"]
    await w.cancel()  # idempotent
    with pytest.raises(StorageError):
        await w.write(b"more")
    with pytest.raises(StorageError):
        await w.commit()


async def test_writer_cancel_keeps_previous_value(driver: StorageDriver) -> None:
    await driver.put_content("k", b"keep")
    w = await driver.writer("k")
    await w.write(b"discard")
    await w.cancel()
    assert await driver.get_content("k") == b"keep"


async def test_writer_empty_commit(driver: StorageDriver) -> None:
    w = await driver.writer("k")
    await w.commit()
    assert await driver.get_content("k") == b""


async def test_append_writer_continues(driver: StorageDriver) -> None:
    w = await driver.writer("_uploads/id/data")
    await w.write(b"chunk1-")
    await w.commit()
    w = await driver.writer("_uploads/id/data", append=True)
    assert w.size == 7
    await w.write(b"chunk2")
    assert w.size == 13
    await w.commit()
    assert await driver.get_content("_uploads/id/data") == b"chunk1-chunk2"
    assert (await driver.stat("_uploads/id/data")).size == 13


async def test_append_cancel_restores_original(driver: StorageDriver) -> None:
    await driver.put_content("k", b"original")
    w = await driver.writer("k", append=True)
    await w.write(b"y" * (1024 * 1024))
    await w.cancel()
    assert await driver.get_content("k") == b"original"


async def test_append_to_missing_raises(driver: StorageDriver) -> None:
    with pytest.raises(StorageNotFound):
        await driver.writer("no/such/upload", append=True)


async def test_driver_says_whether_appends_are_in_place(driver: StorageDriver) -> None:
    """Uploads rely on it: where appends are not in place, each chunk is an object of its
    own (registry/segments.py). In place means the object grows where it is."""
    assert isinstance(type(driver).appends_in_place, bool)  # declared, no default
    await driver.put_content("_uploads/id/data", b"first")
    path = driver.local_path("_uploads/id/data")
    w = await driver.writer("_uploads/id/data", append=True)
    await w.write(b"-second")
    await w.commit()
    assert await driver.get_content("_uploads/id/data") == b"first-second"
    if driver.appends_in_place:
        assert path is not None
        before = os.stat(path).st_ino
        w = await driver.writer("_uploads/id/data", append=True)
        await w.write(b"-third")
        await w.commit()
        assert os.stat(path).st_ino == before


async def test_large_streaming_write(driver: StorageDriver) -> None:
    data = os.urandom(5 * 1024 * 1024)
    w = await driver.writer(BLOB)
    for i in range(0, len(data), 64 * 1024):
        await w.write(data[i : i + 64 * 1024])
    assert w.size == len(data)
    await w.commit()
    assert (await driver.stat(BLOB)).size == len(data)
    assert b"".join(await collect(driver, BLOB, chunk_size=1 << 20)) == data
    assert await driver.get_content(BLOB) == data


async def test_large_append_in_several_sessions(driver: StorageDriver) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    third = len(data) // 3
    w = await driver.writer("up")
    await w.write(data[:third])
    await w.commit()
    for part in (data[third : 2 * third], data[2 * third :]):
        w = await driver.writer("up", append=True)
        for i in range(0, len(part), 100_000):
            await w.write(part[i : i + 100_000])
        await w.commit()
    assert await driver.get_content("up") == data


async def test_parts_written_unjoined_and_appends_made_durable_at_sync(
    driver: StorageDriver,
) -> None:
    parts = [os.urandom(300_000) for _ in range(5)] + [b"", b"tail"]
    w = await driver.writer("up/data")
    await w.write_parts(parts[:2])
    await w.commit()
    w = await driver.writer("up/data", append=True)
    await w.write_parts([b"x"])  # gathered in memory, then with the next parts
    await w.write_parts(parts[2:])
    await w.commit(durable=False)
    await driver.sync("up/data")
    assert await driver.get_content("up/data") == b"".join([*parts[:2], b"x", *parts[2:]])


# ---- stat, list -----------------------------------------------------------------------


async def test_stat_file(driver: StorageDriver) -> None:
    await driver.put_content("a/b/c", b"12345")
    info = await driver.stat("a/b/c")
    assert (info.key, info.size, info.is_dir) == ("a/b/c", 5, False)
    assert info.mtime > 0


async def test_stat_dir(driver: StorageDriver) -> None:
    await driver.put_content("a/b/c", b"12345")
    info = await driver.stat("a/b")
    assert info.is_dir
    assert info.key == "a/b"


async def test_stat_missing(driver: StorageDriver) -> None:
    with pytest.raises(StorageNotFound):
        await driver.stat("a/b")
    await driver.put_content("a/b", b"x")
    with pytest.raises(StorageNotFound):
        await driver.stat("a/b/c")  # below an object


async def test_exists_as_stat_finds(driver: StorageDriver) -> None:
    assert not await driver.exists("a/b")
    await driver.put_content("a/b", b"x")
    assert await driver.exists("a/b")
    assert not await driver.exists("a/b/c")  # below an object
    await driver.delete("a/b")
    assert not await driver.exists("a/b")


async def test_list_children_sorted(driver: StorageDriver) -> None:
    for key in ("r/zeta", "r/alpha/x", "r/alpha/y", "r/Mid", "r/beta", "other"):
        await driver.put_content(key, b"v")
    assert await driver.list("r") == ["Mid", "alpha", "beta", "zeta"]
    assert await driver.list("r/alpha") == ["x", "y"]
    assert await driver.list("") == ["other", "r"]


async def test_list_missing(driver: StorageDriver) -> None:
    with pytest.raises(StorageNotFound):
        await driver.list("")  # nothing stored at all
    await driver.put_content("a/b", b"x")
    with pytest.raises(StorageNotFound):
        await driver.list("nope")
    with pytest.raises(StorageNotFound):
        await driver.list("a/b")  # an object has no children


@pytest.fixture(params=["driver", "default"])
def listing_walk(request: pytest.FixtureRequest) -> bool:
    """Walk tests run with the driver's walk and with the contract's default (list, stat)."""
    return bool(request.param == "default")


async def walked(
    driver: StorageDriver, prefix: str, after: str = "", collapse: str = "", default: bool = False
) -> list[str]:
    walk = StorageDriver.walk if default else type(driver).walk
    batches = [batch async for batch in walk(driver, prefix, after=after, collapse=collapse)]
    assert all(batches), "no empty batches"
    return [key for batch in batches for key in batch]


TREE = ("r/a/_layers/x/link", "r/a-b/_layers/y", "r/a/0/f", "r/a/z", "r/b", "r/_up/f", "q")


async def test_walk_lists_every_key_in_lexical_order(
    driver: StorageDriver, listing_walk: bool
) -> None:
    for key in TREE:
        await driver.put_content(key, b"v")
    keys = await walked(driver, "r", default=listing_walk)
    assert keys == sorted(key.removeprefix("r/") for key in TREE if key.startswith("r/"))
    assert keys == ["_up/f", "a-b/_layers/y", "a/0/f", "a/_layers/x/link", "a/z", "b"]
    assert await walked(driver, "", default=listing_walk) == sorted(TREE)


async def test_walk_after_skips_what_sorts_before(
    driver: StorageDriver, listing_walk: bool
) -> None:
    for key in TREE:
        await driver.put_content(key, b"v")
    everything = await walked(driver, "r", default=listing_walk)
    for after in ("a", "a-b/_layers/y", "a/", "a/0/f", "a/1", "az", "b", "c"):
        assert await walked(driver, "r", after=after, default=listing_walk) == [
            k for k in everything if k > after
        ]


async def test_walk_collapse_reports_directories_without_entering(
    driver: StorageDriver, listing_walk: bool
) -> None:
    for key in TREE:
        await driver.put_content(key, b"v")
    assert await walked(driver, "r", collapse="_", default=listing_walk) == [
        "_up/",
        "a-b/_layers/",
        "a/0/f",
        "a/_layers/",
        "a/z",
        "b",
    ]
    assert await walked(driver, "r", after="a/0/f", collapse="_", default=listing_walk) == [
        "a/_layers/",
        "a/z",
        "b",
    ]
    await driver.put_content("r/_file", b"v")  # an object, not a directory: listed as is
    assert "_file" in await walked(driver, "r", collapse="_", default=listing_walk)


async def test_walk_missing_prefix_yields_nothing(
    driver: StorageDriver, listing_walk: bool
) -> None:
    assert await walked(driver, "", default=listing_walk) == []
    await driver.put_content("a/b", b"x")
    assert await walked(driver, "nope", default=listing_walk) == []
    assert await walked(driver, "a/b", default=listing_walk) == []  # an object has no keys below it


async def test_walk_many_keys_in_several_batches(driver: StorageDriver) -> None:
    keys = [f"d/{i // 100:03d}/{i % 100:03d}" for i in range(600)]
    await asyncio.gather(*(driver.put_content(key, b"") for key in keys))
    assert await walked(driver, "d") == [key.removeprefix("d/") for key in keys]
    await driver.put_content("d/000/000", b"new")  # stopping early leaves nothing open
    async for batch in driver.walk("d"):
        assert batch[0] == "000/000"
        break


# ---- move, delete ---------------------------------------------------------------------


async def test_move(driver: StorageDriver) -> None:
    await driver.put_content("_uploads/u1/data", b"blob")
    await driver.move("_uploads/u1/data", BLOB)
    assert await driver.get_content(BLOB) == b"blob"
    with pytest.raises(StorageNotFound):
        await driver.get_content("_uploads/u1/data")


async def test_move_replaces_target(driver: StorageDriver) -> None:
    await driver.put_content("src", b"new")
    await driver.put_content("dst", b"old and longer")
    await driver.move("src", "dst")
    assert await driver.get_content("dst") == b"new"
    with pytest.raises(StorageNotFound):
        await driver.stat("src")


async def test_versions_name_the_object_a_writer_made(driver: StorageDriver) -> None:
    """A writer's version is the one ``stat`` then reports; a later write changes it,
    even to bytes of the same size. Drivers without versions report None everywhere."""
    writer = await driver.writer("up/data")
    await writer.write(b"first")
    await writer.commit()
    first = writer.version
    assert (await driver.stat("up/data")).version == first
    again = await driver.writer("up/data", append=True)
    await again.write(b"!")
    await again.commit()
    if first is None:
        assert again.version is None and (await driver.stat("up/data")).version is None
        return
    assert again.version is not None and again.version != first
    assert (await driver.stat("up/data")).version == again.version
    await driver.put_content("up/data", b"other!")  # same size, other bytes
    assert (await driver.stat("up/data")).version not in (None, again.version)


async def test_move_of_a_version(driver: StorageDriver) -> None:
    writer = await driver.writer("src")
    await writer.write(b"verified")
    await writer.commit()
    version = writer.version
    if version is None:  # no versions: none can be named
        with pytest.raises(StorageConflict):
            await driver.move("src", "dst", if_version="v1")
        assert await driver.get_content("src") == b"verified"
        return
    await driver.put_content("src", b"replaced")  # another writer, meanwhile
    with pytest.raises(StorageConflict):
        await driver.move("src", "dst", if_version=version)
    assert await driver.get_content("src") == b"replaced"
    with pytest.raises(StorageNotFound):
        await driver.stat("dst")
    now = (await driver.stat("src")).version
    assert now is not None
    await driver.move("src", "dst", if_version=now)
    assert await driver.get_content("dst") == b"replaced"
    with pytest.raises(StorageNotFound):
        await driver.stat("src")


async def test_move_missing_src(driver: StorageDriver) -> None:
    await driver.put_content("dst", b"keep")
    with pytest.raises(StorageNotFound) as info:
        await driver.move("no/such/src", "dst")
    assert info.value.key == "no/such/src"
    assert await driver.get_content("dst") == b"keep"


async def test_delete_file(driver: StorageDriver) -> None:
    await driver.put_content("a/one", b"1")
    await driver.put_content("a/two", b"2")
    await driver.delete("a/one")
    with pytest.raises(StorageNotFound):
        await driver.get_content("a/one")
    assert await driver.list("a") == ["two"]


async def test_delete_tree(driver: StorageDriver) -> None:
    for key in ("repo/_layers/x/link", "repo/_manifests/tags/t/current/link", "keep"):
        await driver.put_content(key, b"v")
    await driver.delete("repo")
    for key in ("repo", "repo/_layers/x/link", "repo/_manifests/tags/t/current/link"):
        with pytest.raises(StorageNotFound):
            await driver.stat(key)
    assert await driver.get_content("keep") == b"v"


async def test_prefixes_are_whole_segments(driver: StorageDriver) -> None:
    for key in ("r/app/x", "r/app-2/y", "r/apple"):
        await driver.put_content(key, b"v")
    assert await driver.list("r/app") == ["x"]
    assert (await driver.stat("r/app")).is_dir
    await driver.delete("r/app")
    assert await driver.list("r") == ["app-2", "apple"]
    assert await driver.get_content("r/app-2/y") == b"v"


async def test_delete_missing(driver: StorageDriver) -> None:
    with pytest.raises(StorageNotFound):
        await driver.delete("no/such/key")


# ---- bulk: scan, move_many, delete_many -----------------------------------------------


@pytest.fixture(params=["driver", "default"])
def bulk_default(request: pytest.FixtureRequest) -> bool:
    """Bulk tests run with the driver's own operation and with the contract's default."""
    return bool(request.param == "default")


async def scanned(
    driver: StorageDriver, prefix: str, default: bool, fold: Fold | None = None
) -> list[FileInfo]:
    scan = StorageDriver.scan if default else type(driver).scan
    batches = [batch async for batch in scan(driver, prefix, fold=fold)]
    assert all(batches), "no empty batches"
    return [info for batch in batches for info in batch]


async def test_scan_lists_every_object_with_size_and_time(
    driver: StorageDriver, bulk_default: bool
) -> None:
    for n, key in enumerate(TREE):
        await driver.put_content(key, b"v" * n)
    found = await scanned(driver, "r", bulk_default)
    assert [i.key for i in found] == await walked(driver, "r")
    for info in found:
        stored = await driver.stat(f"r/{info.key}")
        assert info.size == stored.size == TREE.index(f"r/{info.key}")
        assert abs(info.mtime - stored.mtime) < 2 and not info.is_dir
    assert [i.key for i in await scanned(driver, "", bulk_default)] == sorted(TREE)
    assert await scanned(driver, "nope", bulk_default) == []


async def test_scan_folds_a_directory_into_the_object_named_for_it(
    driver: StorageDriver, bulk_default: bool
) -> None:
    # A blob's folder is its data (or, without it, the folder); a link's folder, its name.
    keys = ("s/b/1/data", "s/b/1/other", "s/b/2/aside", "s/b-x/3/data", "s/l/k/link", "s/top")
    for n, key in enumerate(keys):
        await driver.put_content(key, b"v" * (n + 1))

    def fold(directory: str) -> str | None:
        if directory.count("/") == 2:
            return "" if directory.startswith("l/") else "data"
        return None

    found = await scanned(driver, "s", bulk_default, fold)
    assert [(i.key, i.is_dir) for i in found] == [
        ("b-x/3/data", False),
        ("b/1/data", False),
        ("b/2/", True),
        ("l/k/", True),
        ("top", False),
    ]
    assert [i.size for i in found] == [4, 1, 0, 0, 6]
    stored = await driver.stat("s/b/1/data")
    assert abs(found[1].mtime - stored.mtime) < 2


def fold_blob_folders(directory: str) -> str | None:
    """A module-level fold (scan_apart walks with it in another process)."""
    return "data" if directory.count("/") == 2 else None


async def test_scan_apart_finds_what_scan_finds(driver: StorageDriver) -> None:
    keys = ("s/b/1/data", "s/b/1/other", "s/b/2/aside", "s/l/k/link", "s/top")
    for n, key in enumerate(keys):
        await driver.put_content(key, b"v" * (n + 1))

    def closure(directory: str) -> str | None:  # not module-level: walked as by scan
        return fold_blob_folders(directory)

    for fold in (None, fold_blob_folders, closure):
        batches = [b async for b in driver.scan_apart("s", fold=fold)]
        assert all(batches), "no empty batches"
        apart = [info for batch in batches for info in batch]
        found = await scanned(driver, "s", False, fold)
        assert [(i.key, i.size, i.is_dir) for i in apart] == [
            (i.key, i.size, i.is_dir) for i in found
        ]
        assert all(abs(a.mtime - f.mtime) < 2 for a, f in zip(apart, found, strict=True))
    assert [b async for b in driver.scan_apart("nope", fold=fold_blob_folders)] == []


async def test_scan_apart_shards_share_the_top_level_between_them(driver: StorageDriver) -> None:
    # Several walks at once (a collection's, one per CPU) each take a part of the tree.
    names = [f"team{n}" for n in range(12)]
    for name in names:
        await driver.put_content(f"s/{name}/app/b/1/data", name.encode())
        await driver.put_content(f"s/{name}/l/k/link", b"sha256:k")
    await driver.put_content("s/top", b"t")
    whole = [i.key async for b in driver.scan_apart("s", fold=fold_blob_folders) for i in b]
    for fold in (fold_blob_folders, None):
        parts = [
            [i.key async for b in driver.scan_apart("s", fold=fold, shard=(n, 3)) for i in b]
            for n in range(3)
        ]
        tops = [{key.split("/")[0] for key in part} for part in parts]
        assert all(tops), "each shard has a part here"
        for top in [*names, "top"]:  # each top-level entry in exactly one shard
            assert [top in part for part in tops].count(True) == 1
        if fold is fold_blob_folders:
            assert sorted(key for part in parts for key in part) == whole


def read_links_and_their_targets(key: str) -> str | None:
    """A module-level reader: a link's own bytes; for a blob's ``data``, the link that
    names it; nothing for the rest."""
    if key.endswith("/link"):
        return key
    if key.endswith("/data"):
        return f"l/{key.split('/')[-2]}/link"
    return None


async def test_scan_apart_reads_what_read_names(driver: StorageDriver) -> None:
    # What a collection reads next (a tag's link, a manifest) comes with the walk.
    await driver.put_content("s/b/1/data", b"manifest one")
    await driver.put_content("s/b/2/data", b"manifest two")  # l/2/link is missing
    await driver.put_content("s/l/k/link", b"sha256:k")
    await driver.put_content("l/1/link", b"sha256:1")
    await driver.put_content("s/top", b"t")

    def closure(key: str) -> str | None:  # not module-level: read as scan_apart does
        return read_links_and_their_targets(key)

    for read in (read_links_and_their_targets, closure):
        batches = [b async for b in driver.scan_apart("s", read=read)]
        found = [(i.key, i.data) for batch in batches for i in batch]
        assert found == [
            ("b/1/data", b"sha256:1"),
            ("b/2/data", None),
            ("l/k/link", b"sha256:k"),
            ("top", None),
        ]


def names_and_reads(view: LocalView, prefix: str, args: tuple[str, ...]) -> Iterator[list[Any]]:
    """A module-level local walk: per top-level entry of its shard, a batch of one record:
    the entry, its names, and what the view says of each of ``args`` below it."""
    for top in sorted(view.names(prefix)):
        if view.mine(top):
            keys = [f"{prefix}/{top}/{a}" for a in args]
            below = [(view.stat(key), view.get(key), view.mtime(key)) for key in keys]
            yield [(top, sorted(view.names(f"{prefix}/{top}")), below)]


async def test_walk_local_runs_the_callers_walk_where_the_objects_are(
    driver: StorageDriver,
) -> None:
    # A collection of a disk walks it knowing the registry's layout (registry.gcwalk).
    if not driver.walks_local:
        with pytest.raises(StorageError, match="cannot walk locally"):
            [b async for b in driver.walk_local("s", names_and_reads)]
        return
    await driver.put_content("s/a/f", b"abc")
    await driver.put_content("s/a/d/x", b"x")
    await driver.put_content("s/b/f", b"b")
    names = [f"t{n}" for n in range(9)]
    for name in names:
        await driver.put_content(f"s/{name}/f", name.encode())
    args = ("f", "d", "nope")
    for apart in (False, True):
        batches = [b async for b in driver.walk_local("s", names_and_reads, args, apart=apart)]
        found = {record[0]: record for batch in batches for record in batch}
        _, listed, (f, d, nope) = found["a"]
        assert listed == ["d", "f"]
        assert f[0] is not None and f[0][0] == 3 and f[1] == b"abc" and f[2] == f[0][1]
        assert abs(f[0][1] - (await driver.stat("s/a/f")).mtime) < 2
        assert d[:2] == (None, None) and nope == (None, None, None)  # a folder, a missing key
        assert d[2] is not None and abs(d[2] - time.time()) < 60  # a folder's own mtime
        assert found["b"][1] == ["f"] and found["b"][2][0][1] == b"b"
        assert sorted(found) == sorted(["a", "b", *names])
        parts = [
            {
                record[0]
                for batch in [
                    b
                    async for b in driver.walk_local(
                        "s", names_and_reads, shard=(n, 3), apart=apart
                    )
                ]
                for record in batch
            }
            for n in range(3)
        ]
        assert sorted(t for part in parts for t in part) == sorted(found)  # each in one
        assert all(parts)
    assert [b async for b in driver.walk_local("nope", names_and_reads)] == []

    def closure(view: LocalView, prefix: str, args: tuple[str, ...]) -> Iterator[list[Any]]:
        return names_and_reads(view, prefix, args)

    with pytest.raises(StorageError, match="module-level"):
        [b async for b in driver.walk_local("s", closure)]


async def test_scan_many_keys_in_several_batches(driver: StorageDriver) -> None:
    keys = [f"d/{i // 100:03d}/{i % 100:03d}" for i in range(1200)]
    # At most 64 writes at once: radosgw answers 503 SlowDown beyond its 1,024 requests in
    # flight, and obstore gives up after three retries.
    slots = asyncio.Semaphore(64)

    async def put(key: str) -> None:
        async with slots:
            await driver.put_content(key, b"x")

    await asyncio.gather(*(put(key) for key in keys))
    found = await scanned(driver, "d", False)
    assert [i.key for i in found] == [key.removeprefix("d/") for key in keys]
    assert {i.size for i in found} == {1}


async def test_stat_many_answers_each_key_in_order(
    driver: StorageDriver, bulk_default: bool
) -> None:
    await driver.put_content("m/a/data", b"abc")
    await driver.put_content("m/b", b"")
    stat_many = StorageDriver.stat_many if bulk_default else type(driver).stat_many
    keys = ["m/b", "m/none", "m/a/data", "m/a", "m/none/deeper"]
    found = await stat_many(driver, keys)
    assert [None if i is None else (i.key, i.size, i.is_dir) for i in found] == [
        ("m/b", 0, False),
        None,
        ("m/a/data", 3, False),
        ("m/a", 0, True),
        None,
    ]
    stored = await driver.stat("m/a/data")
    assert found[2] is not None and abs(found[2].mtime - stored.mtime) < 2
    assert await stat_many(driver, []) == []


async def test_move_many_skips_missing_sources(driver: StorageDriver, bulk_default: bool) -> None:
    await driver.put_content("b/1/data", b"one")
    await driver.put_content("b/2/data", b"two")
    move_many = StorageDriver.move_many if bulk_default else type(driver).move_many
    moves = [("b/1/data", "b/1/aside"), ("b/9/data", "b/9/aside"), ("b/2/data", "b/2/aside")]
    assert await move_many(driver, moves, sync=False) == [True, False, True]
    assert await driver.get_content("b/1/aside") == b"one"
    assert await driver.get_content("b/2/aside") == b"two"
    for key in ("b/1/data", "b/2/data", "b/9/aside"):
        with pytest.raises(StorageNotFound):
            await driver.stat(key)


async def test_move_stale_in_moves_only_what_was_written_before_a_time(
    driver: StorageDriver, bulk_default: bool
) -> None:
    # A collection sets aside an unreferenced blob only if no push wrote it within grace.
    await driver.put_content("b/1/data", b"one")
    await driver.put_content("b/2/data", b"two!")
    await driver.put_content("b/3/data/inside", b"a folder named data")
    written = (await driver.stat("b/2/data")).mtime
    move_stale_in = StorageDriver.move_stale_in if bulk_default else type(driver).move_stale_in
    folders = ["b/1", "b/9", "b/2", "b/3"]

    fresh = await move_stale_in(driver, folders, "data", "aside", written - 3600, sync=False)
    assert [(None if st is None else st[0], moved) for st, moved in fresh] == [
        (3, False),
        (None, False),
        (4, False),
        (None, False),  # a directory: nothing to move
    ]
    assert await driver.get_content("b/2/data") == b"two!"
    assert abs(cast(tuple[int, float], fresh[2][0])[1] - written) < 1

    stale = await move_stale_in(driver, folders, "data", "aside", written + 3600, sync=False)
    assert [moved for _, moved in stale] == [True, False, True, False]
    with pytest.raises(StorageError):
        await move_stale_in(driver, folders, "data", "x/aside", written, sync=False)
    assert await driver.get_content("b/1/aside") == b"one"
    assert await driver.get_content("b/2/aside") == b"two!"
    for key in ("b/1/data", "b/2/data", "b/9/aside"):
        with pytest.raises(StorageNotFound):
            await driver.stat(key)


async def test_delete_many_deletes_objects_and_their_emptied_folders(
    driver: StorageDriver, bulk_default: bool
) -> None:
    keys = ["b/1/data", "b/2/data", "b/2/refilled", "top", "keep"]
    for key in keys:
        await driver.put_content(key, b"v")
    delete_many = StorageDriver.delete_many if bulk_default else type(driver).delete_many
    await delete_many(driver, ["b/1/data", "b/2/data", "b/3/missing", "top"])
    for key in ("b/1/data", "b/2/data", "top"):
        with pytest.raises(StorageNotFound):
            await driver.get_content(key)
    assert await driver.get_content("b/2/refilled") == b"v"
    assert await driver.get_content("keep") == b"v"
    assert await driver.list("b/2") == ["refilled"]
    if not bulk_default:  # the default deletes objects only; folders are the driver's
        assert await driver.list("b") == ["2"]
        with pytest.raises(StorageNotFound):
            await driver.stat("b/1")


async def test_delete_in_deletes_an_object_by_name_in_each_folder(
    driver: StorageDriver, bulk_default: bool
) -> None:
    # A collection deletes the blobs it set aside so: ``<blob folder>/collecting``.
    for key in ("b/1/aside", "b/2/aside", "b/2/data", "b/3/other"):
        await driver.put_content(key, b"v")
    delete_in = StorageDriver.delete_in if bulk_default else type(driver).delete_in
    await delete_in(driver, ["b/1", "b/2", "b/3", "b/9"], "aside")
    for key in ("b/1/aside", "b/2/aside"):
        with pytest.raises(StorageNotFound):
            await driver.stat(key)
    assert await driver.get_content("b/2/data") == b"v"  # refilled meanwhile: kept
    assert await driver.get_content("b/3/other") == b"v"
    if not bulk_default:  # the default deletes objects only; folders are the driver's
        assert await driver.list("b") == ["2", "3"]
    with pytest.raises(StorageError):
        await delete_in(driver, ["b/3"], "x/other")
    assert await driver.get_content("b/3/other") == b"v"


async def test_remove_empty_folders_removes_only_folders_that_hold_nothing(
    driver: StorageDriver,
) -> None:
    # A collection removing a repository deletes the objects it read, then its folders:
    # one a writer put something in meanwhile stays, with what it holds.
    for key in ("r/a/x/obj", "r/b/kept"):
        await driver.put_content(key, b"v")
    await driver.delete("r/a/x/obj")
    await driver.remove_empty_folders(["r/a/x", "r/a", "r/b", "r/missing", "r"])
    assert await driver.get_content("r/b/kept") == b"v"
    assert await driver.list("r") == ["b"]
    with pytest.raises(StorageError):
        await driver.remove_empty_folders(["../x"])


# ---- keys -----------------------------------------------------------------------------

INVALID_KEYS = ["../x", "/abs", "a//b", "a/../b", "a/./b", "a/", "..", "a\x00b", "a\\b", ""]


@pytest.mark.parametrize("key", INVALID_KEYS)
async def test_invalid_keys(driver: StorageDriver, key: str) -> None:
    with pytest.raises(StorageError) as info:
        await driver.put_content(key, b"x")
    assert not isinstance(info.value, StorageNotFound)
    with pytest.raises(StorageError):
        await driver.get_content(key)
    with pytest.raises(StorageError):
        await driver.writer(key)
    with pytest.raises(StorageError):
        await driver.delete(key)
    with pytest.raises(StorageError):
        await driver.move(key, "ok")
    with pytest.raises(StorageError):
        await driver.move("ok", key)
    with pytest.raises(StorageError):
        await collect(driver, key)


@pytest.mark.parametrize("key", ["../x", "/abs", "a//b", "a/../b"])
async def test_invalid_prefixes(driver: StorageDriver, key: str) -> None:
    with pytest.raises(StorageError):
        await driver.list(key)
    with pytest.raises(StorageError):
        await driver.stat(key)
