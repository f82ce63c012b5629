"""`entrepot garbage-collect` yields the CPU and the disk to serving: the collection runs at
nice 19 and in the idle I/O class (the loop's thread and the threads it starts), while the
caller's thread keeps its priority; and SIGTERM stops it cleanly, as Ctrl-C does."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import platform
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from entrepot import cli_gc
from entrepot.cli import main
from entrepot.lowpriority import IOPRIO_CLASS_IDLE
from entrepot.registry.gc import GarbageCollector, GcResult
from entrepot.registry.lease import GC_LEASE, GC_LEASE_TTL
from entrepot.storage.filesystem import FilesystemDriver

_IOPRIO_GET = {"x86_64": 252, "aarch64": 31}


def priority() -> tuple[int, int | None]:
    """This thread's nice value and I/O class (None where ioprio_get is not known)."""
    number = _IOPRIO_GET.get(platform.machine())
    io_class = None
    if number is not None:
        libc = ctypes.CDLL(None, use_errno=True)
        io_class = libc.syscall(number, 1, 0) >> 13  # IOPRIO_WHO_PROCESS, this thread
    return os.getpriority(os.PRIO_PROCESS, 0), io_class


def store_config(tmp_path: Path) -> Path:
    """A config naming an empty store in ``tmp_path`` (a missing one is refused)."""
    config = tmp_path / "config.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path}/r\n")
    (tmp_path / "r").mkdir()
    return config


def inside_each_run(monkeypatch: pytest.MonkeyPatch, hook: Callable[[], Awaitable[None]]) -> None:
    """The command's collector awaits ``hook`` inside its run, before it collects."""

    class Hooked(GarbageCollector):
        async def run(self) -> GcResult:
            await hook()
            return await super().run()

    monkeypatch.setattr(cli_gc, "GarbageCollector", Hooked)


def test_the_command_collects_without_the_cyclic_garbage_collector(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A large store's objects all live to the end of the run: walking them again and again
    # was a quarter of the command's CPU. The caller gets it back afterwards.
    seen: list[bool] = []

    async def record() -> None:
        seen.append(gc.isenabled())

    inside_each_run(monkeypatch, record)
    config = store_config(tmp_path)
    assert gc.isenabled()

    assert main(["garbage-collect", str(config), "--grace", "0"]) == 0

    assert seen == [False]
    assert gc.isenabled()


def test_what_the_command_made_is_not_walked_as_young_objects_afterwards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Made while the cyclic collector was off, a run's objects would all be in the youngest
    # generation, walked by the first collection once it is back on: a large store's run
    # paid a tenth of a second for that on its way out.
    made: list[object] = []

    async def make() -> None:
        made.extend([n] for n in range(20_000))

    inside_each_run(monkeypatch, make)
    config = store_config(tmp_path)

    assert main(["garbage-collect", str(config), "--grace", "0"]) == 0

    assert gc.isenabled()
    assert gc.get_count()[0] < 10_000
    oldest = {id(o) for o in gc.get_objects(generation=2)}
    assert all(id(o) in oldest for o in made[::1000])


def test_a_disks_collection_runs_on_asyncios_own_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # It starts seven child processes (its walks and bulk helpers): asyncio's loop starts
    # each with vfork, where uvloop forked the whole collector (~16 ms each from a large one).
    loops: list[str] = []

    async def record() -> None:
        loops.append(type(asyncio.get_running_loop()).__module__)

    inside_each_run(monkeypatch, record)

    assert main(["garbage-collect", str(store_config(tmp_path)), "--grace", "0"]) == 0

    assert loops == ["asyncio.unix_events"]

    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    # The other commands' work (the cache's) keeps uvloop: many small storage calls.
    assert cli_gc._run_async(loop_module()).startswith("uvloop")


def test_the_collection_runs_at_the_lowest_priority(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: dict[str, tuple[int, int | None]] = {}

    async def record() -> None:
        seen["loop"] = priority()
        seen["worker"] = await asyncio.get_running_loop().run_in_executor(None, priority)

    inside_each_run(monkeypatch, record)
    config = store_config(tmp_path)
    caller = priority()

    assert main(["garbage-collect", str(config), "--grace", "0"]) == 0

    assert "deleted 0 blobs" in capsys.readouterr().out
    idle = IOPRIO_CLASS_IDLE if caller[1] is not None else None
    assert seen == {"loop": (19, idle), "worker": (19, idle)}
    assert priority() == caller  # the caller's thread is not lowered


def test_sigterm_stops_the_collection_and_frees_its_lease(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class Stalled(GarbageCollector):
        async def run(self) -> GcResult:
            os.kill(os.getpid(), signal.SIGTERM)  # as `kill` or systemd would, mid-run
            await asyncio.sleep(60)
            raise AssertionError("the collection was not stopped")

    monkeypatch.setattr(cli_gc, "GarbageCollector", Stalled)
    config = store_config(tmp_path)
    handler = signal.getsignal(signal.SIGTERM)

    assert main(["garbage-collect", str(config), "--grace", "0"]) == 130

    assert "garbage collection interrupted" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is handler

    async def lease_is_free() -> bool:
        driver = FilesystemDriver(tmp_path / "r")
        try:
            lease = await driver.try_lease(GC_LEASE, ttl=GC_LEASE_TTL)
            if lease is not None:
                await lease.release()
            return lease is not None
        finally:
            await driver.close()

    assert asyncio.run(lease_is_free())


@pytest.mark.parametrize(("command", "nice"), [("garbage-collect", 19), ("serve", 0)])
def test_the_program_lowers_itself_before_its_imports_only_to_collect(
    command: str, nice: int
) -> None:
    # What `entrepot garbage-collect` (the program) does first: imports and config cost
    # most of a second of CPU, which must not run at the server's priority.
    probe = (
        "import os, sys\n"
        "from entrepot.lowpriority import lower_if_collecting\n"
        f"lower_if_collecting([{command!r}, 'config.yml'])\n"
        "print(os.getpriority(os.PRIO_PROCESS, 0), 'entrepot.cli' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == [str(max(nice, os.getpriority(os.PRIO_PROCESS, 0))), "False"]
