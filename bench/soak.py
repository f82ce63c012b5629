"""The soak: many clients for minutes through an Entrepot with several workers, in front of
a registry:2 upstream; then a table and a verdict (exit status 1 when a criterion fails).

    python -m bench.soak [--clients 64] [--duration 600] [--warmup 60] [--workers 2] [--faults]

Criteria: zero failed requests, every pulled blob verified, each worker's RSS after the
warm-up grows by less than ``--rss-growth`` (10%), open file descriptors flat (the median
of the last samples within 10% + 8 of the median just after the warm-up), and the store
consistent afterwards (bench/soakcheck.py). A short run of it is
tests/e2e/test_soak_short.py.

With ``--faults``, a worker is killed with SIGKILL at 30% of the run, the upstream is
stopped at 60% and started again 10 s later, and the store's disk is filled at 80% and
freed 10 s later (as root: the store is then a loop-mounted ext4 filesystem of its own,
bench/diskfull.py; otherwise that fault is skipped and the report says so). Requests may
then fail, but only inside those windows (plus 15 s) and only as the spec's error answers,
or (while the worker dies or the upstream is down) as a connection cut; the memory
criteria judge the workers that lived throughout, and the store must be consistent after.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from tests.e2e.servers import ManagedServer, entrepot_server, registry2_server

from bench.diskfull import LoopDisk, fill
from bench.servers import process_rss, process_tree
from bench.soakcheck import check_layout
from bench.soakload import (
    MOVING_TAGS,
    UPSTREAM_HOST,
    Client,
    Failure,
    Registry,
    Shared,
    Stats,
    make_image,
    publish_one,
    publish_upstream,
)


@dataclass
class Options:
    clients: int = 64
    duration: float = 600.0
    warmup: float = 60.0
    workers: int = 2
    rss_growth: float = 0.10
    max_layer: int = 256 * 1024
    publish_every: float = 2.0
    faults: bool = False
    workdir: Path | None = None


FAULT_GRACE = 15.0  # seconds after a fault during which its errors are excused
DISK_SIZE = 16 << 30  # the loop filesystem of the disk-full fault (a sparse image)


@dataclass
class FaultWindow:
    name: str
    begin: float  # time.monotonic()
    end: float
    transport_ok: bool  # connections may be cut (a dying worker), not just error answers

    def excuses(self, failure: Failure) -> bool:
        if not self.begin <= failure.at <= self.end + FAULT_GRACE:
            return False
        return failure.kind == "spec" or (failure.kind == "transport" and self.transport_ok)


@dataclass
class Sample:
    at: float  # seconds since the load started
    rss: dict[int, int]  # worker pid -> bytes
    fds: int  # open descriptors, all processes summed


@dataclass
class Monitor:
    """Samples every worker's RSS and the tree's open descriptors once a second."""

    pid: int
    began: float = field(default_factory=time.monotonic)
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def sample(self) -> Sample:
        tree = process_tree(self.pid)
        rss = {p: process_rss(p) for p in tree if p != self.pid}
        fds = sum(_fd_count(p) for p in tree)
        return Sample(time.monotonic() - self.began, rss, fds)

    def run(self) -> None:
        while not self._stop.wait(1.0):
            self.samples.append(self.sample())

    @contextmanager
    def running(self) -> Iterator[Monitor]:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()


def _fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


@dataclass
class Verdict:
    name: str
    ok: bool
    detail: str


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def unexcused(stats: Stats, windows: list[FaultWindow]) -> list[Failure]:
    """Failures no fault explains. Our own publisher's pushes to a stopped upstream are
    the fault itself."""
    return [
        f
        for f in stats.errors
        if not any(w.excuses(f) for w in windows)
        and not (f.op == "upstream_publish" and any(w.name == "upstream" for w in windows))
    ]


def judge(
    stats: Stats,
    samples: list[Sample],
    options: Options,
    windows: list[FaultWindow],
    layout_problems: list[str],
) -> list[Verdict]:
    failures = len(unexcused(stats, windows))
    excused = len(stats.errors) - failures
    during = f" ({excused} during faults: spec errors or cut connections)" if excused else ""
    verdicts = [
        Verdict("zero failed requests", failures == 0, f"{failures} failed{during}"),
        Verdict(
            "store consistent afterwards",
            not layout_problems,
            f"{len(layout_problems)} problem(s)"
            + "".join(f"\n    {p}" for p in layout_problems[:10]),
        ),
        Verdict(
            "every pulled blob verified",
            stats.blobs_pulled == stats.blobs_verified and stats.blobs_pulled > 0,
            f"{stats.blobs_verified}/{stats.blobs_pulled}",
        ),
    ]
    after = [s for s in samples if s.at >= options.warmup]
    window = max(5, len(after) // 10)
    if len(after) < 2 * window:
        verdicts.append(Verdict("RSS and descriptors sampled", False, "run too short to judge"))
        return verdicts
    head, tail = after[:window], after[-window:]
    lived = set(head[0].rss).intersection(*(s.rss for s in head + tail))
    for pid in sorted(lived):
        start = _median([s.rss.get(pid, 0) for s in head])
        end = _median([s.rss.get(pid, 0) for s in tail])
        growth = end / start - 1 if start else float("inf")
        verdicts.append(
            Verdict(
                f"worker {pid} RSS growth < {options.rss_growth:.0%}",
                growth < options.rss_growth,
                f"{start / 2**20:.1f} -> {end / 2**20:.1f} MiB ({growth:+.1%})",
            )
        )
    fd_start = _median([float(s.fds) for s in head])
    fd_end = _median([float(s.fds) for s in tail])
    verdicts.append(
        Verdict(
            "open descriptors flat",
            fd_end <= fd_start * 1.1 + 8,
            f"{fd_start:.0f} -> {fd_end:.0f}",
        )
    )
    return verdicts


def report(
    stats: Stats,
    samples: list[Sample],
    verdicts: list[Verdict],
    seconds: float,
    windows: list[FaultWindow],
    began: float,
) -> str:
    lines = [f"{'workflow':<18}{'done':>8}{'failed':>8}{'requests':>10}{'p50 ms':>9}{'p99 ms':>9}"]
    for op in sorted(set(stats.requests) | set(stats.failures)):
        lat = sorted(stats.latencies.get(op, []))
        p50 = lat[len(lat) // 2] * 1000 if lat else 0.0
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else 0.0
        lines.append(
            f"{op:<18}{stats.workflows[op]:>8}{stats.failures[op]:>8}"
            f"{stats.requests[op]:>10}{p50:>9.1f}{p99:>9.1f}"
        )
    total = sum(stats.requests.values())
    lines.append(
        f"{total} requests in {seconds:.0f} s ({total / max(seconds, 1e-9):.0f}/s), "
        f"{stats.blobs_verified} blobs verified ({stats.bytes_pulled / 2**20:.0f} MiB)"
    )
    step = max(1, len(samples) // 12)
    lines.append(f"RSS (MiB) per worker and open descriptors, every {step} s:")
    for s in [*samples[::step], *samples[-1:]]:
        rss = " ".join(f"{v / 2**20:6.1f}" for _, v in sorted(s.rss.items()))
        lines.append(f"  t={s.at:5.0f}s  {rss}  fds={s.fds}")
    for w in windows:
        lines.append(f"fault: {w.name} from t={w.begin - began:.0f}s to t={w.end - began:.0f}s")
    failed = unexcused(stats, windows)
    for f in failed[:20]:
        lines.append(f"failed at t={f.at - began:.0f}s: {f.op}: {f.message}")
    for f in [f for f in stats.errors if f not in failed][:10]:
        lines.append(f"during a fault, t={f.at - began:.0f}s ({f.kind}): {f.op}: {f.message}")
    for v in verdicts:
        lines.append(f"{'PASS' if v.ok else 'FAIL'}  {v.name}: {v.detail}")
    return "\n".join(lines)


@dataclass
class Soak:
    """The servers and the run; ``start`` then ``run``, ``stop`` always."""

    options: Options
    base: Path
    upstream: ManagedServer | None = None
    entrepot: ManagedServer | None = None
    windows: list[FaultWindow] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    disk: LoopDisk | None = None
    began: float = 0.0

    def start(self) -> None:
        if self.options.faults:
            if LoopDisk.possible():
                self.disk = LoopDisk(self.base / "disk.img", self.base / "root", DISK_SIZE)
                self.disk.__enter__()
            else:
                self.skipped.append("disk full (a loop-mounted filesystem needs root)")
        self.upstream = registry2_server(self.base / "up-root", self.base / "up").start()
        proxies = [{"host": UPSTREAM_HOST, "remoteurl": self.upstream.url}]
        self.entrepot = entrepot_server(
            self.base / "root",
            self.base / "entrepot",
            config={"proxies": proxies, "log": {"level": "warn"}},
            env={"ENTREPOT_WORKERS": str(self.options.workers)},
        ).start()

    def stop(self) -> None:
        for server in (self.entrepot, self.upstream):
            if server is not None:
                server.stop()

    def release_disk(self) -> None:
        if self.disk is not None:
            self.disk.__exit__(None, None, None)

    async def _seed(self, entrepot: Registry, upstream: Registry) -> Shared:
        rng = random.Random(0)
        stable = []
        for n in range(6):
            image, contents = make_image(rng, 2, self.options.max_layer)
            for repo in ("soak/stable", "soak/moving"):
                await entrepot.push_image("seed", repo, f"s{n}", image, contents, chunked=False)
            stable.append(image)
        moving = {tag: {i.digest for i in stable} for tag in MOVING_TAGS}
        for tag, image in zip(MOVING_TAGS, stable, strict=False):
            await entrepot.put_manifest("seed", "soak/moving", tag, image)
        shared = Shared(stable, moving)
        for _ in range(4):
            await publish_one(upstream, shared, rng)
        if not shared.upstream:
            raise RuntimeError(f"could not seed the upstream: {upstream.stats.errors}")
        return shared

    async def _inject_faults(self) -> None:
        """SIGKILL one worker at 30% of the run; stop the upstream at 60%, for 10 s; fill
        the store's disk at 80%, for 10 s."""
        assert self.entrepot is not None and self.upstream is not None
        assert self.entrepot.pid is not None
        duration = self.options.duration
        await asyncio.sleep(0.3 * duration)
        workers = [p for p in process_tree(self.entrepot.pid) if p != self.entrepot.pid]
        killed = time.monotonic()
        os.kill(workers[0], signal.SIGKILL)
        self.windows.append(FaultWindow("worker killed", killed, killed, transport_ok=True))
        await asyncio.sleep(0.3 * duration)
        stopped = time.monotonic()
        await asyncio.to_thread(self.upstream.stop)
        await asyncio.sleep(10)
        await asyncio.to_thread(self.upstream.start)
        # Connections to the stopped upstream are cut too (our publisher's, and fills).
        self.windows.append(FaultWindow("upstream", stopped, time.monotonic(), transport_ok=True))
        if self.disk is not None:
            await asyncio.sleep(max(0.0, 0.8 * duration - (time.monotonic() - self.began)))
            filled = time.monotonic()
            ballast = await asyncio.to_thread(fill, self.disk.mountpoint)
            await asyncio.sleep(10)
            ballast.unlink()
            # A full disk answers 503: no connection may be cut for it.
            self.windows.append(FaultWindow("disk full", filled, time.monotonic(), False))

    async def run(self) -> tuple[Stats, list[Sample], float]:
        assert self.entrepot is not None and self.upstream is not None
        assert self.entrepot.pid is not None
        stats, seed_stats = Stats(), Stats()
        limits = httpx.Limits(max_connections=self.options.clients + 8)
        timeout = httpx.Timeout(120.0)
        async with (
            httpx.AsyncClient(base_url=self.entrepot.url, limits=limits, timeout=timeout) as http,
            httpx.AsyncClient(base_url=self.upstream.url, timeout=timeout) as up,
        ):
            shared = await self._seed(Registry(http, seed_stats), Registry(up, seed_stats))
            if seed_stats.failures:
                raise RuntimeError(f"seeding failed: {seed_stats.errors}")
            registry = Registry(http, stats)
            clients = [
                Client(n, registry, shared, self.options.max_layer)
                for n in range(self.options.clients)
            ]
            monitor = Monitor(self.entrepot.pid)
            deadline = time.monotonic() + self.options.duration
            faults = [self._inject_faults()] if self.options.faults else []
            with monitor.running():
                self.began = began = time.monotonic()
                await asyncio.gather(
                    publish_upstream(up, shared, stats, deadline, self.options.publish_every),
                    *(c.run(deadline) for c in clients),
                    *faults,
                )
                seconds = time.monotonic() - began
        return stats, monitor.samples, seconds


