"""A walking process (entrepot.storage.fswalk) stopped and continued (SIGSTOP then SIGCONT:
Ctrl-Z then fg, a pause) while it waits on a full pipe sends every object still: the
interrupted write returns part way and the rest follows."""

from __future__ import annotations

import marshal
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

from entrepot.storage.fswalk import BATCH

_LENGTH = struct.Struct("<I")
FILES = 3000  # one batch of well over a pipe's 64 KiB


def blocked_on_its_pipe(pid: int) -> bool:
    """Whether ``pid`` sleeps in a write to a full pipe (its wait channel says so)."""
    with open(f"/proc/{pid}/wchan") as wchan:
        return "pipe" in wchan.read()


def test_a_walk_stopped_while_it_writes_sends_every_object(tmp_path: Path) -> None:
    assert FILES < BATCH  # one message: a write cut short cannot end on a boundary
    for n in range(FILES):
        (tmp_path / f"a-file-with-a-rather-long-name-to-fill-the-pipe-{n:05d}").touch()
    walker = subprocess.Popen(
        [sys.executable, "-m", "entrepot.storage.fswalk", str(tmp_path), "-"],
        stdout=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not blocked_on_its_pipe(walker.pid):  # nothing read yet: the pipe fills
            assert time.monotonic() < deadline, "the walker never filled its pipe"
            time.sleep(0.05)
        os.kill(walker.pid, signal.SIGSTOP)
        os.kill(walker.pid, signal.SIGCONT)
        assert walker.stdout is not None
        keys = []
        while header := walker.stdout.read(_LENGTH.size):
            body = walker.stdout.read(_LENGTH.unpack(header)[0])
            keys += [row[0] for row in marshal.loads(body)]
        assert walker.wait(timeout=60) == 0
    finally:
        walker.kill()
        walker.wait()
    assert len(keys) == FILES
