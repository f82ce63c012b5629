"""Garbage collection: registry:2's ``garbage-collect`` (mark and sweep), safe to run
against the storage of a running registry, without a read-only mode.

Mark: every manifest of every repository and what it references (with
``delete_untagged``: the tagged manifests and, unlike registry:2, which drops them
(distribution #3178), their index children and referrers, so a tagged image stays whole),
plus every layer of a repository with an upload in progress. Anything written or linked
within ``grace`` seconds (the object's mtime) is kept too, so a push under way keeps what it
has sent; on a store older than that, the result is registry:2's.

Sweep: untagged manifests are unlinked after their repository's tags are read once more.
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
from dataclasses import dataclass, field

from entrepot.oci.digest import Digest
from entrepot.registry import layout
from entrepot.registry.epochs import CATALOG, CATALOG_REMOVALS, bump_epoch, tags_epoch
from entrepot.registry.gcpace import Pacer
from entrepot.registry.gcrecheck import recheck
from entrepot.registry.gcrefs import ManifestRefs, keep_closure, read_refs
from entrepot.registry.gcscan import (
    UNREAD,
    Blobs,
    Progress,
    RepoScan,
    find_blobs,
    read_blobs,
    scan_repository,
    scan_store,
)
from entrepot.registry.quarantine import (
    QUARANTINE,
    close_journal,
    quarantine_key,
    recover,
    restore,
    write_journal,
)
from entrepot.registry.retention import RetentionPlan, RetentionRule, plan_retention
from entrepot.registry.storecalls import Limited, each
from entrepot.storage import FileInfo, StorageDriver

__all__ = ["QUARANTINE", "GarbageCollector", "GcOptions", "GcResult", "keep_closure"]
_REPO_FOLDERS = ("_manifests", "_layers", "_referrers", "_uploads")
# Blobs (or layer links) deleted per bulk call: a progress line can follow between calls.
_SWEEP_BATCH = 4096


@dataclass(frozen=True)
class GcOptions:
    dry_run: bool = False
    delete_untagged: bool = False
    grace: float = 3600.0  # seconds
    concurrency: int = 32  # storage calls in flight
    progress_every: float = 5.0  # seconds between progress lines
    rules: tuple[RetentionRule, ...] = ()  # retention rules for tags and untagged manifests
    # Walk the store, and make the bulk calls, in child processes where the driver can (a
    # disk: the command's runs, where a large store's walk and sweep take two CPUs; each
    # child costs a process start).
    apart: bool = False


@dataclass
class GcResult:
    repositories: int = 0
    manifests_marked: int = 0
    blobs_marked: int = 0
    manifests_eligible: list[tuple[str, Digest]] = field(default_factory=list)
    blobs_eligible: dict[Digest, int] = field(default_factory=dict)  # digest -> bytes
    manifests_deleted: list[tuple[str, Digest]] = field(default_factory=list)
    tags_eligible: list[tuple[str, str]] = field(default_factory=list)  # by retention rules
    tags_deleted: list[tuple[str, str]] = field(default_factory=list)
    blobs_recovered: int = 0  # put back from an interrupted collection's quarantine
    blobs_deleted: dict[Digest, int] = field(default_factory=dict)  # digest -> bytes
    blobs_kept_fresh: int = 0  # unmarked, but written or linked within the grace window
    manifests_kept_fresh: int = 0  # would go (untagged, by a rule), but linked within it
    repositories_kept_fresh: int = 0  # emptied, but with a layer linked within it
    blobs_relinked: int = 0  # quarantined, then found linked by a push during the sweep
    layer_links_deleted: int = 0
    repositories_removed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    rested: float = 0.0  # seconds of those spent resting while the machine was busy

    @property
    def bytes_freed(self) -> int:
        return sum(self.blobs_deleted.values())

    @property
    def took(self) -> str:
        """How long the run took, for its summary line."""
        if self.rested < 0.05:
            return f"{self.seconds:.1f}s"
        return f"{self.seconds:.1f}s, {self.rested:.1f}s of it resting as the machine was busy"


class GarbageCollector:
    def __init__(
        self,
        driver: StorageDriver,
        options: GcOptions,
        emit: Callable[[str], None] = print,
        clock: Callable[[], float] = time.time,
        pacer: Pacer | None = None,
        emit_lines: Callable[[list[str]], None] | None = None,
    ) -> None:
        self.driver = driver
        self.options = options
        self.pacer = pacer  # None: never rests
        pace = None if pacer is None else pacer.pace
        self.store = Limited(driver, options.concurrency, apart=options.apart, pace=pace)
        self.emit = emit
        # The listing of what goes (55,600 lines for the bench store) in one call: a line
        # at a time cost a twentieth of the run.
        self.emit_lines = emit_lines or self._emit_each
        self.clock = clock
        self.cutoff = 0.0  # objects with a later mtime are fresh
        self.marked_at = 0.0  # when the mark began reading (the real clock: mtimes')
        self.refs: dict[Digest, ManifestRefs] = {}
        # The mtime of each layer link of a blob to delete, as the mark read it: the sweep
        # puts back a blob whose link is new or rewritten since.
        self.layer_links: dict[tuple[str, Digest], float] = {}
        self.plan = RetentionPlan()
        self.result = GcResult()
        self.journal = False  # written: what may be aside is listed (see quarantine)
        self.quarantined: list[Digest] = []  # set aside by _set_aside

    def _emit_each(self, lines: list[str]) -> None:
        for line in lines:
            self.emit(line)

    def _fresh(self, mtime: float) -> bool:
        return mtime > self.cutoff

    async def run(self) -> GcResult:
        if not self.options.apart:
            return await self._run()
        async with self.driver.bulk_apart():
            return await self._run()

    async def _run(self) -> GcResult:
        started = time.monotonic()
        now = self.clock()
        self.cutoff = now - self.options.grace
        if not self.options.dry_run:
            self.result.blobs_recovered = await recover(self.store)
        self.marked_at = time.time()
        scans, blobs = await asyncio.gather(
            self._scan_all("marking", mark=True),
            find_blobs(self.store, self._progress("marking: blobs found")),
        )
        if self.options.rules:
            self.plan = await plan_retention(
                self.store, scans.values(), self.options.rules, now, self.cutoff
            )
        marked, unkept = await self._mark(scans, blobs)
        doomed = await self._unmarked_blobs(blobs, blobs.keys() - marked, scans.values())
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
                *(f"blob eligible for deletion: {a}:{e}" for a, e in sorted(doomed)),
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
        result.seconds = time.monotonic() - started
        result.rested = 0.0 if self.pacer is None else self.pacer.rested
        return result

    def _progress(self, what: str, total: int | None = None) -> Progress:
        return Progress(self.emit, what, total, self.options.progress_every)

    async def _scan_all(self, phase: str, *, mark: bool) -> dict[str, RepoScan]:
        """Every repository; the mark's read the manifests too (into ``refs``), and the tags
        where they decide something: with delete_untagged or retention rules (else every
        manifest is kept, and reading a link per tag cost a tenth of a large store's mark)."""
        found = self._progress(f"{phase}: repository objects read")
        tag_links = mark and (self.options.delete_untagged or bool(self.options.rules))
        refs = self.refs if mark else None
        return await scan_store(self.store, self.cutoff, found, tag_links=tag_links, refs=refs)

    async def _link_times(
        self, scans: Iterable[RepoScan], digests: Iterable[Digest]
    ) -> dict[tuple[str, Digest], float]:
        """The mtimes of the layer links of ``digests`` in the repositories that have a
        folder for them (the scans do not open those folders)."""
        wanted = set(digests)
        links = [(s.name, d) for s in scans for d in s.layers & wanted]
        infos = await self.store.stat_many([layout.layer_link(*item) for item in links])
        return {
            link: info.mtime for link, info in zip(links, infos, strict=True) if info is not None
        }

    async def _mark(
        self, scans: dict[str, RepoScan], blobs: Blobs
    ) -> tuple[set[Digest], dict[str, set[Digest]]]:
        """The marked blobs, and by repository the manifests that are not kept."""
        await read_refs(
            self.store, (d for s in scans.values() for d in s.revisions & blobs.keys()), self.refs
        )
        marked: set[Digest] = set()
        unkept: dict[str, set[Digest]] = {}
        for scan in scans.values():
            valid = scan.revisions & blobs.keys()
            roots = self._roots(scan)
            kept = keep_closure(valid, roots, self.refs)
            self.result.manifests_marked += len(kept)
            for digest in kept:
                marked.add(digest)
                marked |= self.refs[digest].references
            if scan.upload_active:
                marked |= scan.layers
            if valid - kept:
                unkept[scan.name] = valid - kept
        self.result.repositories = len(scans)
        self.result.blobs_marked = len(marked)
        return marked, unkept

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
        self, blobs: Blobs, unmarked: set[Digest], scans: Iterable[RepoScan]
    ) -> dict[Digest, int]:
        """Unmarked blobs neither written nor linked within the grace window (by the times
        the scans read), with sizes. Where the blobs' times are not read yet (a disk) and
        this is no dry run, each is set aside as it is read, in one call (``set_aside``):
        a stat, then a move, cost a fifth of a collection more."""
        self.layer_links = await self._link_times(scans, unmarked)
        linked = {d for (_, d), mtime in self.layer_links.items() if self._fresh(mtime)}
        candidates = [d for d in unmarked if d not in linked]
        apart = not self.options.dry_run and any(blobs[d] is UNREAD for d in candidates)
        await read_blobs(self.store, blobs, linked if apart else unmarked)
        infos = await self._set_aside(candidates) if apart else [blobs[d] for d in candidates]
        doomed: dict[Digest, int] = {}
        aside: list[Digest] = []
        for digest in linked:  # kept; unless without ``data``: see below
            if blobs[digest] is None:
                aside.append(digest)
            else:
                self.result.blobs_kept_fresh += 1
        for digest, info in zip(candidates, infos, strict=True):
            if info is None or info.is_dir:  # nothing to free; unless a crash left it aside
                aside.append(digest)
            elif self._fresh(info.mtime):
                self.result.blobs_kept_fresh += 1
            else:
                doomed[digest] = info.size
        if not self.options.dry_run:
            self.result.blobs_recovered += sum(
                await each(aside, lambda digest: restore(self.store, digest))
            )
        return doomed

    async def _set_aside(self, candidates: list[Digest]) -> list[FileInfo | None]:
        """Move each candidate's ``data`` aside (quarantine) unless it was written within
        the grace window, listing them in the journal first; each one's stat."""
        await write_journal(self.store, candidates)
        self.journal = True
        # Not synced: after a crash a blob is at either name, and both are handled.
        moves = [(layout.blob_data(d), quarantine_key(d)) for d in candidates]
        answers = await self.store.move_stale_many(moves, self.cutoff, sync=False)
        self.quarantined = [d for d, (_, moved) in zip(candidates, answers, strict=True) if moved]
        return [info for info, _ in answers]

    async def _sweep(
        self, scans: dict[str, RepoScan], unkept: dict[str, set[Digest]], doomed: dict[Digest, int]
    ) -> None:
        await self._delete_tags()
        removed = await each(unkept.items(), lambda item: self._unlink_manifests(scans, *item))
        gone = {name: digests for (name, _), digests in zip(unkept.items(), removed, strict=True)}
        quarantined = self.quarantined
        if not self.journal:  # not set aside yet (object storage: the scan read the times)
            if doomed:
                await write_journal(self.store, doomed)
                self.journal = True
            # Not synced: after a crash a blob is at either name, and both are handled.
            moves = [(layout.blob_data(d), quarantine_key(d)) for d in doomed]
            moved = await self.store.move_many(moves, sync=False)
            quarantined = [d for d, ok in zip(doomed, moved, strict=True) if ok]
        rescans = await recheck(
            self.store, scans, unkept.keys(), self.marked_at, self.cutoff, quarantined
        )
        if rescans is None:
            rescans = await self._scan_all("re-checking", mark=False)
        relinked = await self._relinked(scans, rescans, unkept, set(quarantined))
        self.result.blobs_relinked = len(relinked)
        await each(relinked, self._release)
        # In order: a folder's neighbours are deleted one after the other (a tenth faster
        # than in the order of a set, on the bench store).
        deleted = sorted(d for d in quarantined if d not in relinked)
        # With its folder, as registry:2 removes it; unless a push of the same bytes
        # refilled it meanwhile: then only the quarantined copy goes.
        progress = self._progress("sweeping: blobs deleted", len(deleted))
        for start in range(0, len(deleted), _SWEEP_BATCH):
            batch = deleted[start : start + _SWEEP_BATCH]
            await self.store.delete_many([quarantine_key(d) for d in batch])
            progress.tick(len(batch))
        for digest in deleted:
            self.result.blobs_deleted[digest] = doomed[digest]
        if self.journal:
            await close_journal(self.store)
        await self._unlink_layers([*scans.values(), *rescans.values()], set(deleted))
        empty = await self._empty_repositories(rescans.values(), gone, set(deleted))
        for name in reversed(empty):  # nested ones first: their parents may empty with them
            await self._remove_repository(name)
        self.result.repositories_removed = empty
        if empty:
            await bump_epoch(self.driver, CATALOG_REMOVALS)
            await bump_epoch(self.driver, CATALOG)

    async def _delete_tags(self) -> None:
        """Delete the tags the retention rules condemned, each only if it still points
        where it did and was not pushed again within the grace window."""
        touched: set[str] = set()

        async def delete(item: tuple[str, str, Digest]) -> None:
            name, tag, digest = item
            current = layout.tag_current_link(name, tag)
            info, now = await asyncio.gather(
                self.store.stat(current), self.store.read_link(current)
            )
            if info is None or now != digest or self._fresh(info.mtime):
                return
            if await self.store.delete(layout.tag_dir(name, tag)):
                self.result.tags_deleted.append((name, tag))
                touched.add(name)

        items = [(n, t, d) for n, tags in self.plan.tags.items() for t, d in tags.items()]
        await each(items, delete)
        await each(touched, lambda name: bump_epoch(self.driver, tags_epoch(name)))
        self.result.tags_deleted.sort()

    async def _unlink_manifests(
        self, scans: dict[str, RepoScan], name: str, planned: set[Digest]
    ) -> set[Digest]:
        """Unlink the untagged manifests planned for deletion that are still untagged, after
        reading the repository's tags and manifests again (a push may have tagged one)."""
        before = scans[name]
        now = await scan_repository(self.store, name, self.cutoff)
        new = now.revisions - before.revisions
        await read_refs(self.store, new, self.refs)
        kept = keep_closure(now.revisions, (now.revisions - planned) | now.tagged, self.refs)
        removed = planned - kept

        async def unlink(digest: Digest) -> None:
            for tag in now.tag_names:
                entry = layout.tag_index_link(name, tag, digest).removesuffix("/link")
                await self.store.delete(entry)
            await self.store.delete(layout.manifest_revision_dir(name, digest))
            subject = self.refs[digest].subject
            if subject is not None:
                link = layout.referrer_link(name, subject, digest).removesuffix("/link")
                await self.store.delete(link)
            self.result.manifests_deleted.append((name, digest))

        await each(removed, unlink)
        return removed

    async def _release(self, digest: Digest) -> None:
        await restore(self.store, digest)

    async def _relinked(
        self,
        scans: dict[str, RepoScan],
        rescans: dict[str, RepoScan],
        unkept: dict[str, set[Digest]],
        quarantined: set[Digest],
    ) -> set[Digest]:
        """Quarantined blobs that something linked after the mark read the store: a layer
        link that is new or rewritten (the mark read another mtime, or none), a new
        manifest (or one a new tag saved from deletion) referencing it, or an upload begun
        in its repository."""
        now_links = await self._link_times(rescans.values(), quarantined)
        protect = {link[1] for link, t in now_links.items() if self.layer_links.get(link) != t}
        manifests: set[Digest] = set()
        for name, now in rescans.items():
            before = scans.get(name, RepoScan(name))
            if now.upload_active and not before.upload_active:
                protect |= now.layers
            manifests |= (now.revisions - before.revisions) | (
                now.revisions & unkept.get(name, set())
            )
        # A manifest linked again after the mark may have its bytes aside.
        await read_refs(self.store, manifests, self.refs, quarantined)
        for digest in manifests:
            protect.add(digest)
            protect |= self.refs[digest].references
        return protect & quarantined

    async def _unlink_layers(self, scans: list[RepoScan], deleted: set[Digest]) -> None:
        # Every folder's: a link written after the mark read its folder goes too.
        links = sorted({layout.layer_link(s.name, d) for s in scans for d in s.layers & deleted})
        for start in range(0, len(links), _SWEEP_BATCH):
            await self.store.delete_many(links[start : start + _SWEEP_BATCH])
        self.result.layer_links_deleted = sum(d in deleted for _, d in self.layer_links)

    async def _empty_repositories(
        self, scans: Iterable[RepoScan], gone: dict[str, set[Digest]], deleted: set[Digest]
    ) -> list[str]:
        """Repositories with no manifest left, no upload and nothing linked within the grace
        window."""
        candidates = [
            s for s in scans if not s.uploads and not (s.revisions - gone.get(s.name, set()))
        ]

        async def is_stale(scan: RepoScan) -> bool:
            for digest in scan.layers - deleted:
                info = await self.store.stat(layout.layer_link(scan.name, digest))
                if info is not None and self._fresh(info.mtime):
                    self.result.repositories_kept_fresh += 1
                    return False
            return True

        stale = await each(candidates, is_stale)
        return sorted(s.name for s, ok in zip(candidates, stale, strict=True) if ok)

    async def _remove_repository(self, name: str) -> None:
        if await self.store.children(f"{layout.repository(name)}/_uploads"):
            return  # an upload began since the scan (a POST): the repository stays
        for folder in _REPO_FOLDERS:
            await self.store.delete(f"{layout.repository(name)}/{folder}")
        # A driver with real directories leaves the folders empty: remove those up the tree,
        # as long as nothing else (another repository) is in them.
        path = layout.repository(name)
        while path != layout.REPOSITORIES:
            if await self.store.children(path):
                break
            await self.store.delete(path)
            path = path.rsplit("/", 1)[0]
