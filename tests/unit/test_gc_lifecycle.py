"""Retention rules, the collection lease, a crashed collection's quarantine put back, pull
records and the scheduled collection, on a store written through the driver (see
test_gc: the collector's clock runs two hours ahead)."""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import pytest
from prometheus_client import CollectorRegistry

from entrepot import cli_gc
from entrepot.cli import main
from entrepot.oci.digest import Digest
from entrepot.registry import layout
from entrepot.registry.gc import QUARANTINE, GcOptions, GcResult
from entrepot.registry.gcschedule import GcMetrics, ScheduledCollector, summary
from entrepot.registry.lease import GC_LEASE, GC_LEASE_TTL
from entrepot.registry.pullcompact import compact_once
from entrepot.registry.pulls import BATCHES, PullRecorder, load_times
from entrepot.registry.quarantine import JOURNAL
from entrepot.registry.retention import RetentionRule
from entrepot.storage import Lease, LeaseLost, StorageError
from entrepot.storage.driver import Aside, Moved
from entrepot.storage.filesystem import FilesystemDriver
from tests.unit.test_gc import LATER, collect, exists, layer, manifest

HOUR = 3600.0


@pytest.fixture
def driver(tmp_path: Path) -> FilesystemDriver:
    return FilesystemDriver(tmp_path / "root")


def pushed_hours_ago(driver: FilesystemDriver, name: str, tag: str, hours: float) -> None:
    then = time.time() - hours * HOUR
    os.utime(driver.local_path(layout.tag_current_link(name, tag)), (then, then))


async def image(driver: FilesystemDriver, name: str, tag: str, hours: float) -> Digest:
    """A one-layer image tagged ``tag``, pushed ``hours`` ago."""
    digest = await manifest(
        driver, name, [await layer(driver, name, f"{name}:{tag}".encode())], tag=tag
    )
    pushed_hours_ago(driver, name, tag, hours)
    return digest


async def pulled_at(
    driver: FilesystemDriver, when: float, name: str, digest: Digest, tag: str
) -> None:
    """A pull of ``name:tag`` at ``when``, recorded as a server does."""
    recorder = PullRecorder(driver, clock=lambda: when)
    recorder.record(name, digest, tag)
    await recorder.flush()


async def tags(driver: FilesystemDriver, name: str) -> list[str]:
    try:
        return sorted(await driver.list(layout.tags_dir(name)))
    except StorageError:
        return []


# ---- retention rules -------------------------------------------------------------------


async def test_keep_latest_deletes_older_tags_and_what_only_they_held(
    driver: FilesystemDriver,
) -> None:
    name = "team/app"
    digests = {
        tag: await image(driver, name, tag, hours)
        for tag, hours in (("v1", 9), ("v2", 8), ("v3", 7), ("v4", 6), ("stable", 10))
    }
    rules = (RetentionRule(repositories=("team/*",), tags=("v*",), keep_latest=2),)

    planned = await collect(driver, rules=rules, dry_run=True)
    assert planned.tags_eligible == [(name, "v1"), (name, "v2")]
    assert {d for _, d in planned.manifests_eligible} == {digests["v1"], digests["v2"]}
    assert await tags(driver, name) == ["stable", "v1", "v2", "v3", "v4"]  # dry run

    result = await collect(driver, rules=rules)
    assert result.tags_deleted == [(name, "v1"), (name, "v2")]
    assert await tags(driver, name) == ["stable", "v3", "v4"]
    assert set(result.manifests_deleted) == {(name, digests["v1"]), (name, digests["v2"])}
    for tag in ("v1", "v2"):
        assert not await exists(driver, layout.blob_data(digests[tag]))
    for tag in ("v3", "v4", "stable"):
        assert await exists(driver, layout.blob_data(digests[tag]))


