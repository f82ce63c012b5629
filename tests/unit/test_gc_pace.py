"""A collection steps aside while the machine serves: when other processes keep the CPUs
busy it works in short bursts and rests between them; on an idle machine, or one only it
keeps busy, it never rests; and a rested run deletes exactly what an unrested one does."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from starlette.testclient import TestClient

from entrepot import cli_gc, root
from entrepot.cli import main
from entrepot.config import load_config
from entrepot.registry import gcschedule
from entrepot.registry.gc import GarbageCollector, GcOptions, GcResult
from entrepot.registry.gcpace import Pacer, machine_busy_seconds, process_tree_cpu
from entrepot.registry.storecalls import BULK_SLICE, Limited
from entrepot.storage.filesystem import FilesystemDriver
from entrepot.storage.fschildren import walks_stopped
from tests.unit.test_gc import LATER, layer, manifest


class Machine:
    """A fake clock and CPU counters: ``others`` and ``own`` CPUs kept busy per second."""

    def __init__(self, others: float, own: float = 0.0, cpus: int = 2, tick: float = 0.0) -> None:
        self.now = 1000.0
        self.tick = tick  # the clock moves on this much at each reading
        self.others, self.own, self.cpus = others, own, cpus
        self.slept: list[float] = []

    def clock(self) -> float:
        self.now += self.tick
        return self.now

    def busy_seconds(self) -> float:
        return self.now * (self.others + self.own)

    def own_cpu(self) -> float:
        return self.now * self.own

    async def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 3))
        self.now += seconds

    def pacer(self, **kwargs: Any) -> Pacer:
        """A Pacer on this machine; ``kwargs`` add to or replace its readings."""
        readings: dict[str, Any] = {
            "busy_seconds": self.busy_seconds,
            "cpus": self.cpus,
            "clock": self.clock,
            "sleep": self.sleep,
        }
        return Pacer(self.own_cpu, **(readings | kwargs))

    async def work(self, pacer: Pacer, seconds: float, step: float = 0.01) -> None:
        """``seconds`` of work in ``step`` pieces, pacing before each."""
        until = self.now + seconds
        while self.now < until:
            await pacer.pace()
            self.now += step


async def test_on_a_busy_machine_it_works_in_bursts_and_rests_between() -> None:
    machine = Machine(others=1.8)
    pacer = machine.pacer(work=0.05, rest=0.15, sample=0.25)
    await machine.work(pacer, 2.0)
    assert pacer.busy
    # Busy from the first look (after 0.25 s of work), then 0.05 s bursts, 0.15 s rests.
    assert machine.slept and set(machine.slept) == {0.15}
    assert 7 <= len(machine.slept) <= 9
    assert pacer.rested == pytest.approx(0.15 * len(machine.slept))


async def test_on_an_idle_machine_it_never_rests() -> None:
    machine = Machine(others=0.1)
    pacer = machine.pacer()
    await machine.work(pacer, 5.0)
    assert not pacer.busy
    assert machine.slept == []


async def test_its_own_cpu_is_not_load() -> None:
    # The collection alone keeps both CPUs busy (walks in child processes, bulk threads).
    machine = Machine(others=0.0, own=2.0)
    pacer = machine.pacer()
    await machine.work(pacer, 5.0)
    assert machine.slept == []


async def test_it_works_at_full_speed_again_once_the_load_is_gone() -> None:
    machine = Machine(others=2.0)
    pacer = machine.pacer()
    await machine.work(pacer, 2.0)
    assert pacer.busy
    machine.others = 0.0
    await machine.work(pacer, 1.0)
    resting = len(machine.slept)
    await machine.work(pacer, 3.0)
    assert not pacer.busy
    assert len(machine.slept) == resting


async def test_without_a_reading_of_the_cpus_it_never_rests() -> None:
    machine = Machine(others=2.0)
    pacer = machine.pacer(busy_seconds=lambda: None)
    await machine.work(pacer, 3.0)
    assert machine.slept == []


class Worker:
    """A server worker's requests, as ``requestinfo.serving`` counts them."""

    def __init__(self) -> None:
        self.begun = self.in_flight = 0

    def served(self) -> tuple[int, int]:
        return self.begun, self.in_flight


