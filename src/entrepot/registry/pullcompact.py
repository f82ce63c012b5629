"""The pull record's compaction (registry/pulls.py): the batches (and the old recorders'
records) folded into the merged record, then deleted; one compaction at a time among every
worker and replica, under the storage driver's lease (scope "store": on plain S3 too).
Every server that records pulls runs ``run_compaction``; whoever takes the lease compacts,
the others skip that turn.

Entries of what no longer exists are dropped, so the record does not grow forever: an
entry stays while its repository still holds its manifest, or, for a pull by tag, still
has that tag (retention judges tags by their last pull, whatever they pointed at). A
repository that garbage collection (or the cache's eviction) removed loses its entries at
the next compaction. A pull by tag whose manifest is gone (or an old retention record, which
has no digest) stays, without a digest, as long as the tag does.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass

from entrepot.registry import layout
from entrepot.registry.pulls import (
    LEGACY_IMAGE_PULLS,
    LEGACY_TAG_PULLS,
    MERGED,
    PULLS,
    Pulls,
    encode,
    load_record,
)
from entrepot.registry.storecalls import Limited, each
from entrepot.storage import Lease, LeaseLost, StorageDriver, StorageError

log = logging.getLogger("entrepot.pulls")

LEASE = f"{PULLS}/compaction.lock"  # not .../lease: older versions' folder of generations
LEASE_TTL = 60.0  # seconds: a compaction reads and writes a few objects
COMPACT_EVERY = 300.0  # seconds between compactions (readers read the batches meanwhile)
CONCURRENCY = 16  # storage calls in flight while pruning


@dataclass(frozen=True)
class Compaction:
    entries: int  # in the merged record written
    dropped: int  # entries of repositories, tags or manifests that are gone
    merged: int  # batches and old records folded in and deleted


async def _prune(store: Limited, pulls: Pulls) -> Pulls:
    """The entries whose repository still holds the manifest, or still has the tag (a
    digest it no longer holds is dropped from the entry)."""
    names = sorted({name for name, _, _ in pulls})
    wants_tags = {name for name, tag, _ in pulls if tag is not None}

    async def held(name: str) -> tuple[set[str], set[str]]:
        revisions = await store.digests(f"{layout.repository(name)}/_manifests/revisions")
        tags = await store.children(layout.tags_dir(name)) if name in wants_tags else []
        return {str(d) for d in revisions}, set(tags)

    found = dict(zip(names, await each(names, held), strict=True))
    kept: Pulls = {}
    for (name, tag, digest), when in pulls.items():
        revisions, tags = found[name]
        if digest not in revisions:
            if tag is None or tag not in tags:
                continue
            digest = ""  # the tag stays, its old manifest is gone
        key = (name, tag, digest)
        kept[key] = max(kept.get(key, 0.0), when)
    return kept


async def compact(driver: StorageDriver, lease: Lease) -> Compaction:
    """Fold, prune and write the merged record, then delete what it now holds; the
    caller holds ``lease`` (checked once more before writing: LeaseLost)."""
    store = Limited(driver, CONCURRENCY)
    record = await load_record(driver)
    await lease.renew()  # the pruning may take a while on a big store
    kept = await _prune(store, record.pulls)
    await lease.renew()  # a holder that paused past its expiry must not write
    await driver.put_content(MERGED, encode(kept))
    await driver.delete_many(record.read)
    for legacy in (LEGACY_IMAGE_PULLS, LEGACY_TAG_PULLS):
        # The old records' folders, left empty on a disk (gone by themselves on S3).
        folded = any(key.startswith(f"{legacy}/") for key in record.read)
        if folded and not [key async for batch in driver.walk(legacy) for key in batch]:
            await store.delete(legacy)
    return Compaction(len(kept), len(record.pulls) - len(kept), len(record.read))


async def compact_once(driver: StorageDriver) -> Compaction | None:
    """Compact if no other worker is compacting (None: one is)."""
    lease = await driver.try_lease(LEASE, ttl=LEASE_TTL)
    if lease is None:
        return None
    try:
        return await compact(driver, lease)
    finally:
        await lease.release()


async def run_compaction(driver: StorageDriver, every: float = COMPACT_EVERY) -> None:
    """Compact every ``every`` seconds (with jitter, so workers do not all ask at once)."""
    while True:
        await asyncio.sleep(every * random.uniform(0.8, 1.2))
        try:
            done = await compact_once(driver)
        except (StorageError, LeaseLost) as exc:
            log.warning("could not compact the pull record %s: %s", MERGED, exc)
            continue
        if done is not None and (done.dropped or done.merged):
            log.debug(
                "pull record: %d entries, %d dropped, %d batches folded in",
                done.entries,
                done.dropped,
                done.merged,
            )