async def test_a_tag_pulled_recently_is_kept_and_rules_add_up(driver: FilesystemDriver) -> None:
    name = "team/app"
    digests = {
        tag: await image(driver, name, tag, h) for tag, h in (("v1", 9), ("v2", 8), ("v3", 7))
    }
    now = time.time() + LATER
    for tag, pulled in (("v1", now - HOUR), ("v2", now - 30 * HOUR)):
        await pulled_at(driver, pulled, name, digests[tag], tag)
    rules = (
        RetentionRule(repositories=("team/app",), keep_latest=1, keep_pulled_within=24 * HOUR),
        RetentionRule(repositories=("other/*",), keep_latest=0),  # not this repository
    )
    result = await collect(driver, rules=rules)
    assert result.tags_deleted == [(name, "v2")]
    assert await tags(driver, name) == ["v1", "v3"]
    await compact_once(driver)  # the deleted tag's entry goes
    assert (await load_times(driver)).by_tag == {(name, "v1"): now - HOUR}


async def test_a_digest_a_kept_tag_points_to_stays_whole(driver: FilesystemDriver) -> None:
    name = "team/multi"
    child = await manifest(driver, name, [await layer(driver, name, b"child layer")])
    index = await manifest(driver, name, [], children=[child], tag="old")
    pushed_hours_ago(driver, name, "old", 9)
    await driver.put_content(layout.tag_current_link(name, "new"), str(index).encode())
    signature = await manifest(driver, name, [await layer(driver, name, b"sig")], subject=index)
    rules = (RetentionRule(repositories=("*",), keep_latest=1, untagged_older_than=HOUR),)

    result = await collect(driver, rules=rules)

    assert result.tags_deleted == [(name, "old")]
    assert result.manifests_deleted == []
    for digest in (index, child, signature):
        assert await exists(driver, layout.manifest_revision_link(name, digest))


async def test_untagged_manifests_go_from_the_rules_age(driver: FilesystemDriver) -> None:
    name = "team/app"
    old = await manifest(driver, name, [await layer(driver, name, b"old untagged")])
    young = await manifest(driver, name, [await layer(driver, name, b"young untagged")])
    then = time.time() - 5 * HOUR
    os.utime(driver.local_path(layout.manifest_revision_link(name, old)), (then, then))
    rules = (RetentionRule(repositories=("team/*",), untagged_older_than=3 * HOUR),)
    result = await collect(driver, rules=rules)
    assert result.manifests_deleted == [(name, old)]
    assert await exists(driver, layout.manifest_revision_link(name, young))
    assert result.tags_deleted == []


async def test_a_tag_pushed_within_the_grace_window_is_never_deleted(
    driver: FilesystemDriver,
) -> None:
    name = "team/app"
    await image(driver, name, "v1", 9)
    await image(driver, name, "v2", 0)  # written now: fresh with a grace of 3 hours
    rules = (RetentionRule(repositories=("*",), keep_latest=0),)
    lines: list[str] = []
    result = await collect(driver, lines, rules=rules, grace=3 * HOUR)
    assert result.tags_deleted == [(name, "v1")]
    assert await tags(driver, name) == ["v2"]
    assert lines[-1].startswith(  # a dry run would say why v2 is not listed
        "kept as written or linked within the grace window (the last 10800s, --grace): 1 tags, "
    )


# ---- a crashed collection ----------------------------------------------------------------


class CrashingSweep(FilesystemDriver):
    """Stops (as a crash would) once one blob was moved aside."""

    async def move_many(self, moves: Sequence[tuple[str, str]], *, sync: bool = True) -> Moved:
        assert all(dst.endswith(f"/{QUARANTINE}") for _, dst in moves)
        await super().move_many(moves[:1], sync=sync)
        raise RuntimeError("crash")

    async def move_stale_in(
        self,
        folders: Sequence[str],
        src: str,
        dst: str,
        older_than: float,
        *,
        sync: bool = True,
    ) -> Aside:
        assert dst == QUARANTINE
        await super().move_stale_in(folders[:1], src, dst, older_than, sync=sync)
        raise RuntimeError("crash")


async def test_blobs_a_crashed_collection_left_aside_are_put_back(tmp_path: Path) -> None:
    crashing = CrashingSweep(tmp_path / "root")
    strays = [await layer(crashing, "team/app", f"stray {i}".encode()) for i in range(2)]
    with pytest.raises(RuntimeError):
        await collect(crashing)
    aside = [d for d in strays if await exists(crashing, f"{layout.blob_dir(d)}/{QUARANTINE}")]
    assert len(aside) == 1 and await exists(crashing, JOURNAL)
    # Meanwhile a push references the blob that was left aside: it must come back.
    driver = FilesystemDriver(tmp_path / "root")
    kept = await manifest(driver, "team/app", [aside[0]], tag="v1")

    result = await collect(driver)

    assert result.blobs_recovered == 1
    assert not await exists(driver, JOURNAL)
    assert await exists(driver, layout.blob_data(aside[0]))
    assert not await exists(driver, f"{layout.blob_dir(aside[0])}/{QUARANTINE}")
    assert set(result.blobs_deleted) == set(strays) - set(aside)
    assert await exists(driver, layout.blob_data(kept))


