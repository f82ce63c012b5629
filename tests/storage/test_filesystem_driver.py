"""FilesystemDriver specifics: the on-disk layout is registry:2's, so its data dirs work."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import pytest

from entrepot.storage import (
    FileInfo,
    StorageError,
    StorageNotFound,
    earlywalks,
    fsbulkops,
    fschildren,
)
from entrepot.storage.filesystem import FilesystemDriver
from entrepot.storage.fschildren import EarlyChild, walks_stopped
from entrepot.storage.fswalk import BATCH, local_argv
from entrepot.storage.localwalk import LocalView
from tests.storage.test_contract import INVALID_KEYS, names_and_reads

KEY = "docker/registry/v2/repositories/library/alpine/_manifests/tags/3.20/current/link"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "registry"


@pytest.fixture
def fs(root: Path) -> FilesystemDriver:
    return FilesystemDriver(root)


def disk_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def exists(path: Path) -> bool:
    return path.exists()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_key_is_a_real_file_under_root(fs: FilesystemDriver, root: Path) -> None:
    await fs.put_content(KEY, b"sha256:abc")
    assert (root / KEY).read_bytes() == b"sha256:abc"
    assert disk_files(root) == [KEY]  # no temp files left behind


async def test_reads_an_existing_registry2_data_dir(fs: FilesystemDriver, root: Path) -> None:
    blob = "docker/registry/v2/blobs/sha256/ab/abcd/data"
    write_file(root / blob, b"layer bytes")
    write_file(root / KEY, b"sha256:abcd")
    assert await fs.get_content(blob) == b"layer bytes"
    assert await fs.get_content(KEY) == b"sha256:abcd"
    assert await fs.list("docker/registry/v2/repositories/library") == ["alpine"]
    assert (await fs.stat("docker/registry/v2/blobs/sha256/ab")).is_dir


async def test_writer_and_move_layout(fs: FilesystemDriver, root: Path) -> None:
    upload = "docker/registry/v2/repositories/r/_uploads/u1/data"
    blob = "docker/registry/v2/blobs/sha256/ab/abcd/data"
    w = await fs.writer(upload)
    await w.write(b"part1")
    await w.commit()
    w = await fs.writer(upload, append=True)
    await w.write(b"part2")
    await w.commit()
    assert (root / upload).read_bytes() == b"part1part2"
    await fs.move(upload, blob)
    assert disk_files(root) == [blob]


async def test_local_path(fs: FilesystemDriver, root: Path) -> None:
    assert fs.local_path(KEY) == str(root / KEY)
    assert fs.rootdirectory == str(root)
    with pytest.raises(StorageError):
        fs.local_path("../etc/passwd")


def test_relative_root_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert FilesystemDriver("data").local_path("a/b") == str(tmp_path / "data" / "a" / "b")
    with pytest.raises(ValueError):
        FilesystemDriver("")


async def test_root_created_on_first_write(fs: FilesystemDriver, root: Path) -> None:
    assert not exists(root)
    with pytest.raises(StorageNotFound):
        await fs.list("")
    await fs.put_content("x", b"1")
    assert await fs.list("") == ["x"]


async def test_stray_temp_files_are_not_listed(fs: FilesystemDriver, root: Path) -> None:
    await fs.put_content("dir/real", b"1")
    write_file(root / "dir" / ".tmp-0123abcd", b"partial")
    write_file(root / ".tmp-deadbeef", b"partial")
    assert await fs.list("dir") == ["real"]
    assert await fs.list("") == ["dir"]
    with pytest.raises(StorageError):
        await fs.get_content("dir/.tmp-0123abcd")  # keys cannot name temp files


async def test_writer_temp_file_removed_on_cancel(fs: FilesystemDriver, root: Path) -> None:
    w = await fs.writer("a/data")
    await w.write(b"x" * 1_000_000)
    assert len(os.listdir(root / "a")) == 1  # the temp file
    await w.cancel()
    assert os.listdir(root / "a") == []


async def test_new_files_honour_umask(fs: FilesystemDriver, root: Path) -> None:
    old = os.umask(0o022)
    try:
        await fs.put_content("a/b", b"x")
        w = await fs.writer("a/c")
        await w.commit()
    finally:
        os.umask(old)
    assert (root / "a" / "b").stat().st_mode & 0o777 == 0o644
    assert (root / "a" / "c").stat().st_mode & 0o777 == 0o644
    assert (root / "a").stat().st_mode & 0o777 == 0o755


async def test_write_through_a_file_is_an_error(fs: FilesystemDriver) -> None:
    await fs.put_content("a/b", b"x")
    with pytest.raises(StorageError) as info:
        await fs.put_content("a/b/c", b"y")
    assert not isinstance(info.value, StorageNotFound)


async def test_empty_directory_after_delete(fs: FilesystemDriver) -> None:
    # Like registry:2, delete does not prune emptied parents.
    await fs.put_content("tags/t1/link", b"x")
    await fs.delete("tags/t1")
    assert await fs.list("tags") == []
    assert (await fs.stat("tags")).is_dir


async def test_abandoned_read_closes_its_file(fs: FilesystemDriver) -> None:
    await fs.put_content("k", b"x" * 10_000)
    before = open_fds()
    stream = cast(AsyncGenerator[bytes, None], fs.read("k", chunk_size=1000))
    assert await stream.__anext__() == b"x" * 1000
    assert open_fds() == before + 1
    await stream.aclose()
    assert open_fds() == before


async def test_cancelled_reader_closes_its_file(fs: FilesystemDriver) -> None:
    await fs.put_content("k", os.urandom(4 * 1024 * 1024))
    before = open_fds()

    async def consume() -> None:
        async for _ in fs.read("k", chunk_size=4096):
            await asyncio.sleep(0)

    for delay in (0, 0.001, 0.005):
        task = asyncio.create_task(consume())
        await asyncio.sleep(delay)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    for _ in range(100):  # an abandoned thread closes the fd when it finishes
        if open_fds() == before:
            break
        await asyncio.sleep(0.01)
    assert open_fds() == before


async def test_cancelled_write_then_cancel(fs: FilesystemDriver, root: Path) -> None:
    await fs.put_content("k", b"orig")
    w = await fs.writer("k", append=True)
    task = asyncio.create_task(w.write(b"z" * (8 * 1024 * 1024)))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(StorageError):
        await w.commit()  # the interrupted write left the writer unusable
    await w.cancel()
    assert await fs.get_content("k") == b"orig"


async def test_folded_scan_reports_empty_folders(fs: FilesystemDriver, root: Path) -> None:
    # A repository left with empty folders is still found by a collection's scan.
    (root / "r" / "gone" / "_layers" / "sha256").mkdir(parents=True)
    await fs.put_content("r/kept/_layers/sha256/d/link", b"sha256:d")
    found = [i async for batch in fs.scan("r", fold=lambda d: None) for i in batch]
    assert [(i.key, i.is_dir) for i in found] == [
        ("gone/_layers/sha256/", True),
        ("kept/_layers/sha256/d/link", False),
    ]


def fold_noisily(directory: str) -> str | None:
    """A module-level fold (the walking process loads it) that writes far more to stderr
    than a pipe holds, once."""
    if directory == "00/":
        sys.stderr.write("a library's warning\n" * 20_000)  # about 400 KB
        sys.stderr.flush()
    return None


def fold_printing(directory: str) -> str | None:
    """A module-level fold that prints to stdout, as a careless library might."""
    print(f"entering {directory}")
    os.write(1, b"and a C library's line\n")
    return None


@pytest.mark.parametrize("fold", [fold_noisily, fold_printing])
async def test_a_walk_apart_survives_what_the_child_prints(
    root: Path, fs: FilesystemDriver, fold: Callable[[str], str | None]
) -> None:
    # Output on stderr beyond a pipe's buffer (read while the rows come, not after) and
    # output on stdout (the rows have an fd of their own) leave the rows whole.
    for i in range(30):
        write_file(root / "many" / f"{i // 10:02d}" / f"{i}", b"x" * i)
    walked = [(i.key, i.size) async for b in fs.scan("many") for i in b]
    apart = fs.scan_apart("many", fold=fold)
    found = await asyncio.wait_for(_collect(apart), timeout=30)
    assert [(i.key, i.size) for i in found] == walked
    assert len(walked) == 30


async def _collect(batches: AsyncIterator[list[FileInfo]]) -> list[FileInfo]:
    return [info async for batch in batches for info in batch]


async def test_a_walk_apart_comes_in_batches(root: Path, fs: FilesystemDriver) -> None:
    # More objects than the walking process sends at once.
    base = root / "many"
    for i in range(BATCH + 10):
        write_file(base / f"{i // 1000:02d}" / f"{i % 1000:03d}", b"x")
    batches = [[i.key for i in b] async for b in fs.scan_apart("many")]
    assert [len(b) for b in batches] == [BATCH, 10]
    assert [k for b in batches for k in b] == [i.key async for b in fs.scan("many") for i in b]


def helpers(fs: FilesystemDriver) -> list[asyncio.subprocess.Process]:
    """The processes serving the driver's bulk calls."""
    serving = fs._helpers
    return [] if serving is None else [h.process for h in serving._all]


