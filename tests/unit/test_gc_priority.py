"""`entrepot garbage-collect` yields the CPU and the disk to serving: the collection runs at
nice 19 and in the idle I/O class (the loop's thread and the threads it starts), while the
caller's thread keeps its priority."""

from __future__ import annotations

import asyncio
import ctypes
import os
import platform
from pathlib import Path

import pytest

from entrepot import cli_gc
from entrepot.cli import main
from entrepot.registry.gc import GarbageCollector, GcResult

_IOPRIO_GET = {"x86_64": 252, "aarch64": 31}


def priority() -> tuple[int, int | None]:
    """This thread's nice value and I/O class (None where ioprio_get is not known)."""
    number = _IOPRIO_GET.get(platform.machine())
    io_class = None
    if number is not None:
        libc = ctypes.CDLL(None, use_errno=True)
        io_class = libc.syscall(number, 1, 0) >> 13  # IOPRIO_WHO_PROCESS, this thread
    return os.getpriority(os.PRIO_PROCESS, 0), io_class


def test_the_collection_runs_at_the_lowest_priority(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: dict[str, tuple[int, int | None]] = {}

    class Recording(GarbageCollector):
        async def run(self) -> GcResult:
            seen["loop"] = priority()
            seen["worker"] = await asyncio.get_running_loop().run_in_executor(None, priority)
            return await super().run()

    monkeypatch.setattr(cli_gc, "GarbageCollector", Recording)
    config = tmp_path / "config.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path}/r\n")
    caller = priority()

    assert main(["garbage-collect", str(config), "--grace", "0"]) == 0

    assert "deleted 0 blobs" in capsys.readouterr().out
    idle = cli_gc.IOPRIO_CLASS_IDLE if caller[1] is not None else None
    assert seen == {"loop": (19, idle), "worker": (19, idle)}
    assert priority() == caller  # the caller's thread is not lowered
