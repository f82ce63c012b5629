"""The sweep's second read of the repositories, cheap where folders have mtimes (a disk):
only the repositories with a folder changed since the mark began are read again.

A push adds an entry to a folder: a layer's link folder to ``_layers/<algorithm>``, a
revision's to ``_manifests/revisions/<algorithm>`` (or its link to a revision folder left
without one), an upload's to ``_uploads``; a new repository is found by its name (the
re-check lists every repository's folder). So a repository none of whose folders changed
since the mark began still holds what the mark read, but for two things: an upload
resumed (only its data grows: a repository with uploads is read again anyway) and a link
written again in a layer folder the mark saw (the sweep stats those links anyway). Object
storage has no folders: it is read again whole.

It begins as the mark ends (EarlyRecheck), while the main process works out what the mark
found and sets blobs aside: on the bench store it waited for the set-aside, 0.15 s with a
CPU idle before. A link written after it read a repository is then seen by a count: every
server adds one to ``layout.LINKS_WRITTEN`` after each link it writes, before it looks at
the bytes the link needs (blobs.count_link). The count is read before the re-check begins
and again once the blobs are aside; where it moved, the store is re-checked again then, as
before. Where it did not, no link came after the re-check read its repository while the
bytes it needs were still in place (the server's look at them, before the set-aside, came
after its count); a link that found them aside puts them back (BlobStore.confirm).

The same holds of the mark: the count is read before it reads anything too, and where it
has not moved since when the mark ends, no link came after the mark read its repository
(nor an upload began), so the early re-check reads nothing again then (on the bench store
its walk was 0.2 s of a CPU, with both busy): only, once the blobs are aside, the
repositories with uploads and those the sweep changed, as ever.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from entrepot.oci.digest import Digest
from entrepot.registry import layout
from entrepot.registry.digestnames import ALGORITHMS
from entrepot.registry.gcscan import RepoScan, scan_repository
from entrepot.registry.gcwalk import SKIPPED, changed_records
from entrepot.registry.storecalls import Limited, each
from entrepot.storage.objects import Shard

# A folder changed this long before the mark began counts as changed: timestamps coarser
# than the clock, a file server's clock a little off.
MARGIN = 10.0  # seconds
# Reading a repository alone took ~1 ms (three listings through the main process), the
# walk of the whole store ~0.13 ms a repository after ~0.1 s to start: beyond READ_ALONE
# repositories and an eighth of the store, the store is read again whole.
READ_ALONE = 100
# The count of links written is emptied once this long (one byte a link and upload).
TALLY_KEPT = 1 << 20
# Turns of the event loop that tell the early re-check's walks to begin (a spare child
# is told its walk a few awaits into it) before the caller's serial work holds the loop.
_TURNS = 4


async def prepare(store: Limited) -> None:
    """The re-check's walks, started ahead where they start processes (a disk) and the
    mark's walk children are not back to walk them (fschildren.WalkSpares.reuse): a walk
    child's start took 80 ms of a CPU."""
    if store.driver.folder_mtimes and store.driver.walks_local:
        await store.prepare_walks(changed_records, len(store.walk_shards()))


async def present_repositories(
    store: Limited,
    scans: Iterable[RepoScan],
    since: float,
    aside: set[str],
    skipped: tuple[str, ...] = (),
) -> dict[str, bool]:
    """Every repository in the store now, and whether one of its folders that a push adds
    an entry to and the sweep cares about changed after ``since`` (the file system's
    time): ``_uploads``, the layer links' of the algorithms of the blobs set ``aside`` (a
    link of another cannot save one), the revisions' of every algorithm, and the revision
    folders the mark found without a link. A folder made since the mark is found by its
    own mtime (new, so changed); a new repository, by its name; one with revisions of an
    algorithm the mark ``skipped`` (gcwalk.ONLY) counts as changed. A local walk (gcwalk's)
    where the repositories are: statted through the main process's bulk calls, the bench
    store's 50,000 folders cost 0.35 s of its CPU (0.07 s so)."""
    args = (repr(since), *sorted(aside | {"sha256"}))
    if skipped:
        args += (SKIPPED + ",".join(skipped),)
    found: dict[str, bool] = {}

    async def walk(shard: Shard | None) -> None:
        async for records in store.walk_local(layout.REPOSITORIES, changed_records, args, shard):
            found.update(records)

    await asyncio.gather(*(walk(shard) for shard in store.walk_shards()))
    unlinked = [
        (scan.name, layout.manifest_revision_dir(scan.name, digest))
        for scan in scans
        for digest in scan.unlinked_revisions
    ]
    infos = await store.stat_many([key for _, key in unlinked])
    for (name, _), info in zip(unlinked, infos, strict=True):
        if info is not None and info.mtime >= since and name in found:
            found[name] = True
    return found