def helper_pids(fs: FilesystemDriver) -> list[int]:
    return [process.pid for process in helpers(fs)]


async def ready_helpers(fs: FilesystemDriver) -> list[int]:
    """The helpers' pids once each has said it is ready (a block goes on as they start)."""
    assert fs._helpers is not None and fs._helpers._starting is not None
    await fs._helpers._starting
    return helper_pids(fs)


async def test_bulk_calls_apart_do_what_they_do_in_threads(
    root: Path, fs: FilesystemDriver
) -> None:
    # A collection's stats, moves and deletes, made by two helper processes.
    keys = [f"b/{n % 100:02d}/{n:04d}/data" for n in range(3000)]
    for n, key in enumerate(keys):
        write_file(root / key, b"x" * (n % 7))
    before = await fs.stat_many([*keys, "b/missing/data"])
    async with fs.bulk_apart():
        processes = helpers(fs)
        pids = helper_pids(fs)
        assert len(pids) == 2 and os.getpid() not in pids
        assert await fs.stat_many([*keys, "b/missing/data"]) == before
        aside = [(key, key.replace("/data", "/collecting")) for key in keys]
        assert await fs.move_many([*aside, ("b/missing/data", "b/x")], sync=False) == [
            *([True] * len(keys)),
            False,
        ]
        await fs.delete_many([dst for _, dst in aside[:1000]])
        await fs.delete_in([key.removesuffix("/data") for key in keys[1000:2000]], "collecting")
    assert helper_pids(fs) == []
    assert [process.returncode for process in processes] == [0, 0]  # ended with the block
    assert not exists(root / "b" / "00" / "0000")  # deleted, with its emptied folder
    assert not exists(root / "b" / "00" / "1000")  # deleted by name in its folder
    assert exists(root / "b" / "10" / "2010" / "collecting")
    assert not exists(root / "b" / "10" / "2010" / "data")