async def test_a_server_puts_them_back_at_start(tmp_path: Path) -> None:
    crashing = CrashingSweep(tmp_path / "root")
    strays = [await layer(crashing, "team/app", f"stray {i}".encode()) for i in range(2)]
    with pytest.raises(RuntimeError):
        await collect(crashing)
    driver = FilesystemDriver(tmp_path / "root")
    server = ScheduledCollector(driver, 600.0, GcOptions())
    assert await server.recover() == 1
    for digest in strays:
        assert await exists(driver, layout.blob_data(digest))
        assert not await exists(driver, f"{layout.blob_dir(digest)}/{QUARANTINE}")
    assert not await exists(driver, JOURNAL)


async def test_a_quarantine_without_journal_is_put_back_too(driver: FilesystemDriver) -> None:
    # An upload under way (its layer link is fresh) whose blob an older version left aside.
    digest = await layer(driver, "team/app", b"left aside by an older version")
    await driver.move(layout.blob_data(digest), f"{layout.blob_dir(digest)}/{QUARANTINE}")
    result = await collect(driver, grace=3 * HOUR)
    assert result.blobs_recovered == 1
    assert await exists(driver, layout.blob_data(digest))


# ---- the lease -----------------------------------------------------------------------------


async def test_a_scheduled_collection_skips_while_another_holds_the_lease(
    driver: FilesystemDriver,
) -> None:
    stray = await layer(driver, "team/app", b"stray")
    worker = ScheduledCollector(driver, 600.0, GcOptions(), None, lambda: time.time() + LATER)
    command = await driver.try_lease(GC_LEASE, ttl=GC_LEASE_TTL)  # garbage-collect runs
    assert command is not None
    assert await worker.collect_if_due() is None
    assert await exists(driver, layout.blob_data(stray))
    await command.release()
    done = await worker.collect_if_due()
    assert done is not None and set(done.blobs_deleted) == {stray}


class LapsingLease(Lease):
    """A lease whose renewal finds, at once, that another holder took it over."""

    token = "lapsing"
    ttl = GC_LEASE_TTL

    def __init__(self) -> None:
        self.released = False

    async def renew(self) -> None:
        raise LeaseLost("taken over")

    async def release(self) -> None:
        self.released = True

    async def wait_lost(self) -> None:
        return None


class LapsingLeaseDriver(FilesystemDriver):
    async def try_lease(self, key: str, *, ttl: float = 30.0, scope: str = "store") -> Lease:
        self.lease = LapsingLease()
        return self.lease


async def test_a_scheduled_collection_whose_lease_lapses_stops_and_deletes_nothing(
    tmp_path: Path,
) -> None:
    driver = LapsingLeaseDriver(tmp_path / "root")
    stray = await layer(driver, "team/app", b"stray")
    registry = CollectorRegistry()
    worker = ScheduledCollector(
        driver, 600.0, GcOptions(), GcMetrics(registry), lambda: time.time() + LATER
    )
    assert await worker.collect_if_due() is None
    assert await exists(driver, layout.blob_data(stray))
    assert registry.get_sample_value("entrepot_gc_runs_total", {"outcome": "lost"}) == 1
    assert driver.lease.released


# ---- pull records and the schedule ----------------------------------------------------------


async def test_pulls_by_tag_are_written_in_batches(driver: FilesystemDriver) -> None:
    recorder = PullRecorder(driver, clock=lambda: 1234.5)
    digest = Digest.of(b"m")
    for _ in range(100):
        recorder.record("team/app", digest, "v1")
    recorder.record("team/app/nested", digest, "v1")
    assert not await exists(driver, BATCHES)  # nothing written yet
    await recorder.flush()
    await recorder.flush()  # nothing new: nothing written
    assert len(await driver.list(BATCHES)) == 1
    times = await load_times(driver)
    assert times.by_tag == {("team/app", "v1"): 1234.5, ("team/app/nested", "v1"): 1234.5}


