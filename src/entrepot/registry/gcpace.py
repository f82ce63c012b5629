"""A collection that steps aside while the machine serves: when other processes keep the
CPUs busy (a registry answering pulls), it works in short bursts and rests between them.

Nice 19 alone was not enough: each CPU second a collection took from a loaded two-CPU
machine cost pulls more than its share (its wake-ups, its cache misses, the kernel's
locks on the folders it walks), and pulls ran a fifth slower while it ran. Resting three
quarters of the time while others are busy makes it four times slower there, and leaves
an idle machine's collection at full speed.

Busy: in the last ``SAMPLE`` seconds, everything but the collection's process (and its
children) kept more than a quarter of the CPUs it may run on busy (/proc/stat), or, for a
server's scheduled collection, the worker it runs in served: its serving is in the
process's own CPU, which cannot be told from the collection's, so a worker that began a
request since the last look, or has one in flight, counts as busy (``served``: with one
worker and its clients on other machines the CPUs alone never said so). Where /proc/stat
cannot be read, only ``served`` makes a collection rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Collection
from contextlib import AbstractContextManager

__all__ = ["Pacer", "machine_busy_seconds", "process_tree_cpu"]

SAMPLE = 0.25  # seconds between looks at the machine's load
WORK = 0.05  # seconds of a burst while the machine is busy
REST = 0.15  # seconds of rest after each burst
BUSY_SHARE = 0.25  # of the CPUs, kept busy by others: the machine is busy
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _usable_cpus() -> set[int]:
    try:
        return os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def machine_busy_seconds(
    cpus: Collection[int] | None = None, stat: str = "/proc/stat"
) -> float | None:
    """CPU seconds that ``cpus`` (default: those this process may run on) have spent
    running this machine's work since boot (not idle, waiting on I/O or stolen by the
    hypervisor); None where unknown."""
    wanted = {f"cpu{n}".encode() for n in (_usable_cpus() if cpus is None else cpus)}
    total, seen = 0, False
    try:
        with open(stat, "rb") as f:
            for line in f:
                fields = line.split()
                if not fields or not fields[0].startswith(b"cpu"):
                    break  # the CPU lines come first
                if fields[0] in wanted:
                    # user nice system idle iowait irq softirq steal (guest is in user).
                    # Not steal: the hypervisor running another virtual machine (a third
                    # of a CPU at times on the bench machine, which made collections rest
                    # on an idle machine); resting gives none of it back.
                    user, nice, system, _, _, irq, softirq = (int(v) for v in fields[1:8])
                    total += user + nice + system + irq + softirq
                    seen = True
    except (OSError, ValueError):
        return None
    return total / _TICK if seen else None


def process_tree_cpu() -> float:
    """CPU seconds of this process (every thread), its children that ended, and those
    still running (the collection's walks run in child processes)."""
    times = os.times()
    total = times.user + times.system + times.children_user + times.children_system
    with contextlib.suppress(OSError):
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError):
                with open(f"/proc/self/task/{tid}/children", "rb") as f:
                    pids = f.read().split()
                for pid in pids:
                    total += _process_cpu(pid.decode())
    return total


def _process_cpu(pid: str) -> float:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:  # ended meanwhile: os.times counts it once reaped
        return 0.0
    # After the command's name, which is in parentheses and may hold anything.
    fields = raw[raw.rfind(b")") + 2 :].split()
    return sum(int(v) for v in fields[11:15]) / _TICK  # utime stime cutime cstime


class Pacer:
    """``await pace()`` between pieces of work: returns at once, or after a rest when the
    machine is busy and the current burst has run its ``work`` seconds."""

    def __init__(
        self,
        own_cpu: Callable[[], float] = process_tree_cpu,
        *,
        busy_seconds: Callable[[], float | None] = machine_busy_seconds,
        cpus: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        during_rest: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
        served: Callable[[], tuple[int, int]] | None = None,
        work: float = WORK,
        rest: float = REST,
        sample: float = SAMPLE,
    ) -> None:
        self._own_cpu, self._busy_seconds = own_cpu, busy_seconds
        self._cpus = cpus or len(_usable_cpus())
        self._clock, self._sleep = clock, sleep
        self.during_rest = during_rest  # e.g. the collection's walk processes stopped
        # (requests begun so far, requests in flight) by the process the collection runs in
        self.served = served
        self._work, self._rest, self._sample = work, rest, sample
        self.busy = False
        self.rested = 0.0  # seconds spent resting, for the summary line
        self._burst_began = clock()
        self._rest_until = 0.0
        self._last = self._reading()
        self._next_sample = self._burst_began + sample

    def _reading(self) -> tuple[float, float | None, float, int]:
        """(when, the CPUs' busy seconds or None, own CPU seconds, requests begun)."""
        begun = self.served()[0] if self.served is not None else 0
        return self._clock(), self._busy_seconds(), self._own_cpu(), begun

    def _look(self, now: float) -> None:
        """Whether the machine is busy, from what others used since the last look and
        what the collection's own process served."""
        self._next_sample = now + self._sample
        (t0, busy0, own0, begun0), reading = self._last, self._reading()
        t1, busy1, own1, begun1 = reading
        self._last = reading
        if t1 - t0 <= 0:
            return
        cpus_busy = False
        if busy0 is not None and busy1 is not None:
            others = max(0.0, (busy1 - busy0) - (own1 - own0)) / (t1 - t0)
            cpus_busy = others > self._cpus * BUSY_SHARE
        serving = self.served is not None and (begun1 != begun0 or self.served()[1] > 0)
        was_busy, self.busy = self.busy, cpus_busy or serving
        if self.busy and not was_busy:
            self._burst_began = now

    async def pace(self) -> None:
        now = self._clock()
        if now < self._rest_until:  # another task of the collection is resting: rest too
            await self._sleep(self._rest_until - now)
            return
        if now >= self._next_sample:
            self._look(now)
        if self.busy and now - self._burst_began >= self._work:
            self._rest_until = now + self._rest
            self._burst_began = self._rest_until
            self.rested += self._rest
            with self.during_rest():
                await self._sleep(self._rest)