@pytest.mark.parametrize(
    "odd",
    [
        *INVALID_KEYS,
        "a/.tmp-1",
        ".hidden",
        "a/.b",
        "a.b/c.d",
        "sha256:ab",
        "a/b.",
        "a\x01b",
        "x" * 300,
    ],
)
def test_a_bulk_calls_paths_are_checked_as_each_key_alone(fs: FilesystemDriver, odd: str) -> None:
    # A bulk call's keys are checked and made paths all at once; a key at fault among
    # good ones fails the call as it fails alone, and a good one gets its path.
    for keys in ([odd], ["blobs/a/1", odd], [odd, "b"], ["blobs/a/1", odd, "blobs/b/2"]):
        try:
            expected: list[str] | str = [fs._bulk_path(key) for key in keys]
        except StorageError as exc:
            expected = str(exc)
        try:
            got: list[str] | str = fs._bulk_paths(keys)
        except StorageError as exc:
            got = str(exc)
        assert got == expected
        try:  # the calls by folder: checked alike, sent relative to the root
            checked: list[str] | str = fs._checked(keys)
        except StorageError as exc:
            checked = str(exc)
        assert checked == (expected if isinstance(expected, str) else keys)
    assert fs._bulk_paths([]) == []
    assert fs._checked([]) == []
    assert fs._bulk_paths(["blobs/a/1", "c"]) == [
        f"{fs.rootdirectory}/blobs/a/1",
        f"{fs.rootdirectory}/c",
    ]


