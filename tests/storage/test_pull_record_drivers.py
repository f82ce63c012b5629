"""The pull record on every driver (a local disk and S3): two replicas record pulls of a
pushed repository through the registry, an older version's records lie in the store, and
one compaction under the lease folds everything in, drops what is gone and removes the
old records."""

from __future__ import annotations

import functools
import json

import pytest

from entrepot.registry import layout
from entrepot.registry.local import LocalRegistry
from entrepot.registry.pullcompact import LEASE, LEASE_TTL, compact_once
from entrepot.registry.pulls import (
    BATCHES,
    LEGACY_IMAGE_PULLS,
    LEGACY_TAG_PULLS,
    PullRecorder,
    load_record,
    load_times,
)
from entrepot.storage import StorageDriver, StorageNotFound
from tests.unit.test_gc import layer, manifest

NAME = "team/app"


async def gone(driver: StorageDriver, prefix: str) -> bool:
    return not [key async for batch in driver.walk(prefix) for key in batch]


async def test_replicas_pulls_and_old_records_fold_into_one(driver: StorageDriver) -> None:
    v1 = await manifest(driver, NAME, [await layer(driver, NAME, b"one")], tag="v1")
    v2 = await manifest(driver, NAME, [await layer(driver, NAME, b"two")], tag="v2")
    replicas = [LocalRegistry(driver), LocalRegistry(driver)]
    for when, replica in zip((100.0, 200.0), replicas, strict=True):
        replica.manifests.pulls = PullRecorder(driver, clock=functools.partial(float, when))
        await replica.manifests.of(NAME).get("v1")
        await replica.manifests.of(NAME).get(str(v2))  # by digest: no tag pull
    old = {"pulls": [["docker.io/library/gone", str(v1), 50.0]]}  # the cache's old record
    await driver.put_content(f"{LEGACY_IMAGE_PULLS}/merged.json", json.dumps(old).encode())
    await driver.put_content(f"{LEGACY_TAG_PULLS}/{NAME}/_pulled/v2", b"150.0")
    for replica in replicas:
        assert replica.manifests.pulls is not None
        await replica.manifests.pulls.flush()
    assert len([k async for batch in driver.walk(BATCHES) for k in batch]) == 2

    before = await load_times(driver)
    assert before.by_tag == {(NAME, "v1"): 200.0, (NAME, "v2"): 150.0}
    assert before.by_digest[(NAME, str(v1))] == 200.0
    holder = await driver.try_lease(LEASE, ttl=LEASE_TTL)
    assert holder is not None
    assert await compact_once(driver) is None  # another replica is compacting
    await holder.release()
    await driver.delete(layout.tag_dir(NAME, "v2"))  # v2's pulls go with the tag

    done = await compact_once(driver)

    assert done is not None and done.merged == 4
    assert await gone(driver, BATCHES)
    assert await gone(driver, LEGACY_IMAGE_PULLS) and await gone(driver, LEGACY_TAG_PULLS)
    after = await load_times(driver)
    assert after.by_tag == {(NAME, "v1"): 200.0}
    assert after.by_digest == {(NAME, str(v1)): 200.0}  # a pushed image pulled by digest: not noted
    assert (await load_record(driver)).read == []
    with pytest.raises(StorageNotFound):
        await driver.list(LEGACY_TAG_PULLS)  # no folders left behind
