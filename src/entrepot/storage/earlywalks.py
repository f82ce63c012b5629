"""Walk children started as ``entrepot garbage-collect`` begins, before its imports: each
imports its walk's module (fswalk's WAIT) on the CPU the command's own imports leave
idle, and waits for a walk's arguments. A disk's driver takes them as its first spare
walk children (fschildren.WalkSpares.adopt); where nothing takes them (object storage, a
config error), they end with the command (their stdin closes). Imports nothing that
loads asyncio: it runs before the command's imports.
"""

from __future__ import annotations

import subprocess
import sys

from entrepot.storage.fswalk import WAIT, told_message

# What walk children run: fswalk's main, by ``-c`` (``-m``'s runpy and importlib.util
# were 8 ms of a child's start).
WALKER = "entrepot.storage.fswalk"
RUN_WALKER = f"import sys; from {WALKER} import main; main(sys.argv[1:])"

_started: list[subprocess.Popen[bytes]] = []
# What each was told to walk (tell), by pid.
_told: dict[int, list[str]] = {}


def start(count: int, preload: str) -> None:
    """``count`` walk children, each with the module ``preload`` imported, waiting."""
    for _ in range(count):
        _started.append(
            subprocess.Popen(
                [sys.executable, "-c", RUN_WALKER, WAIT, preload],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )


def tell(argvs: list[list[str]]) -> bool:
    """Begin a walk in each of the first children ``start`` started, one per argv (see
    fswalk's WAIT); False, telling none, where there are fewer children than walks."""
    if len(argvs) > len(_started):
        return False
    for child, argv in zip(_started, argvs, strict=False):
        assert child.stdin is not None
        child.stdin.write(told_message(argv))
        child.stdin.flush()  # a walk's argv fits the pipe: this does not wait
        _told[child.pid] = argv
    return True


def taken() -> list[tuple[subprocess.Popen[bytes], list[str] | None]]:
    """The children ``start`` started that nothing took yet, now the caller's, each with
    the walk it was told (None: waiting for one)."""
    found = [(child, _told.pop(child.pid, None)) for child in _started]
    _started.clear()
    return found