@pytest.mark.parametrize("relative", [False, True])
def test_bulk_calls_in_folders_answer_as_by_whole_paths(root: Path, relative: bool) -> None:
    # The set-aside and the deletes open each blob's parent folder once for the blobs in
    # it: folders in several parents, a parent seen again, a missing parent, a missing
    # blob and a folder named ``data`` answer as calls by whole paths do, and no folder
    # is left open; given as whole paths, or (as the driver sends them) relative to a root.
    keys = ("b/00/1/data", "b/00/2/data", "b/01/3/data", "b/00/4/data", "b/00/5/data/x")
    for size, key in enumerate(keys, start=1):
        write_file(root / key, b"x" * size)
    folders = ["b/00/1", "b/00/2", "b/01/3", "b/00/4", "b/00/9"]
    folders += ["b/07/6", "b/00/5"]  # no parent; a folder named data
    prefix = f"{root}/" if relative else ""
    if not relative:
        folders = [str(root / f) for f in folders]
    fds = open_fds()

    answers = fsbulkops.move_stale(folders, "data", "aside", time.time() + 60, False, prefix)

    sizes = [None if stat is None else stat[0] for stat, _ in answers]
    assert sizes == [1, 2, 3, 4, None, None, None]
    assert [moved for _, moved in answers] == [True, True, True, True, False, False, False]
    assert exists(root / "b/01/3/aside") and not exists(root / "b/01/3/data")
    assert exists(root / "b/00/5/data/x")
    assert open_fds() == fds
    fsbulkops.delete_in(folders, "aside", prefix)
    assert disk_files(root) == ["b/00/5/data/x"]
    assert sorted(os.listdir(root / "b/00")) == ["5"]  # the emptied folders went too
    assert open_fds() == fds


@pytest.mark.parametrize("relative", [False, True])
def test_a_bulk_call_in_folders_names_the_whole_path_that_failed(
    root: Path, monkeypatch: pytest.MonkeyPatch, relative: bool
) -> None:
    write_file(root / "b/00/1/aside/inside", b"a folder where the blob goes")
    write_file(root / "b/00/1/data", b"x")
    folder, prefix = ("b/00/1", f"{root}/") if relative else (str(root / "b/00/1"), "")
    with pytest.raises(OSError) as failed:
        fsbulkops.move_stale([folder], "data", "aside", time.time() + 60, False, prefix)
    assert failed.value.filename == str(root / "b/00/1/data")

    def refused(path: str, *, dir_fd: int | None = None) -> None:
        raise PermissionError(13, "Permission denied", path)  # root is never refused

    monkeypatch.setattr(os, "unlink", refused)
    with pytest.raises(OSError) as failed:
        fsbulkops.delete_in([folder], "data", prefix)
    assert failed.value.filename == str(root / "b/00/1/data")


async def test_a_bulk_call_apart_names_the_path_that_failed(
    root: Path, fs: FilesystemDriver
) -> None:
    write_file(root / "b" / "1" / "data", b"x")
    write_file(root / "a-file", b"not a folder")
    async with fs.bulk_apart():
        with pytest.raises(StorageError, match="a-file"):
            await fs.move_many([("b/1/data", "a-file/1/data")])
        # The helper answered: it serves on.
        assert [i is not None for i in await fs.stat_many(["b/1/data"])] == [True]