def soak(options: Options) -> tuple[bool, str]:
    """Run the soak; (all criteria met, the report)."""
    with tempfile.TemporaryDirectory(prefix="entrepot-soak-", dir=options.workdir) as tmp:
        run = Soak(options, Path(tmp))
        try:
            try:
                run.start()
                stats, samples, seconds = asyncio.run(run.run())
            finally:
                run.stop()
            layout_problems, _ = check_layout(Path(tmp) / "root", (f"{UPSTREAM_HOST}/",))
            server_errors = _error_lines(run.entrepot.log() if run.entrepot else "")
        finally:
            run.release_disk()
    verdicts = judge(stats, samples, options, run.windows, layout_problems)
    text = report(stats, samples, verdicts, seconds, run.windows, run.began)
    text += "".join(f"\nfault skipped: {what}" for what in run.skipped)
    if server_errors and not all(v.ok for v in verdicts):
        text += "\nEntrepot's log without the access log (last 40 lines):\n"
        text += "\n".join(server_errors[-40:])
    return all(v.ok for v in verdicts), text


def _error_lines(log: str) -> list[str]:
    """The server log without its access log: warnings, errors, tracebacks."""
    return [line for line in log.splitlines() if line and not line.startswith("127.0.0.1 - ")]


def main(argv: list[str] | None = None) -> int:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--clients", type=int, default=int(env("SOAK_CLIENTS", "64")))
    parser.add_argument("--duration", type=float, default=float(env("SOAK_DURATION", "600")))
    parser.add_argument("--warmup", type=float, default=float(env("SOAK_WARMUP", "60")))
    parser.add_argument("--workers", type=int, default=int(env("SOAK_WORKERS", "2")))
    parser.add_argument("--rss-growth", type=float, default=0.10)
    parser.add_argument(
        "--faults", action="store_true", help="kill a worker, stop the upstream, fill the disk"
    )
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    options = Options(
        clients=args.clients,
        duration=args.duration,
        warmup=args.warmup,
        workers=args.workers,
        rss_growth=args.rss_growth,
        faults=args.faults,
        workdir=args.workdir,
    )
    print(
        f"soak: {options.clients} clients, {options.duration:.0f} s, {options.workers} workers",
        flush=True,
    )
    ok, text = soak(options)
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
