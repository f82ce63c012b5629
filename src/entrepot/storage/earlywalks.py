"""Walk children started as ``entrepot garbage-collect`` begins, before its imports, each
waiting for a walk's arguments. A disk's driver takes them as its first spare walk
children (fschildren.WalkSpares.adopt); where nothing takes them (object storage, a
config error), they end with the command (their stdin closes).

They are forks of the command, made once it has imported the walk's module: a child
starts with the interpreter and the modules it needs, where one started as a program of
its own spent 60 ms of a CPU on its start and the same imports as the command's (in 20
interleaved runs on the bench store: a median 1.73 s and 2.95 CPU-s against 1.84 s and
3.16 CPU-s). Imports nothing that loads asyncio: the program forks before its threads
and its event loop exist.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import os
import signal
import time

from entrepot.storage.fswalk import WAIT, main, told_message

# What walk children started as programs run (fschildren's later spares): fswalk's main,
# by ``-c`` (``-m``'s runpy and importlib.util were 8 ms of a child's start).
WALKER = "entrepot.storage.fswalk"
RUN_WALKER = f"import sys; from {WALKER} import main; main(sys.argv[1:])"


class WalkChild:
    """A forked walk child, read as subprocess.Popen's: its pipes as file objects, its
    exit status once waited for (negative: the signal that ended it)."""

    def __init__(self, pid: int, stdin: int, stdout: int, stderr: int) -> None:
        self.pid = pid
        self.stdin = os.fdopen(stdin, "wb")
        self.stdout = os.fdopen(stdout, "rb")
        self.stderr = os.fdopen(stderr, "rb")
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None:
            if self.returncode is None:
                self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
            return self.returncode
        deadline = time.monotonic() + timeout
        while (code := self.poll()) is None:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"walk child {self.pid} still runs")
            time.sleep(0.01)
        return code

    def kill(self) -> None:
        if self.returncode is None:  # not waited for: its pid is still its own
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


# What a forked child is called in ps -e and top (15 characters at most).
NAME = "entrepot-walk"

_started: list[WalkChild] = []
# What each was told to walk (tell), by pid.
_told: dict[int, list[str]] = {}


def start(count: int, preload: str) -> None:
    """``count`` walk children, each with the module ``preload`` imported, waiting."""
    importlib.import_module(preload)  # once, here: the children have it as they begin
    for _ in range(count):
        _started.append(_fork(preload))


def _fork(preload: str) -> WalkChild:
    theirs_in, stdin = map(_above_stdio, os.pipe())
    stdout, theirs_out = map(_above_stdio, os.pipe())
    stderr, theirs_err = map(_above_stdio, os.pipe())
    pid = os.fork()
    if pid == 0:  # the child: it never returns to the caller's code
        status = 1
        try:
            for fd, onto in ((theirs_in, 0), (theirs_out, 1), (theirs_err, 2)):
                os.dup2(fd, onto)
            # Not every descriptor above 2: one an object of the caller's holds could be
            # reused here, then closed as that object is freed. The pipes' other ends
            # (the caller's, of this child and of those forked before it) only, so that
            # each child sees the end of its stdin; their objects are never freed here.
            theirs = [theirs_in, theirs_out, theirs_err, stdin, stdout, stderr]
            for other in _started:
                theirs += [f.fileno() for f in (other.stdin, other.stdout, other.stderr)]
            for fd in theirs:
                os.close(fd)
            with contextlib.suppress(ValueError):  # an event loop's: the caller's, not this
                signal.set_wakeup_fd(-1)
            _name_self(NAME)
            main([WAIT, preload])
            status = 0
        except BaseException as e:  # noqa: BLE001 - said on stderr, as a program would
            os.write(2, f"walk child failed: {e!r}\n".encode())
        finally:
            os._exit(status)
    for fd in (theirs_in, theirs_out, theirs_err):
        os.close(fd)
    return WalkChild(pid, stdin, stdout, stderr)


def _name_self(name: str) -> None:
    """The process's name as ps -e and top show it (its command line stays the command's):
    a fork of the command would show as one more ``python``."""
    with contextlib.suppress(OSError), open("/proc/self/comm", "w") as comm:
        comm.write(name)


def _above_stdio(fd: int) -> int:
    """``fd``, moved above 0-2 where it is one of them (the program began with that one
    closed): the child makes 0-2 its pipes' ends, then closes the originals."""
    if fd > 2:
        return fd
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, 3)
    os.close(fd)
    return moved


def tell(argvs: list[list[str]]) -> bool:
    """Begin a walk in each of the first children ``start`` started, one per argv (see
    fswalk's WAIT); False, telling none, where there are fewer children than walks."""
    if len(argvs) > len(_started):
        return False
    for child, argv in zip(_started, argvs, strict=False):
        child.stdin.write(told_message(argv))
        child.stdin.flush()  # a walk's argv fits the pipe: this does not wait
        _told[child.pid] = argv
    return True


def taken() -> list[tuple[WalkChild, list[str] | None]]:
    """The children ``start`` started that nothing took yet, now the caller's, each with
    the walk it was told (None: waiting for one)."""
    found = [(child, _told.pop(child.pid, None)) for child in _started]
    _started.clear()
    return found