async def test_bulk_calls_go_on_in_threads_once_the_helpers_are_gone(
    root: Path, fs: FilesystemDriver
) -> None:
    for n in range(4):
        write_file(root / "b" / str(n) / "data", b"x")
    keys = [f"b/{n}/data" for n in range(4)]
    async with fs.bulk_apart():
        for pid in await ready_helpers(fs):
            os.kill(pid, 9)
        with pytest.raises(StorageError, match="helper process"):
            await fs.stat_many(keys * 600)  # two chunks: each helper's
        assert helper_pids(fs) == []
        assert [i is not None for i in await fs.stat_many(keys)] == [True] * 4
        await fs.delete_many(keys)
    assert disk_files(root) == []


async def test_a_bulk_block_begins_before_its_helpers_are_ready(
    root: Path, fs: FilesystemDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A collection's mark needs no helper: it begins as they start, and its first bulk
    # call waits for them.
    go = root / "go"
    slow = root / "slow_helper.py"
    write_file(
        slow,
        f"import os, runpy, time\nwhile not os.path.exists({str(go)!r}):\n    time.sleep(0.01)\n"
        f"runpy.run_path({fsbulkops.__file__!r}, run_name='__main__')\n".encode(),
    )
    monkeypatch.setattr(fsbulkops, "__file__", str(slow))
    write_file(root / "b" / "1" / "data", b"x")
    async with contextlib.AsyncExitStack() as block:
        try:
            await asyncio.wait_for(block.enter_async_context(fs.bulk_apart()), 5)
        finally:
            ready_to_go = len(helper_pids(fs)) == 2  # started, not ready: they wait for go
            go.touch()
        assert ready_to_go
        call = asyncio.ensure_future(fs.stat_many(["b/1/data"]))
        assert [i is not None for i in await call] == [True]
        assert len(helper_pids(fs)) == 2  # served by them, not by a thread


async def test_bulk_calls_stay_in_threads_where_no_helper_starts(
    root: Path, fs: FilesystemDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A helper that cannot read its file (a store owner's user, a Python for root alone).
    monkeypatch.setattr(fsbulkops, "__file__", str(root / "unreadable.py"))
    write_file(root / "b" / "1" / "data", b"x")
    async with fs.bulk_apart():
        assert [i is not None for i in await fs.stat_many(["b/1/data"])] == [True]
        assert helper_pids(fs) == []  # the call waited for them to fail, then took a thread


def process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rpartition(")")[2].split()[0]


def states_become(pids: list[int], wanted: set[str]) -> list[str]:
    """The processes' states once each is one of ``wanted`` (a signal takes a moment),
    or as they are after 5 s."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        states = [process_state(pid) for pid in pids]
        if set(states) <= wanted:
            break
        time.sleep(0.01)
    return states


async def test_bulk_helpers_rest_with_the_walks(root: Path, fs: FilesystemDriver) -> None:
    # A collection resting on a busy machine stops its walks and a bulk call under way.
    write_file(root / "b" / "1" / "data", b"x")
    async with fs.bulk_apart():
        pids = helper_pids(fs)
        with walks_stopped():
            assert states_become(pids, {"T"}) == ["T", "T"]
        assert "T" not in states_become(pids, {"S", "R"})
        assert [i is not None for i in await fs.stat_many(["b/1/data"])] == [True]


async def sent(fs: FilesystemDriver, count: int) -> list[int]:
    """How many calls each helper has been sent and not answered, once ``count`` are in
    all (or after 5 s)."""
    serving = fs._helpers
    assert serving is not None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        waiting = sorted(len(helper.waiting) for helper in serving._all)
        if sum(waiting) >= count:
            break
        await asyncio.sleep(0.01)
    return waiting


async def test_a_helper_is_sent_its_next_call_before_it_answers(
    root: Path, fs: FilesystemDriver
) -> None:
    # It starts the next chunk as it answers one, not after its answer went through the
    # caller and the next request came back: in a collection's deletes, a fifth of its time.
    write_file(root / "b" / "1" / "data", b"x")
    async with fs.bulk_apart():
        pids = await ready_helpers(fs)
        with walks_stopped():  # nothing is answered meanwhile
            assert states_become(pids, {"T"}) == ["T", "T"]
            calls = [asyncio.ensure_future(fs.stat_many(["b/1/data"])) for _ in range(5)]
            assert await sent(fs, 4) == [2, 2]  # the fifth waits for an answer
        found = await asyncio.gather(*calls)
    assert [[i is not None for i in infos] for infos in found] == [[True]] * 5


async def test_a_cancelled_bulk_call_leaves_its_helper_serving_in_step(
    root: Path, fs: FilesystemDriver
) -> None:
    # The helper still answers the cancelled call; that answer is dropped, the next
    # call gets its own.
    write_file(root / "b" / "1" / "data", b"x")
    async with fs.bulk_apart():
        pids = await ready_helpers(fs)
        with walks_stopped():
            assert states_become(pids, {"T"}) == ["T", "T"]
            cancelled = asyncio.ensure_future(fs.stat_many(["b/1/data", "b/2/data"]))
            assert await sent(fs, 1) == [0, 1]
            cancelled.cancel()
        for _ in range(4):  # each helper's next call, twice
            infos = await fs.stat_many(["b/2/data", "b/1/data"])
            assert [i is not None for i in infos] == [False, True]
        assert helper_pids(fs) == pids
    assert cancelled.cancelled()


async def test_a_walk_apart_takes_a_spare_started_ahead(root: Path, fs: FilesystemDriver) -> None:
    # A spare has started and imported the walk's module; told the walk, it walks as a
    # child started for it would, then waits for another walk. Spares end with the block.
    for n in range(3):
        write_file(root / "s" / f"t{n}" / "f", b"x" * n)
    wanted = [b async for b in fs.walk_local("s", names_and_reads, ("f",))]
    async with fs.bulk_apart():
        await fs.prepare_walks(names_and_reads, 2)
        assert fs._spares is not None
        spares = list(fs._spares._ready)
        assert len(spares) == 2
        walked = [b async for b in fs.walk_local("s", names_and_reads, ("f",), apart=True)]
        assert fs._spares._ready == spares  # the one that walked is a spare again
        assert spares[1].returncode is None
    assert walked == wanted
    assert [spare.returncode for spare in spares] == [-signal.SIGKILL] * 2
    assert fs._spares is None


def failing_walk(view: LocalView, prefix: str, args: tuple[str, ...]) -> Any:
    """A module-level local walk that fails in the child walking it."""
    raise RuntimeError(f"no walk of {prefix} today")


async def test_a_spare_walks_walk_after_walk_and_a_failed_one_says_what_failed(
    root: Path, fs: FilesystemDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One child walks a collection's mark and then its re-check (fswalk's END between
    # them): no child is started for the second walk. A walk that fails ends its child,
    # and the call says what failed, as a child's own walk's would.
    for n in range(3):
        write_file(root / "s" / f"t{n}" / "f", b"x" * n)
    first = [b async for b in fs.walk_local("s", names_and_reads, ("f",))]
    second = [b async for b in fs.walk_local("s", names_and_reads, ())]
    async with fs.bulk_apart():
        await fs.prepare_walks(names_and_reads, 1)
        assert fs._spares is not None
        (spare,) = fs._spares._ready
        started: list[list[str]] = []
        spawn = fschildren._spawn

        async def noted(argv: list[str], **kwargs: Any) -> fschildren.Child:
            started.append(argv)
            return await spawn(argv, **kwargs)

        monkeypatch.setattr(fschildren, "_spawn", noted)
        assert [b async for b in fs.walk_local("s", names_and_reads, ("f",), apart=True)] == first
        assert [b async for b in fs.walk_local("s", names_and_reads, (), apart=True)] == second
        assert started == [] and fs._spares._ready == [spare]
        failed = r"(?s)walking .* in a child process failed: .*no walk of s today"
        with pytest.raises(StorageError, match=failed):
            [b async for b in fs.walk_local("s", failing_walk, (), apart=True)]
        assert fs._spares._ready == []
        assert spare.returncode not in (None, 0)


async def test_walk_children_started_before_the_event_loop_are_its_spares(
    root: Path, fs: FilesystemDriver
) -> None:
    # `entrepot garbage-collect` starts them as it begins (earlywalks): the next bulk
    # block takes them as spares; told a walk, each walks as a child started for it would.
    for n in range(3):
        write_file(root / "s" / f"t{n}" / "f", b"x" * n)
    wanted = [b async for b in fs.walk_local("s", names_and_reads, ("f",))]
    earlywalks.start(3, names_and_reads.__module__)
    async with fs.bulk_apart():
        assert earlywalks.taken() == []  # the block took them
        assert fs._spares is not None
        spares = list(fs._spares._ready)
        assert [type(spare) for spare in spares] == [EarlyChild] * 3
        walks = [
            [b async for b in fs.walk_local("s", names_and_reads, ("f",), apart=True)]
            for _ in range(2)
        ]
        assert fs._spares._ready == spares  # each walked, and waits for another walk
    assert walks == [wanted, wanted]
    assert [spare.returncode for spare in spares] == [-signal.SIGKILL] * 3
    assert fs._spares is None


def test_walk_children_nothing_takes_end_with_their_stdin() -> None:
    # Object storage, a config error: the command ends, their stdin closes, they end.
    earlywalks.start(2, "entrepot.registry.gcwalk")
    children = earlywalks.taken()
    assert len(children) == 2 and earlywalks.taken() == []
    for child, told in children:
        assert told is None
        assert child.stdin is not None
        child.stdin.close()
        assert child.wait(timeout=30) == 0


def test_walk_children_are_named_for_what_they_are() -> None:
    # Forks of the command, each would show in ps -e and top as one more python: the
    # person looking at a busy machine sees "entrepot-walk".
    earlywalks.start(1, "entrepot.registry.gcwalk")
    ((child, _),) = earlywalks.taken()
    comm = Path(f"/proc/{child.pid}/comm")
    deadline = time.monotonic() + 30
    while comm.read_text() != f"{earlywalks.NAME}\n" and time.monotonic() < deadline:
        time.sleep(0.01)  # named as the child begins, after the fork
    named = comm.read_text()
    child.stdin.close()
    assert child.wait(timeout=30) == 0
    assert named == "entrepot-walk\n"


async def test_a_child_told_its_walk_early_walks_it_and_no_other(
    root: Path, fs: FilesystemDriver
) -> None:
    # A collection tells its first children their walks before its event loop runs
    # (registry.gchead): each such walk is read from the child walking it, one told a
    # walk nobody asks for walks nothing else and ends with the block.
    write_file(root / "s" / "t" / "f", b"x")
    wanted = [b async for b in fs.walk_local("s", names_and_reads, ("f",))]
    other = [b async for b in fs.walk_local("s", names_and_reads, ())]
    name = f"{names_and_reads.__module__}:{names_and_reads.__qualname__}"
    earlywalks.start(3, names_and_reads.__module__)
    assert not earlywalks.tell([local_argv(fs.rootdirectory, "s", name, (), None)] * 4)
    told = [local_argv(fs.rootdirectory, "s", name, args, None) for args in [("f",), ("g",)]]
    assert earlywalks.tell(told)
    async with fs.bulk_apart():
        assert fs._spares is not None
        spares = list(fs._spares._ready)
        assert [b async for b in fs.walk_local("s", names_and_reads, ("f",), apart=True)] == wanted
        # The child told that walk walked it, and is a spare for any walk now.
        assert fs._spares._ready == [*spares[1:], spares[0]]
        assert [b async for b in fs.walk_local("s", names_and_reads, (), apart=True)] == other
        assert fs._spares._walking == {spares[1].pid: told[1]}  # not taken for this one
    assert spares[1].returncode is not None  # ended with the block (walked, or killed)


async def test_walks_apart_start_their_own_once_the_spares_are_taken(
    root: Path, fs: FilesystemDriver
) -> None:
    write_file(root / "s" / "t" / "f", b"x")
    wanted = [b async for b in fs.walk_local("s", names_and_reads, ("f",))]
    async with fs.bulk_apart():
        await fs.prepare_walks(names_and_reads, 1)
        for _ in range(3):
            assert [b async for b in fs.walk_local("s", names_and_reads, ("f",), apart=True)] == (
                wanted
            )
