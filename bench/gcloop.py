"""Pulls while a collection runs, measured fairly: ``entrepot garbage-collect`` in a loop
that the bench pauses and resumes, and idle and busy windows in turn.

One idle window then one busy window gave ratios from 0.65 to 1.13 at one commit: a
drift of the machine over the row weighed on one side only. Here each row alternates
idle and busy windows in pairs (idle-busy, busy-idle, ...: a drift weighs on both alike),
and the ratio is taken from the sums. Between busy windows the collector's processes are
stopped (SIGSTOP: no CPU, no I/O), not killed: the busy windows together cover one
stretch of the loop, every phase of a collection in its share, where restarting it for
each window would measure its start-up again and again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.loadgen import LoadResult
from bench.servers import cpu_seconds


class CollectorLoop:
    """``argv`` run again and again, each run in a session of its own (as the server: Linux
    schedules sessions as groups first, and the command, leading its session, lowers its
    group's priority as well as its own), from the first ``resume()`` until ``close()``;
    ``pause()`` stops the run under way and every process it started."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], errors: Path) -> None:
        self._argv, self._env, self._errors = list(argv), env, errors
        self._lock = threading.Lock()  # the run, its reaping and the CPU counted so far
        self._go = threading.Event()  # set while resumed
        self._closing = False
        self._run: subprocess.Popen[bytes] | None = None
        self._cpu_ended = 0.0  # the finished runs' CPU, their children's included
        self.finished = 0  # runs that ended on their own
        self._failure: str | None = None
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            self._go.wait()
            with self._lock:
                if self._closing:
                    return
                if not self._go.is_set():  # paused meanwhile
                    continue
                try:
                    with self._errors.open("wb") as err:
                        run = subprocess.Popen(
                            self._argv,
                            env=self._env,
                            stdout=subprocess.DEVNULL,
                            stderr=err,
                            start_new_session=True,
                        )
                except OSError as e:
                    self._failure = f"garbage-collect could not start: {e}"
                    return
                self._run = run
            # Wait without reaping: the run's processes stay readable in /proc until the
            # reaping below adds their CPU to _cpu_ended, under the lock.
            os.waitid(os.P_PID, run.pid, os.WEXITED | os.WNOWAIT)
            with self._lock:
                _, status, usage = os.wait4(run.pid, 0)  # the run and what it waited for
                run.returncode = os.waitstatus_to_exitcode(status)
                self._cpu_ended += usage.ru_utime + usage.ru_stime
                self._run = None
                if self._closing:
                    return
                if run.returncode != 0:
                    tail = self._errors.read_bytes()[-2000:].decode(errors="replace")
                    self._failure = f"garbage-collect failed ({run.returncode}): {tail}"
                    return
                self.finished += 1

    def _signal(self, signum: int) -> None:
        if self._run is not None:
            with contextlib.suppress(ProcessLookupError):  # ended, not yet reaped
                os.killpg(self._run.pid, signum)

    def resume(self) -> None:
        self._check()
        with self._lock:
            self._go.set()
            self._signal(signal.SIGCONT)

    def pause(self) -> None:
        with self._lock:
            self._go.clear()
            self._signal(signal.SIGSTOP)

    def cpu_seconds(self) -> float:
        """CPU seconds (user + system) of every run so far, with their child processes."""
        self._check()
        with self._lock:
            if self._run is None:
                return self._cpu_ended
            # A child reaped while /proc is read is missed or counted twice: read until
            # two readings agree (the processes run meanwhile, a few ms at most).
            reading = cpu_seconds(self._run.pid, ended=True)
            for _ in range(5):
                previous, reading = reading, cpu_seconds(self._run.pid, ended=True)
                if abs(reading - previous) < 0.05:
                    break
            return self._cpu_ended + reading

    def close(self) -> None:
        """Stop the run under way (SIGTERM: it releases the lease) and the loop."""
        with self._lock:
            self._closing = True
            if self._run is not None:
                self._run.terminate()
            self._signal(signal.SIGCONT)
            self._go.set()
        self._thread.join()
        self._check()

    def _check(self) -> None:
        if self._failure is not None:
            raise RuntimeError(self._failure)


def window_order(pairs: int) -> list[bool]:
    """Whether each window is busy: idle-busy, busy-idle, idle-busy, ..."""
    order: list[bool] = []
    for n in range(pairs):
        order += [False, True] if n % 2 == 0 else [True, False]
    return order


@dataclass
class Window:
    busy: bool
    load: LoadResult
    collector_cpu: float  # CPU seconds the collector used during the window
    loadavg: float = 0.0  # the machine's, at the window's end


def paired_rows(windows: Sequence[Window], cpus: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The idle row and the busy row of windows taken in pairs (``window_order``): each
    side's request rate from its sums, the busy/idle ratio of each pair and their median,
    and the collector's CPU over the busy windows' time and ``cpus`` (its share of the
    CPUs the server and it run on)."""

    def rate(side: Sequence[Window]) -> float:
        seconds = sum(w.load.seconds for w in side)
        return sum(w.load.requests for w in side) / seconds if seconds else 0.0

    ratios = []
    for n in range(0, len(windows) - 1, 2):
        pair = windows[n : n + 2]
        alone = rate([w for w in pair if not w.busy])
        ratios.append(rate([w for w in pair if w.busy]) / alone if alone else 0.0)
    rows: list[dict[str, Any]] = []
    for side in ([w for w in windows if not w.busy], [w for w in windows if w.busy]):
        row: dict[str, Any] = {
            "value": rate(side),
            "windows": [w.load.as_dict() for w in side],
            "loadavg": [round(w.loadavg, 2) for w in side],
        }
        errors = sum(w.load.errors for w in side)
        if errors:
            row["errors"] = errors
        rows.append(row)
    rows[1]["pair_ratios"] = [round(r, 3) for r in ratios]
    rows[1]["median_ratio"] = statistics.median(ratios) if ratios else 0.0
    collector = collector_share(windows, cpus)
    rows[1]["collector_cpu_seconds"] = collector["cpu_seconds"]
    rows[1]["collector_cpu_share"] = collector["value"]
    return rows[0], rows[1]


def collector_share(windows: Sequence[Window], cpus: int) -> dict[str, Any]:
    """The collector's CPU seconds in the busy ``windows`` / their seconds / ``cpus``."""
    busy = [w for w in windows if w.busy]
    seconds = sum(w.load.seconds for w in busy)
    cpu = sum(w.collector_cpu for w in busy)
    share = cpu / seconds / cpus if seconds else 0.0
    return {"value": share, "cpu_seconds": cpu, "window_seconds": seconds, "cpus": cpus}
