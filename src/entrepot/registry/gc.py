"""Garbage collection: registry:2's ``garbage-collect`` (mark and sweep), safe to run
against the storage of a running registry, without a read-only mode.

Mark: every manifest of every repository and what it references (with
``delete_untagged``: the tagged manifests and, unlike registry:2, which drops them
(distribution #3178), their index children and referrers, so a tagged image stays whole),
plus every layer of a repository with an upload in progress. Anything written or linked
within ``grace`` seconds (the object's mtime) is kept too, so a push under way keeps what it
has sent; on a store older than that, the result is registry:2's.

Sweep (gcsweep): untagged manifests are unlinked after their repository's tags are read once more.
Unmarked blobs are first moved aside (quarantined), then every repository is read again and
a blob that a push linked meanwhile is moved back; the rest are deleted with their layer
links (as registry:2 v3 does; v2.8 leaves those links behind). A repository left with no
manifest loses its folders and leaves the catalog (its epoch is bumped so every worker
walks again).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

from entrepot.oci.digest import Digest, digest_lines, sorted_digests
from entrepot.registry import gcrecheck
from entrepot.registry.gchead import HeadStart
from entrepot.registry.gcpace import Pacer
from entrepot.registry.gcrefs import Referenced, keep_closure, read_refs
from entrepot.registry.gcresult import GcOptions, GcResult
from entrepot.registry.gcscan import (
    UNREAD,
    Blobs,
    RepoScan,
    find_blobs,
    read_blobs,
)
from entrepot.registry.gcsweep import CollectorSweep
from entrepot.registry.quarantine import (
    QUARANTINE,
    recover,
    restore,
)
from entrepot.registry.retention import RetentionPlan, plan_retention
from entrepot.registry.storecalls import Limited, each
from entrepot.storage import FileInfo, StorageDriver

__all__ = ["QUARANTINE", "GarbageCollector", "GcOptions", "GcResult", "keep_closure"]


class GarbageCollector(CollectorSweep):
    """One collection: the mark here, the sweep in CollectorSweep."""

    def __init__(
        self,
        driver: StorageDriver,
        options: GcOptions,
        emit: Callable[[str], None] = print,
        clock: Callable[[], float] = time.time,
        pacer: Pacer | None = None,
        emit_lines: Callable[[list[str]], None] | None = None,
        head: HeadStart | None = None,
    ) -> None:
        self.driver = driver
        # The mark's walks, begun before the collector was made (see gchead): the run's
        # time and skipped algorithms are theirs.
        self.head = head
        self.options = options
        self.pacer = pacer  # None: never rests
        pace = None if pacer is None else pacer.pace
        self.store = Limited(driver, options.concurrency, apart=options.apart, pace=pace)
        self.emit = emit
        # The listing of what goes (55,600 lines for the bench store) in one call: a line
        # at a time cost a twentieth of the run.
        self.emit_lines = emit_lines or self._emit_each
        self.clock = clock
        # The state both halves share (see CollectorSweep).
        self.cutoff = 0.0
        self.marked_at = 0.0
        self.refs = {}
        self.referenced = Referenced()
        self.layer_links = {}
        self.plan = RetentionPlan()
        self.result = GcResult()
        self.journal = False
        self.skipped = ()
        self.quarantined = []
        self.quarantined_dirs = []
        self.early = None
        # What a run built (a few hundred thousand objects on a large store), held here
        # rather than freed as the run returns: the command, about to end, never frees it
        # (see cli_gc.garbage_collect); a server frees it with the collector.
        self.built: tuple[object, ...] = ()

    def _emit_each(self, lines: list[str]) -> None:
        for text in lines:  # some hold several lines (see digest_lines)
            for line in text.split("\n"):
                self.emit(line)

    async def run(self) -> GcResult:
        if not self.options.apart:
            return await self._run()
        async with self.driver.bulk_apart():
            return await self._run()

    async def _run(self) -> GcResult:
        started = time.monotonic()
        head = self.head
        now = self.clock() if head is None else head.started
        self.cutoff = now - self.options.grace
        if not self.options.dry_run:
            self.result.blobs_recovered = await recover(self.store)
        self.skipped = await self._absent_algorithms() if head is None else head.skipped
        early = not self.options.dry_run and gcrecheck.EarlyRecheck.possible(self.store)
        # Before the mark reads anything (see gcrecheck.EarlyRecheck).
        if head is not None:
            links = head.links
        else:
            links = await gcrecheck.links_written(self.store) if early else None
        self.marked_at = time.time() if head is None else head.started
        scans, blobs = await asyncio.gather(
            self._scan_all("marking", mark=True),
            find_blobs(self.store, self._progress("marking: blobs found")),
        )
        if early:
            self.early = gcrecheck.EarlyRecheck(
                self.store, scans, self.marked_at, self.cutoff, self.skipped, links
            )
            await self.early.begin()
        try:
            return await self._collect(now, scans, blobs, started)
        finally:
            if self.early is not None:  # read, unless the collection failed
                await self.early.stop()

    async def _collect(
        self, now: float, scans: dict[str, RepoScan], blobs: Blobs, started: float
    ) -> GcResult:
        if self.options.rules:
            self.plan = await plan_retention(
                self.store, scans.values(), self.options.rules, now, self.cutoff
            )
        marked, unkept = await self._mark(scans, blobs)
        unmarked = [d for d in blobs if d not in marked]  # in the listing's order
        doomed = await self._unmarked_blobs(blobs, unmarked, scans.values())
        result = self.result
        result.blobs_eligible = dict(doomed)
        result.manifests_eligible = sorted(
            ((n, d) for n, ds in unkept.items() for d in ds),
            key=lambda item: (item[0], str(item[1])),
        )
        result.tags_eligible = sorted((n, t) for n, ts in self.plan.tags.items() for t in ts)
        n_manifests = sum(len(v) for v in unkept.values())
        self.emit(
            f"{len(scans)} repositories, {result.manifests_marked} manifests and "
            f"{len(marked)} blobs marked; {len(doomed)} blobs "
            f"({sum(doomed.values())} bytes) and {n_manifests} manifests eligible for deletion; "
            f"{result.blobs_kept_fresh} unmarked blobs kept (written or linked within "
            f"the grace window)"
        )
        # Digests sort as their (algorithm, encoded) tuples: as their text would.
        self.emit_lines(
            [
                *(f"tag eligible for deletion: {name}:{tag}" for name, tag in result.tags_eligible),
                *(
                    f"manifest eligible for deletion: {name}@{algorithm}:{encoded}"
                    for name, digests in sorted(unkept.items())
                    for algorithm, encoded in sorted(digests)
                ),
                # In digest order already (see _unmarked_blobs): sorting them again was
                # a hundredth of the bench store's collection, with one CPU idle.
                *digest_lines(doomed, "blob eligible for deletion: "),
            ]
        )
        if self.options.dry_run:
            gone = {name: digests for name, digests in unkept.items()}
            empty = await self._empty_repositories(scans.values(), gone, set(doomed))
            for name in empty:
                self.emit(f"repository eligible for removal: {name}")
            result.repositories_removed = empty
        else:
            await self._sweep(scans, unkept, doomed)
        fresh = (
            self.plan.kept_fresh,
            result.manifests_kept_fresh,
            result.blobs_kept_fresh,
            result.repositories_kept_fresh,
        )
        if any(fresh):  # else a run right after a push seems to ignore what it would delete
            self.emit(
                "kept as written or linked within the grace window (the last "
                f"{self.options.grace:g}s, --grace): {fresh[0]} tags, {fresh[1]} manifests, "
                f"{fresh[2]} unreferenced blobs and {fresh[3]} emptied repositories; a later "
                "collection deletes them"
            )
        self.built = (scans, blobs, marked, unmarked, doomed, unkept)
        result.seconds = time.monotonic() - started
        result.rested = 0.0 if self.pacer is None else self.pacer.rested
        return result

    async def _mark(
        self, scans: dict[str, RepoScan], blobs: Blobs
    ) -> tuple[set[tuple[str, str]], dict[str, set[Digest]]]:
        """The marked blobs (Digests, or their pairs: see Referenced), and by repository
        the manifests that are not kept."""
        if not (self.options.delete_untagged or self.plan.tags or self.plan.untagged_age):
            return await self._mark_all(scans, blobs), {}
        valid = {name: scan.revisions & blobs.keys() for name, scan in scans.items()}
        await read_refs(self.store, (d for found in valid.values() for d in found), self.refs)
        marked: set[tuple[str, str]] = set()
        unkept: dict[str, set[Digest]] = {}
        for scan in scans.values():
            present = valid[scan.name]
            roots = self._roots(scan)
            # Every manifest a root (no flag, no rule): the closure is what is present.
            closed = roots is scan.revisions
            kept = present if closed else keep_closure(present, roots, self.refs)
            self.result.manifests_marked += len(kept)
            marked |= kept
            for digest in kept:
                marked |= self.refs[digest].references
            if scan.upload_active:
                marked |= scan.layers
            if present - kept:
                unkept[scan.name] = present - kept
        self.result.repositories = len(scans)
        self.result.blobs_marked = len(marked)
        return marked, unkept

    async def _mark_all(self, scans: dict[str, RepoScan], blobs: Blobs) -> set[tuple[str, str]]:
        """``_mark`` where every manifest is a root (no ``delete_untagged``, no retention
        rule), so every one present is kept: gathered set by set, not repository by
        repository (that loop was 0.12 s of the bench store's run, with the CPUs idle)."""
        revisions = [scan.revisions for scan in scans.values()]
        linked = set().union(*revisions)
        present = linked & blobs.keys()
        # What the walk read these reference is together in ``referenced`` (its manifests
        # are present: their bytes were read); the others' by manifest.
        folded = self.referenced.manifests
        unfolded = present - folded if folded else present
        await read_refs(self.store, unfolded, self.refs)
        refs = self.refs
        marked: set[tuple[str, str]] = set(present)
        marked.update(self.referenced.pairs)
        marked.update(*[refs[digest].references for digest in unfolded])
        marked.update(*[scan.layers for scan in scans.values() if scan.upload_active])
        # A manifest linked by two repositories counts in each, as _mark counts it.
        if len(present) == len(linked):
            self.result.manifests_marked += sum(map(len, revisions))
        else:
            self.result.manifests_marked += sum(len(found & present) for found in revisions)
        self.result.repositories = len(scans)
        self.result.blobs_marked = len(marked)
        return marked

    def _roots(self, scan: RepoScan) -> set[Digest]:
        """The manifests the mark starts from: all of them, less the untagged ones that
        ``delete_untagged`` or a retention rule's age lets go, and less those whose every
        tag a retention rule deletes; a manifest linked within the grace window stays."""
        condemned = self.plan.tags.get(scan.name, {})
        age = self.plan.untagged_age.get(scan.name)
        if not (self.options.delete_untagged or condemned or age is not None):
            return scan.revisions
        kept_tags = {d for t, d in scan.tags.items() if t not in condemned}
        untagged = scan.revisions - scan.tagged
        if self.options.delete_untagged:
            older_than = self.cutoff
        elif age is not None:
            older_than = min(self.cutoff, self.clock() - age)
        else:
            older_than = float("-inf")
        staying = {d for d in untagged if scan.revision_mtimes[d] > older_than}
        untagged_by_rules = scan.tagged - kept_tags
        fresh = {d for d in untagged_by_rules if self._fresh(scan.revision_mtimes.get(d, 0.0))}
        # Kept by the grace window alone: old enough for the flag or rule, not for grace.
        if self.options.delete_untagged:
            goes_before = float("inf")
        else:
            goes_before = float("-inf") if age is None else self.clock() - age
        self.result.manifests_kept_fresh += len(fresh) + sum(
            self._fresh(scan.revision_mtimes[d]) and scan.revision_mtimes[d] <= goes_before
            for d in staying
        )
        return kept_tags | staying | fresh

    async def _unmarked_blobs(
        self, blobs: Blobs, unmarked: list[Digest], scans: Iterable[RepoScan]
    ) -> dict[Digest, int]:
        """Unmarked blobs neither written nor linked within the grace window (by the times
        the scans read), with sizes. Where the blobs' times are not read yet (a disk) and
        this is no dry run, each is set aside as it is read, in one call (``set_aside``):
        a stat, then a move, cost a fifth of a collection more."""
        self.layer_links = await self._link_times(scans, unmarked)
        linked = {d for (_, d), mtime in self.layer_links.items() if self._fresh(mtime)}
        # In digest order: a folder's neighbours are set aside, and later deleted, one
        # after the other (a tenth faster than in set order), and the listing and the
        # sweep's sorts find them sorted already. The blobs came listed in that order
        # (a disk's walk sorts, object storage lists keys so): this sort only checks it,
        # where sorting them took 0.07 s of the bench store's collection.
        kept = [d for d in unmarked if d not in linked] if linked else unmarked
        candidates = sorted_digests(kept)
        apart = not self.options.dry_run and any(blobs[d] is UNREAD for d in candidates)
        await read_blobs(self.store, blobs, linked if apart else unmarked)
        if apart:
            stats = await self._set_aside(candidates)
        else:
            stats = [_size_and_mtime(blobs[d]) for d in candidates]
        doomed: dict[Digest, int] = {}
        aside: list[Digest] = []
        for digest in linked:  # kept; unless without ``data``: see below
            if blobs[digest] is None:
                aside.append(digest)
            else:
                self.result.blobs_kept_fresh += 1
        cutoff = self.cutoff  # as _fresh, inline: 55,600 calls on the bench store
        for digest, stat in zip(candidates, stats, strict=True):
            if stat is None:  # nothing to free; unless a crash left it aside
                aside.append(digest)
            elif stat[1] > cutoff:
                self.result.blobs_kept_fresh += 1
            else:
                doomed[digest] = stat[0]
        if not self.options.dry_run:
            self.result.blobs_recovered += sum(
                await each(aside, lambda digest: restore(self.store, digest))
            )
        return doomed


def _size_and_mtime(info: FileInfo | None) -> tuple[int, float] | None:
    """A blob's ``data`` as set_aside answers: None when it is missing (or a folder)."""
    return None if info is None or info.is_dir else (info.size, info.mtime)