async def test_a_worker_serving_requests_is_busy_though_the_cpus_say_idle() -> None:
    # One worker, its clients elsewhere: its serving is in its own CPU, the collection's.
    machine, worker = Machine(others=0.0, own=1.0), Worker()
    pacer = machine.pacer(served=worker.served)
    await machine.work(pacer, 1.0)
    assert machine.slept == []  # no request yet: full speed
    for _ in range(20):  # a request every 0.1 s
        worker.begun += 1
        await machine.work(pacer, 0.1)
    assert pacer.busy
    assert len(machine.slept) >= 5
    resting = len(machine.slept)
    await machine.work(pacer, 2.0)  # the requests stopped: full speed again
    assert not pacer.busy
    assert len(machine.slept) <= resting + 2


async def test_a_long_request_in_flight_keeps_the_worker_busy() -> None:
    machine, worker = Machine(others=0.0), Worker()
    pacer = machine.pacer(served=worker.served)
    worker.begun, worker.in_flight = 1, 1  # a large blob GET, begun before the run
    await machine.work(pacer, 2.0)
    assert pacer.busy
    assert len(machine.slept) >= 5


async def test_a_worker_is_busy_by_its_requests_where_the_cpus_cannot_be_read() -> None:
    machine, worker = Machine(others=0.0), Worker()
    pacer = machine.pacer(busy_seconds=lambda: None, served=worker.served)
    worker.in_flight = 1
    await machine.work(pacer, 2.0)
    assert len(machine.slept) >= 5


def test_the_servers_collection_rests_while_its_own_worker_serves(tmp_path: Path) -> None:
    (tmp_path / "config.yml").write_text(
        "version: 0.1\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp_path}/r\n"
        "garbagecollect:\n  interval: 1h\n"
    )
    config = load_config(tmp_path / "config.yml")
    collector = root.scheduled_collector(
        config, FilesystemDriver(tmp_path / "r"), CollectorRegistry()
    )
    assert collector is not None
    machine = Machine(others=0.0, own=1.0)
    pacer = collector.pacer(  # type: ignore[call-arg]
        machine.own_cpu, busy_seconds=machine.busy_seconds, clock=machine.clock, sleep=machine.sleep
    )

    async def work_while(pulls: int) -> None:
        for _ in range(10):
            for _ in range(pulls):
                assert client.get("/v2/").status_code == 200
            await machine.work(pacer, 0.1)

    with TestClient(root.create_app(config)) as client:
        asyncio.run(work_while(pulls=0))
        assert machine.slept == []
        asyncio.run(work_while(pulls=3))
        assert len(machine.slept) >= 3


async def test_tasks_that_come_while_it_rests_rest_too() -> None:
    machine = Machine(others=2.0)
    pacer = machine.pacer(work=0.0, rest=0.2, sample=0.0)
    sleeps: list[tuple[str, float]] = []
    events: list[asyncio.Event] = []

    async def sleep(seconds: float) -> None:  # each rest waits until released
        sleeps.append((asyncio.current_task().get_name(), seconds))  # type: ignore[union-attr]
        event = asyncio.Event()
        events.append(event)
        await event.wait()

    pacer._sleep = sleep
    await pacer.pace()  # first look: busy from now on
    machine.now += 0.01
    first = asyncio.create_task(pacer.pace(), name="first")
    await asyncio.sleep(0)
    machine.now += 0.05
    second = asyncio.create_task(pacer.pace(), name="second")
    await asyncio.sleep(0)
    assert [name for name, _ in sleeps] == ["first", "second"]
    assert sleeps[1][1] == pytest.approx(0.15)  # what is left of the first one's rest
    for event in events:
        event.set()
    await asyncio.gather(first, second)


