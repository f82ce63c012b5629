"""The one pull record (registry/pulls.py, registry/pullcompact.py): pulls recorded in
memory, written by each worker in batches, read per side (cache: by digest; retention: by
tag), folded into the merged record by one compaction at a time, pruned of what is gone,
and the two older recorders' records read and folded in after an upgrade."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from entrepot.oci.digest import Digest
from entrepot.registry import layout
from entrepot.registry.pullcompact import LEASE, LEASE_TTL, compact, compact_once
from entrepot.registry.pulls import (
    BATCHES,
    LEGACY_IMAGE_PULLS,
    LEGACY_TAG_PULLS,
    MERGED,
    PullRecorder,
    load_record,
    load_times,
)
from entrepot.storage import Lease, LeaseLost
from entrepot.storage.filesystem import FilesystemDriver
from tests.unit.test_gc import collect, exists, layer, manifest


@pytest.fixture
def driver(tmp_path: Path) -> FilesystemDriver:
    return FilesystemDriver(tmp_path / "root")


async def image(driver: FilesystemDriver, name: str, tag: str | None) -> Digest:
    return await manifest(
        driver, name, [await layer(driver, name, f"{name}:{tag}".encode())], tag=tag
    )


async def batches(driver: FilesystemDriver) -> list[str]:
    return [key async for batch in driver.walk(BATCHES) for key in batch]


async def test_one_pull_is_read_by_digest_and_by_tag(driver: FilesystemDriver) -> None:
    clock = iter([100.0, 200.0, 300.0])
    recorder = PullRecorder(driver, clock=lambda: next(clock))
    app, child = Digest.of(b"app"), Digest.of(b"child")
    recorder.record("team/app", app, "v1")  # a pull by tag
    recorder.record("team/app", child)  # an index child pulled by digest
    recorder.record("team/app", app, "latest")  # the same image by another tag
    await recorder.flush()

    times = await load_times(driver)

    assert times.by_digest == {("team/app", str(app)): 300.0, ("team/app", str(child)): 200.0}
    assert times.by_tag == {("team/app", "v1"): 100.0, ("team/app", "latest"): 300.0}


async def test_workers_write_batches_and_compaction_folds_them(driver: FilesystemDriver) -> None:
    name = "team/app"
    digest = await image(driver, name, "v1")
    workers = [PullRecorder(driver, clock=lambda: 50.0), PullRecorder(driver, clock=lambda: 60.0)]
    for recorder in workers:
        recorder.record(name, digest, "v1")
        await recorder.flush()
    assert len(await batches(driver)) == 2
    before = await load_times(driver)
    assert before.by_tag == {(name, "v1"): 60.0}  # the later of the two workers'

    done = await compact_once(driver)

    assert done is not None and (done.entries, done.dropped, done.merged) == (1, 0, 2)
    assert await batches(driver) == []  # folded in, then deleted
    assert json.loads(await driver.get_content(MERGED)) == {
        "pulls": [[name, "v1", str(digest), 60.0]]
    }
    assert await load_times(driver) == before
    workers[0].record(name, digest, "v1")  # a newer batch counts on top of the merged record
    await workers[0].flush()
    assert (await load_times(driver)).by_tag == {(name, "v1"): 60.0}  # 50 < 60: older loses
    assert len((await load_record(driver)).read) == 1


async def test_one_compaction_at_a_time(driver: FilesystemDriver) -> None:
    recorder = PullRecorder(driver)
    recorder.record("team/app", await image(driver, "team/app", "v1"), "v1")
    await recorder.flush()
    other = await driver.try_lease(LEASE, ttl=LEASE_TTL)
    assert other is not None  # another worker is compacting

    assert await compact_once(driver) is None
    assert len(await batches(driver)) == 1 and not await exists(driver, MERGED)

    await other.release()
    assert await compact_once(driver) is not None
    assert await batches(driver) == []


class TakenOver(Lease):
    """A lease whose holder stalled past its time limit while another worker took it over
    (storage leases that expire: tests/storage/test_leases.py)."""

    token, ttl = "stalled", LEASE_TTL

    async def renew(self) -> None:
        raise LeaseLost("taken over")

    async def release(self) -> None:
        pass


async def test_a_compaction_that_lost_its_lease_writes_nothing(driver: FilesystemDriver) -> None:
    recorder = PullRecorder(driver)
    recorder.record("team/app", await image(driver, "team/app", "v1"), "v1")
    await recorder.flush()
    with pytest.raises(LeaseLost):
        await compact(driver, TakenOver())

    assert len(await batches(driver)) == 1 and not await exists(driver, MERGED)


async def test_compaction_drops_entries_of_what_is_gone(driver: FilesystemDriver) -> None:
    kept, doomed = await image(driver, "team/app", "v1"), await image(driver, "team/app", "v2")
    old = await image(driver, "team/old", None)  # untagged: garbage collection removes it
    recorder = PullRecorder(driver, clock=lambda: 10.0)
    recorder.record("team/app", kept, "v1")
    recorder.record("team/app", doomed, "v2")
    recorder.record("team/app", doomed)  # by digest
    recorder.record("team/old", old)
    recorder.record("team/never", Digest.of(b"never stored"), "x")
    await recorder.flush()
    await driver.delete(layout.tag_dir("team/app", "v2"))
    await driver.delete(layout.manifest_revision_dir("team/app", doomed))
    result = await collect(driver, delete_untagged=True)
    assert "team/old" in result.repositories_removed

    done = await compact_once(driver)

    assert done is not None and (done.entries, done.dropped) == (1, 4)
    times = await load_times(driver)
    assert times.by_tag == {("team/app", "v1"): 10.0}
    assert times.by_digest == {("team/app", str(kept)): 10.0}


async def test_a_tag_pulled_before_it_moved_keeps_its_pull_time(driver: FilesystemDriver) -> None:
    first = await image(driver, "team/app", "v1")
    recorder = PullRecorder(driver, clock=lambda: 10.0)
    recorder.record("team/app", first, "v1")
    await recorder.flush()
    await driver.delete(layout.manifest_revision_dir("team/app", first))
    await manifest(
        driver, "team/app", [await layer(driver, "team/app", b"v1 again")], tag="v1"
    )  # pushed again

    await compact_once(driver)

    times = await load_times(driver)
    assert times.by_tag == {("team/app", "v1"): 10.0}  # retention still sees the pull
    assert times.by_digest == {}


async def test_old_records_are_read_then_folded_in_and_removed(driver: FilesystemDriver) -> None:
    cached = await image(driver, "docker.io/library/a", "1")
    await image(driver, "team/app", "v1")
    await image(driver, "team/app/sub", "v1")
    # The cache's old record: a merged file and a batch, rows [name, digest, time].
    old_rows = {"pulls": [["docker.io/library/a", str(cached), 70.0]]}
    await driver.put_content(f"{LEGACY_IMAGE_PULLS}/merged.json", json.dumps(old_rows).encode())
    old_batch = {"pulls": [["docker.io/library/a", str(cached), 80.0]]}
    await driver.put_content(
        f"{LEGACY_IMAGE_PULLS}/batches/w-0000000001.json", json.dumps(old_batch).encode()
    )
    # Retention's old record: one object per tag holding the time.
    for name in ("team/app", "team/app/sub", "team/gone"):
        await driver.put_content(f"{LEGACY_TAG_PULLS}/{name}/_pulled/v1", b"1234.5")

    before = await load_times(driver)
    assert before.by_digest == {("docker.io/library/a", str(cached)): 80.0}
    assert before.by_tag == {
        ("team/app", "v1"): 1234.5,
        ("team/app/sub", "v1"): 1234.5,
        ("team/gone", "v1"): 1234.5,
    }

    done = await compact_once(driver)

    assert done is not None and (done.dropped, done.merged) == (1, 5)  # team/gone dropped
    assert not await exists(driver, LEGACY_IMAGE_PULLS)
    assert not await exists(driver, LEGACY_TAG_PULLS)
    after = await load_times(driver)
    assert after.by_tag == {("team/app", "v1"): 1234.5, ("team/app/sub", "v1"): 1234.5}
    assert after.by_digest == {("docker.io/library/a", str(cached)): 80.0}
    assert (await load_record(driver)).read == []
