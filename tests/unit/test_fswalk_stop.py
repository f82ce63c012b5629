"""A walking process (entrepot.storage.fswalk) stopped and continued (SIGSTOP then SIGCONT:
Ctrl-Z then fg, a pause) while it waits on a full pipe sends every object still: the
interrupted write returns part way and the rest follows."""

from __future__ import annotations

import array
import fcntl
import marshal
import os
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path

from entrepot.storage.fschildren import _walkers, walk_apart, walks_stopped
from entrepot.storage.fswalk import BATCH, PIPE_SIZE

_LENGTH = struct.Struct("<I")
FILES = 6000  # one batch of well over a walk's pipe (PIPE_SIZE: 1 MiB where Linux allows)
LONG = "a-file-with-a-rather-long-name-to-fill-the-pipe-" * 4


def pipe_is_full(fd: int) -> bool:
    """Whether the pipe read through ``fd`` holds all it can: its writer, writing more
    in one call, is inside that write."""
    waiting = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, waiting)
    return waiting[0] >= fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)


def test_a_walk_stopped_while_it_writes_sends_every_object(tmp_path: Path) -> None:
    assert FILES < BATCH  # one message: a write cut short cannot end on a boundary
    assert FILES * len(LONG) > PIPE_SIZE
    for n in range(FILES):
        (tmp_path / f"{LONG}{n:05d}").touch()
    walker = subprocess.Popen(
        [sys.executable, "-m", "entrepot.storage.fswalk", str(tmp_path), "-", "-"],
        stdout=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        assert walker.stdout is not None
        while not pipe_is_full(walker.stdout.fileno()):  # nothing read yet: it fills
            assert time.monotonic() < deadline, "the walker never filled its pipe"
            time.sleep(0.05)
        os.kill(walker.pid, signal.SIGSTOP)
        os.kill(walker.pid, signal.SIGCONT)
        keys = []
        while header := walker.stdout.read(_LENGTH.size):
            body = walker.stdout.read(_LENGTH.unpack(header)[0])
            keys += [row[0] for row in marshal.loads(body)]
        assert walker.wait(timeout=60) == 0
    finally:
        walker.kill()
        walker.wait()
    assert len(keys) == FILES


def process_state(pid: int) -> str:
    """R, S, T (stopped)...: the state letter in /proc/PID/stat."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rfind(")") + 2]


def settles_at(pid: int, wanted: Callable[[str], bool]) -> bool:
    """Whether the process's state is soon ``wanted`` (a signal arrives asynchronously)."""
    deadline = time.monotonic() + 10
    while not wanted(process_state(pid)):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


async def test_a_resting_collection_stops_its_walks_and_continues_them(tmp_path: Path) -> None:
    for n in range(3 * BATCH):  # batches enough that the walk is still running after one
        (tmp_path / f"f{n:06d}").touch()
    walk = walk_apart(str(tmp_path), "-")
    keys = [info.key for info in await anext(walk)]
    (walker,) = _walkers
    with walks_stopped():
        assert settles_at(walker.pid, lambda state: state == "T")
    assert settles_at(walker.pid, lambda state: state != "T")
    async for batch in walk:
        keys += [info.key for info in batch]
    assert len(keys) == 3 * BATCH
    assert not _walkers  # ended: forgotten, and never signalled again


def test_a_walk_child_starts_without_asyncio() -> None:
    # A collection starts five walk children: the event loop's modules were most of
    # each one's start-up, and they need none of it, nor dataclasses, ctypes, shutil or
    # runpy (-m's): 80 ms -> 40 ms each. The package's names still resolve, the
    # contract's on first use.
    code = """
import sys
import entrepot.storage.fswalk, entrepot.registry.gcwalk
heavy = ("asyncio", "entrepot.storage.driver", "dataclasses", "ctypes", "shutil", "runpy")
print(sorted(m for m in heavy if m in sys.modules))
from entrepot.storage import StorageDriver
print(StorageDriver.__module__, "asyncio" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split("\n")[:2] == ["[]", "entrepot.storage.driver True"]