async def recheck(
    store: Limited,
    scans: dict[str, RepoScan],
    swept: Iterable[str],
    marked_at: float,
    fresh_after: float,
    aside: Iterable[Digest],
    skipped: tuple[str, ...] = (),
) -> dict[str, RepoScan] | None:
    """Every repository as it is now, where folders have mtimes and the driver walks
    locally (a disk): those new or with a folder changed since ``marked_at`` (less
    MARGIN), those the sweep changed (``swept``), those with uploads and those with
    revisions of an algorithm the mark ``skipped`` read again, the others as the mark
    read them (``scans``), as far as the blobs set ``aside`` go. None
    where the whole store must be read again: object storage, or too many repositories
    to read one by one."""
    if not (store.driver.folder_mtimes and store.driver.walks_local):
        return None
    algorithms = {digest.algorithm for digest in aside}
    present = await present_repositories(
        store, scans.values(), marked_at - MARGIN, algorithms, skipped
    )
    uploading = {name for name, scan in scans.items() if scan.uploads}
    again = _changed(present, scans, (set(swept) | uploading) & present.keys())
    if again is None:
        return None
    return await _read_again(store, scans, present, again, fresh_after)


def _changed(
    present: dict[str, bool],
    scans: dict[str, RepoScan],
    also: set[str],
    without: set[str] | None = None,
) -> set[str] | None:
    """The repositories ``present`` that are new or changed, and ``also``, less
    ``without``: those to read again one by one; None where they are too many (the store
    is read again whole)."""
    again = {name for name, changed in present.items() if changed or name not in scans} | also
    again -= without or set()
    return None if len(again) > READ_ALONE + len(present) // 8 else again


async def _read_again(
    store: Limited,
    scans: dict[str, RepoScan],
    present: Iterable[str],
    again: set[str],
    fresh_after: float,
) -> dict[str, RepoScan]:
    """Every repository ``present``: those ``again`` read again now, the others as the mark
    read them."""

    async def read(name: str) -> RepoScan:
        # Not the tags: what the sweep reads of these scans does not depend on them.
        return await scan_repository(store, name, fresh_after, layer_folders=True, tag_links=False)

    kept = {name: scans[name] for name in present if name not in again}
    ordered = sorted(again)
    return {**kept, **dict(zip(ordered, await each(ordered, read), strict=True))}


async def links_written(store: Limited) -> int:
    """The count of links the servers wrote (blobs.count_link): 0 where none is kept."""
    info = await store.stat(layout.LINKS_WRITTEN)
    return 0 if info is None else info.size


class EarlyRecheck:
    """``recheck`` begun as the mark ends (``begin``), where it is ``possible``, settled
    once the blobs are aside (``settled``): see the module docstring."""

    def __init__(
        self,
        store: Limited,
        scans: dict[str, RepoScan],
        marked_at: float,
        fresh_after: float,
        skipped: tuple[str, ...],
        links_before: int | None = None,
    ) -> None:
        self.store, self.scans = store, scans
        self.marked_at, self.fresh_after, self.skipped = marked_at, fresh_after, skipped
        # The count as read before the mark read anything (None: not read).
        self.links_before = links_before
        self.count = 0
        # No link counted during the mark: nothing to read again as it ends.
        self.quiet = False
        self._reading: asyncio.Future[dict[str, RepoScan] | None] | None = None

    @staticmethod
    def possible(store: Limited) -> bool:
        """Whether the re-check can begin early: where folders have mtimes and the driver
        walks locally (a disk; not object storage)."""
        return store.driver.folder_mtimes and store.driver.walks_local

    async def begin(self) -> None:
        """Count the links written, then begin reading (see the module docstring)."""
        # First: a link counted after this read may have come after the reads below.
        self.count = await links_written(self.store)
        self.quiet = self.count == self.links_before
        if self.count >= TALLY_KEPT:  # emptied: a link counted in the file deleted came
            await self.store.delete(layout.LINKS_WRITTEN)  # before the count was read
            self.count = 0
        if not self.quiet:
            await prepare(self.store)
        self._reading = asyncio.ensure_future(self._read())
        for _ in range(0 if self.quiet else _TURNS):
            await asyncio.sleep(0)

    async def _read(self) -> dict[str, RepoScan] | None:
        scans = self.scans
        if self.quiet:  # every link came before the mark read its repository
            return dict(scans)
        # The link folders of every algorithm the mark walked: which blobs go aside is not
        # known yet.
        walked = {a for a in ALGORITHMS if a not in self.skipped}
        present = await present_repositories(
            self.store, scans.values(), self.marked_at - MARGIN, walked, self.skipped
        )
        # Those with uploads are read again once the blobs are aside (``settled``).
        uploading = {name for name, scan in scans.items() if scan.uploads}
        again = _changed(present, scans, set(), uploading)
        if again is None:
            return None
        return await _read_again(self.store, scans, present, again, self.fresh_after)

    async def settled(self, swept: Iterable[str]) -> dict[str, RepoScan] | None:
        """``recheck``'s answer, once the blobs are aside: those with uploads and those the
        sweep changed (``swept``) read again now; None where a link was written since the
        re-check began (the count moved) or it found too many changed: ``recheck`` then."""
        assert self._reading is not None
        found = await self._reading
        if found is None or await links_written(self.store) != self.count:
            return None
        late = {name for name, scan in found.items() if scan.uploads} | set(swept)
        late &= found.keys()
        if not late:
            return found
        return {**found, **await _read_again(self.store, found, late, late, self.fresh_after)}

    async def stop(self) -> None:
        """Stop reading, where the collection failed: its walk children are stopped and
        forgotten before this returns (a failure of its own is the collection's to say)."""
        reading = self._reading
        if reading is None or reading.done():
            return
        reading.cancel()
        await asyncio.wait({reading})
        if not reading.cancelled():
            reading.exception()  # retrieved: not "never retrieved" at exit