async def test_one_worker_collects_per_interval_and_counts_it(driver: FilesystemDriver) -> None:
    stray = await layer(driver, "team/app", b"stray")
    registry = CollectorRegistry()
    metrics = GcMetrics(registry)
    clock = lambda: time.time() + LATER  # noqa: E731
    workers = [
        ScheduledCollector(driver, 600.0, GcOptions(), metrics if i == 0 else None, clock)
        for i in range(2)
    ]
    first = await workers[0].collect_if_due()
    assert first is not None and set(first.blobs_deleted) == {stray}
    assert await workers[1].collect_if_due() is None  # ran within the interval
    assert registry.get_sample_value("entrepot_gc_runs_total", {"outcome": "done"}) == 1
    assert registry.get_sample_value("entrepot_gc_deleted_total", {"kind": "blob"}) == 1
    assert registry.get_sample_value("entrepot_gc_freed_bytes_total") == len(b"stray")
    assert "deleted 1 blobs (5 bytes)" in summary(first)


async def test_a_scheduled_run_names_the_tags_its_rules_deleted(
    driver: FilesystemDriver, caplog: pytest.LogCaptureFixture
) -> None:
    for tag, hours in (("v1", 9), ("v2", 8), ("v3", 7)):
        await image(driver, "team/app", tag, hours)
    rules = (RetentionRule(repositories=("team/*",), keep_latest=1),)
    scheduled = ScheduledCollector(driver, 600.0, GcOptions(rules=rules), clock=time.time)
    with caplog.at_level("INFO", logger="entrepot.gc"):
        assert await scheduled.collect_if_due() is not None
    assert "garbage collection: retention rules deleted tags of team/app: v1, v2" in [
        r.getMessage() for r in caplog.records
    ]


def test_the_summary_line_of_a_dry_run_says_what_would_go() -> None:
    result = GcResult(blobs_eligible={Digest.of(b"x"): 1}, tags_eligible=[("a", "v1")])
    line = summary(result, dry_run=True)
    assert "would delete 1 blobs (1 bytes), 0 manifests, 1 tags" in line


class Writes(io.StringIO):
    """A stdout that records what each flush sends."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[str] = []

    def flush(self) -> None:
        self.sent.append(self.getvalue()[sum(map(len, self.sent)) :])


def test_the_command_lists_in_blocks_and_says_the_rest_at_once(
    driver: FilesystemDriver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What it lists goes out in one write (not one per line); each count or progress line
    # goes out when it is said.
    for n in range(5):
        path = tmp_path / "root" / layout.blob_data(Digest.of(b"%d" % n))
        path.parent.mkdir(parents=True)
        path.write_bytes(b"%d" % n)
    config = tmp_path / "config.yml"
    config.write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path}/root\n"
    )
    out = Writes()
    monkeypatch.setattr(sys, "stdout", out)

    assert main(["garbage-collect", str(config), "--grace", "0"]) == 0

    listings = [sent for sent in out.sent if "blob eligible" in sent]
    assert len(listings) == 1  # (a slow run may say a progress line before)
    assert listings[0].count("blob eligible for deletion: ") == 5
    assert all(line.startswith("blob eligible") for line in listings[0].splitlines())
    assert out.sent[-1].splitlines()[-1].startswith("deleted 5 blobs")
    assert "".join(out.sent) == out.getvalue()  # nothing left unsaid


def test_the_command_ends_holding_what_its_collection_built(
    driver: FilesystemDriver, tmp_path: Path
) -> None:
    # The program ends with os._exit (entrepot.__main__): what the collection built is
    # never freed object by object, as it was when the run, then the collector, returned.
    path = tmp_path / "root" / layout.blob_data(Digest.of(b"stray"))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"stray")
    config = tmp_path / "config.yml"
    config.write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path}/root\n"
    )
    assert main(["garbage-collect", str(config), "--grace", "0"]) == 0
    (collector,) = cli_gc._ending
    scans, blobs, *_ = collector.built
    assert scans == {} and list(cast("dict[Digest, object]", blobs)) == [Digest.of(b"stray")]
