"""A collection yields the CPU and the disk to a server on the same machine: it runs at the
lowest priority (nice 19, I/O class idle), so pulls keep their rate while it runs and it
takes what serving leaves. On Linux both are a thread's, inherited by the threads and
processes it starts. ``entrepot garbage-collect`` run as a program lowers its main thread
before anything else (``lower_if_collecting``): its imports and config cost most of a
second of CPU, at the server's priority otherwise, on every run of a loop or a cron job;
called in-process (tests), only the collection's own thread is lowered (cli_gc).

Nothing heavy is imported here: it runs before the command's imports."""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Sequence

__all__ = ["IOPRIO_CLASS_IDLE", "LOW_NICE", "lower_if_collecting", "yield_to_serving"]

LOW_NICE = 19
IOPRIO_CLASS_IDLE = 3
_IOPRIO_SET = {"x86_64": 251, "aarch64": 30}  # ioprio_set(2): no wrapper in os
_IOPRIO_WHO_PROCESS = 1
_IOPRIO_CLASS_SHIFT = 13


def yield_to_serving() -> None:
    """Lower this thread's CPU and I/O priority to the least. Linux schedules each session
    as one group before the processes in it (autogroup, when no cgroup is set): a command
    leading a session of its own (started with setsid) lowers its group's too."""
    os.setpriority(os.PRIO_PROCESS, 0, LOW_NICE)
    number = _IOPRIO_SET.get(os.uname().machine)  # platform's import: 3 ms before the walks start
    if number is not None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall(number, _IOPRIO_WHO_PROCESS, 0, IOPRIO_CLASS_IDLE << _IOPRIO_CLASS_SHIFT)
    if os.getsid(0) == os.getpid():
        with contextlib.suppress(OSError), open("/proc/self/autogroup", "w") as group:
            group.write(str(LOW_NICE))


def lower_if_collecting(args: Sequence[str]) -> None:
    """For the program's arguments: lower the whole process now if it is to collect."""
    if args[:1] == ["garbage-collect"]:
        yield_to_serving()