def test_busy_seconds_are_read_for_the_cpus_it_may_run_on(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text(
        "cpu  900 0 900 900 0 0 0 0 0 0\n"
        "cpu0 100 10 200 5000 40 3 2 700 0 0\n"
        "cpu1 800 0 700 100 0 0 0 0 0 0\n"
        "intr 12345\n"
    )
    tick = os.sysconf("SC_CLK_TCK")
    # user nice system irq softirq, not idle, iowait or steal (the hypervisor running
    # another machine: no process here, and resting gives none of it back)
    assert machine_busy_seconds({0}, str(stat)) == pytest.approx(315 / tick)
    assert machine_busy_seconds({0, 1}, str(stat)) == pytest.approx(1815 / tick)
    assert machine_busy_seconds({7}, str(stat)) is None
    assert machine_busy_seconds({0}, str(tmp_path / "missing")) is None


def test_the_process_tree_counts_children_still_running() -> None:
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass\n"
    before = process_tree_cpu()
    child = subprocess.Popen([sys.executable, "-c", burn + "time.sleep(30)"])
    try:
        deadline = time.monotonic() + 20
        while process_tree_cpu() - before < 0.4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process_tree_cpu() - before >= 0.4
    finally:
        child.kill()
        child.wait()


async def test_bulk_calls_come_in_slices_with_a_pause_between(tmp_path: Path) -> None:
    driver = FilesystemDriver(tmp_path / "root")
    paused: list[int] = []
    calls: list[int] = []
    stat_many = driver.stat_many

    async def counted(keys: list[str]) -> list[object]:
        calls.append(len(keys))
        return await stat_many(keys)  # type: ignore[return-value]

    driver.stat_many = counted  # type: ignore[assignment,method-assign]

    async def pace() -> None:
        paused.append(len(calls))

    store = Limited(driver, 4, pace=pace)
    found = await store.stat_many([f"k/{n}" for n in range(2 * BULK_SLICE + 5)])
    assert found == [None] * (2 * BULK_SLICE + 5)
    assert calls == [BULK_SLICE, BULK_SLICE, 5]
    assert paused == [0, 1, 2]


async def test_a_rested_collection_deletes_what_an_unrested_one_does(tmp_path: Path) -> None:
    results: list[GcResult] = []
    for run in ("rested", "unrested"):
        driver = FilesystemDriver(tmp_path / run)
        kept = await layer(driver, "team/app", b"kept layer")
        await manifest(driver, "team/app", [kept], tag="v1")
        for n in range(5):
            await layer(driver, f"team/app{n}", f"stray {n}".encode())
        machine = Machine(others=2.0, tick=0.001)
        pacer = machine.pacer(work=0.0, rest=0.01, sample=0.0) if run == "rested" else None
        collector = GarbageCollector(
            driver, GcOptions(), emit=lambda _: None, clock=lambda: time.time() + LATER, pacer=pacer
        )
        results.append(await collector.run())
    rested, unrested = results
    assert rested.rested > 0
    assert "resting as the machine was busy" in rested.took
    assert unrested.rested == 0
    assert sorted(map(str, rested.blobs_deleted)) == sorted(map(str, unrested.blobs_deleted))
    assert len(rested.blobs_deleted) == 5
    assert rested.repositories_removed == unrested.repositories_removed


def test_rests_are_logged_and_counted() -> None:
    registry = CollectorRegistry()
    metrics = gcschedule.GcMetrics(registry)
    result = GcResult(seconds=4.0, rested=2.5)
    metrics.count(result)
    assert registry.get_sample_value("entrepot_gc_rested_seconds_total") == 2.5
    assert "in 4.0s, 2.5s of it resting as the machine was busy" in gcschedule.summary(result)
    assert "resting" not in GcResult(seconds=4.0).took


def test_the_command_and_the_schedule_collect_with_a_pacer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pacers: list[object] = []

    class Recording(GarbageCollector):
        async def run(self) -> GcResult:
            pacers.append(self.pacer)
            return await super().run()

    monkeypatch.setattr(cli_gc, "GarbageCollector", Recording)
    monkeypatch.setattr(gcschedule, "GarbageCollector", Recording)
    config = tmp_path / "config.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path}/r\n")
    (tmp_path / "r").mkdir()  # the store collected (a missing one is refused)
    assert main(["garbage-collect", str(config), "--grace", "0"]) == 0

    scheduled = gcschedule.ScheduledCollector(FilesystemDriver(tmp_path / "r"), 60.0, GcOptions())
    assert asyncio.run(scheduled.collect_if_due()) is not None

    assert len(pacers) == 2
    assert all(isinstance(p, Pacer) for p in pacers)
    command, _ = pacers
    assert command.during_rest is walks_stopped  # type: ignore[attr-defined]  # its walks rest too
