"""The sweep half of a garbage collection (see gc): unmarked blobs set aside, the store read
again, what a push linked meanwhile put back, the rest deleted with their layer links, and
emptied repositories removed; with what both halves share (the scans, the grace window).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet

from entrepot.oci.digest import Digest
from entrepot.registry import layout
from entrepot.registry.blobs import write_link
from entrepot.registry.digestnames import ALGORITHMS
from entrepot.registry.epochs import CATALOG, CATALOG_REMOVALS, bump_epoch, tags_epoch
from entrepot.registry.gcrecheck import EarlyRecheck, recheck
from entrepot.registry.gcrefs import Referenced, keep_closure, read_refs
from entrepot.registry.gcremove import remove_repository
from entrepot.registry.gcresult import GcOptions, GcResult
from entrepot.registry.gcscan import Progress, RepoScan, scan_repository, scan_store
from entrepot.registry.manifestrefs import ManifestRefs
from entrepot.registry.quarantine import (
    QUARANTINE,
    close_journal,
    put_back_blobs,
    quarantine_key,
    restore,
    write_journal,
)
from entrepot.registry.retention import RetentionPlan
from entrepot.registry.storecalls import Limited, each
from entrepot.storage import StorageDriver

# Layer links deleted per bulk call: a progress line can follow between calls.
_SWEEP_BATCH = 4096


class CollectorSweep:
    """GarbageCollector's sweep, and the state and steps its mark shares; the collector
    (gc.GarbageCollector) sets these attributes."""

    driver: StorageDriver
    store: Limited
    options: GcOptions
    result: GcResult
    emit: Callable[[str], None]
    cutoff: float  # objects with a later mtime are fresh
    marked_at: float  # when the mark began reading (the real clock: mtimes')
    refs: dict[Digest, ManifestRefs]
    referenced: Referenced  # the mark's walk's, where every manifest is kept (see _scan_all)
    # The mtime of each layer link of a blob to delete, as the mark read it: the sweep
    # puts back a blob whose link is new or rewritten since.
    layer_links: dict[tuple[str, Digest], float]
    plan: RetentionPlan
    journal: bool  # written: what may be aside is listed (see quarantine)
    # The algorithms of which the store held no blob as the mark began (a disk's walk then
    # lists none of their link folders: see gcwalk.ONLY); () where all were walked.
    skipped: tuple[str, ...]
    quarantined: list[Digest]  # set aside by _set_aside
    quarantined_dirs: list[str]  # their folders
    early: EarlyRecheck | None  # the re-check, begun as the mark ended (a disk)

    def _fresh(self, mtime: float) -> bool:
        return mtime > self.cutoff

    def _progress(self, what: str, total: int | None = None) -> Progress:
        return Progress(self.emit, what, total, self.options.progress_every)

    async def _scan_all(self, phase: str, *, mark: bool) -> dict[str, RepoScan]:
        """Every repository; the mark's read the manifests too (into ``refs``), and the tags
        where they decide something: with delete_untagged or retention rules (else every
        manifest is kept, and reading a link per tag cost a tenth of a large store's mark)."""
        found = self._progress(f"{phase}: repository objects read")
        tag_links = mark and (self.options.delete_untagged or bool(self.options.rules))
        refs = self.refs if mark else None
        # Where every manifest is kept, the mark needs what they reference, not by whom.
        referenced = self.referenced if mark and not tag_links else None
        walked = tuple(a for a in ALGORITHMS if a not in self.skipped) if mark else None
        return await scan_store(
            self.store,
            self.cutoff,
            found,
            tag_links=tag_links,
            refs=refs,
            referenced=referenced,
            algorithms=walked,
        )

    async def _absent_algorithms(self) -> tuple[str, ...]:
        """The registered algorithms of which the store holds no blob (no folder under
        ``blobs/``), where a walk lists link folders by algorithm (a disk). A blob of one
        that a push writes meanwhile is fresh, so kept (its mtime is past the cutoff)."""
        if not self.store.driver.walks_local:
            return ()
        present = set(await self.store.children(layout.BLOBS))
        return tuple(a for a in ALGORITHMS if a not in present)

    async def _link_times(
        self, scans: Iterable[RepoScan], digests: Iterable[Digest]
    ) -> dict[tuple[str, Digest], float]:
        """The mtimes of the layer links of ``digests`` in the repositories that have a
        folder for them (the scans do not open those folders)."""
        with_layers = [s for s in scans if s.layers]
        if not with_layers:  # as a rule (gcwalk.LOOSE): no set of 55,600 made for nothing
            return {}
        wanted = set(digests)
        links = [(s.name, d) for s in with_layers for d in s.layers & wanted]
        infos = await self.store.stat_many([layout.layer_link(*item) for item in links])
        return {
            link: info.mtime for link, info in zip(links, infos, strict=True) if info is not None
        }

    async def _set_aside(self, candidates: list[Digest]) -> list[tuple[int, float] | None]:
        """Move each candidate's ``data`` aside (quarantine) unless it was written within
        the grace window, listing them in the journal first; each one's (size, mtime)."""
        await write_journal(self.store, candidates)
        self.journal = True
        # Not synced: after a crash a blob is at either name, and both are handled.
        folders = layout.blob_dirs(candidates)
        answers = await self.store.move_stale_in(
            folders, "data", QUARANTINE, self.cutoff, sync=False
        )
        self.quarantined = [d for d, (_, moved) in zip(candidates, answers, strict=True) if moved]
        # Their folders, for the deletes (making 55,600 paths again cost 0.01 s, serial).
        self.quarantined_dirs = [f for f, (_, moved) in zip(folders, answers, strict=True) if moved]
        return [stat for stat, _ in answers]

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
        rescans = None if self.early is None else await self.early.settled(unkept.keys())
        if rescans is None:
            rescans = await recheck(
                self.store,
                scans,
                unkept.keys(),
                self.marked_at,
                self.cutoff,
                quarantined,
                self.skipped,
            )
        if rescans is None:
            rescans = await self._scan_all("re-checking", mark=False)
        relinked = await self._relinked(scans, rescans, unkept, quarantined)
        self.result.blobs_relinked = len(relinked)
        await each(relinked, self._release)
        # In digest order, as the candidates were (see GarbageCollector._unmarked_blobs).
        if relinked or quarantined is not self.quarantined:
            # Some stay, or the sweep moved them (object storage): no paths kept to reuse.
            deleted = [d for d in quarantined if d not in relinked]
            folders = layout.blob_dirs(deleted)
        else:  # every blob _set_aside moved goes (the rule): with the paths it made
            deleted, folders = quarantined, self.quarantined_dirs
        # With its folder, as registry:2 removes it; unless a push of the same bytes
        # refilled it meanwhile: then only the quarantined copy goes.
        progress = self._progress("sweeping: blobs deleted", len(deleted))
        await self.store.delete_in(folders, QUARANTINE, progress.tick)
        put_back = await put_back_blobs(self.store)
        if put_back:  # linked after the re-check read their repository (BlobStore.confirm)
            self.result.blobs_relinked += len(put_back & set(deleted))
            deleted = [d for d in deleted if d not in put_back]
        if len(deleted) == len(doomed):  # the same blobs (deleted ones are doomed ones)
            self.result.blobs_deleted = dict(doomed)
        else:
            for digest in deleted:
                self.result.blobs_deleted[digest] = doomed[digest]
        if self.journal:
            await close_journal(self.store)
        # The doomed dict's keys where every doomed blob went (a set of 55,600 made again
        # was 5 ms of the bench store's run, serial).
        gone_blobs = doomed.keys() if len(deleted) == len(doomed) else set(deleted)
        # Each repository once: the re-check's scans are the mark's where it did not read
        # one again (reading both halves again was 0.01 s of the bench store's run).
        read = {id(scan): scan for scan in (*scans.values(), *rescans.values())}
        await self._unlink_layers(list(read.values()), gone_blobs)
        empty = await self._empty_repositories(rescans.values(), gone, gone_blobs)
        # Nested ones first: their parents may empty with them. One a push came into
        # since the re-check stays (gcremove).
        empty = sorted(
            [n for n in reversed(empty) if await remove_repository(self.store, n, self._fresh)]
        )
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
        """Unlink the untagged manifests planned for deletion that are still untagged and
        not pushed again (a fresh link), after reading the repository's tags and manifests
        again; then read them once more and link back what a tag or a manifest pushed
        in between needs (the server, having written a tag, looks at its manifest's link
        once more too: RepositoryManifests.store; one of the two sees the other)."""
        before = scans[name]
        now = await scan_repository(self.store, name, self.cutoff)
        await read_refs(self.store, now.revisions - before.revisions, self.refs)
        removed = planned - keep_closure(
            now.revisions, self._manifest_roots(now, planned), self.refs
        )
        if not removed:
            return removed

        async def unlink(digest: Digest) -> None:
            for tag in now.tag_names:
                entry = layout.tag_index_link(name, tag, digest).removesuffix("/link")
                await self.store.delete(entry)
            await self.store.delete(layout.manifest_revision_dir(name, digest))
            subject = self.refs[digest].subject
            if subject is not None:
                link = layout.referrer_link(name, subject, digest).removesuffix("/link")
                await self.store.delete(link)

        await each(removed, unlink)
        after = await scan_repository(self.store, name, self.cutoff)
        await read_refs(self.store, after.revisions - now.revisions, self.refs)
        roots = self._manifest_roots(after, planned)
        needed = keep_closure(after.revisions | removed, roots, self.refs) & removed
        await each(needed - after.revisions, lambda digest: self._link_back(after, digest))
        removed -= needed
        self.result.manifests_deleted += [(name, digest) for digest in removed]
        return removed

    def _manifest_roots(self, scan: RepoScan, planned: set[Digest]) -> set[Digest]:
        """What keeps manifests of a repository read again during the sweep: every one not
        planned for deletion, the tagged ones, and those linked again since (fresh)."""
        fresh = {d for d in scan.revisions & planned if self._fresh(scan.revision_mtimes[d])}
        return (scan.revisions - planned) | scan.tagged | fresh

    async def _link_back(self, scan: RepoScan, digest: Digest) -> None:
        """Link again a manifest the sweep unlinked that a tag or a manifest pushed since
        needs: its revision link, its tags' index entries, its referrer link."""
        name, driver = scan.name, self.store.driver
        await write_link(driver, layout.manifest_revision_link(name, digest), digest)
        for tag, tagged in scan.tags.items():
            if tagged == digest:
                await write_link(driver, layout.tag_index_link(name, tag, digest), digest)
        subject = self.refs[digest].subject
        if subject is not None:
            await write_link(driver, layout.referrer_link(name, subject, digest), digest)

    async def _release(self, digest: Digest) -> None:
        await restore(self.store, digest)

    async def _relinked(
        self,
        scans: dict[str, RepoScan],
        rescans: dict[str, RepoScan],
        unkept: dict[str, set[Digest]],
        quarantined: list[Digest],
    ) -> set[Digest]:
        """Quarantined blobs that something linked after the mark read the store: a layer
        link that is new or rewritten (the mark read another mtime, or none), a new
        manifest (or one a new tag saved from deletion) referencing it, or an upload begun
        in its repository."""
        now_links = await self._link_times(rescans.values(), quarantined)
        protect = {link[1] for link, t in now_links.items() if self.layer_links.get(link) != t}
        manifests: set[Digest] = set()
        for name, now in rescans.items():
            before = scans.get(name)
            if now is before and name not in unkept:  # unchanged since the mark (gcrecheck)
                continue
            if before is None:  # new since the mark
                before = RepoScan(name)
            if now.upload_active and not before.upload_active:
                protect |= now.layers
            manifests |= (now.revisions - before.revisions) | (
                now.revisions & unkept.get(name, set())
            )
        if not (protect or manifests):  # nothing linked since the mark, as a rule
            return set()
        aside = set(quarantined)
        # A manifest linked again after the mark may have its bytes aside.
        await read_refs(self.store, manifests, self.refs, aside)
        for digest in manifests:
            protect.add(digest)
            protect |= self.refs[digest].references
        return protect & aside

    async def _unlink_layers(self, scans: list[RepoScan], deleted: AbstractSet[Digest]) -> None:
        # Every folder's: a link written after the mark read its folder goes too.
        links = sorted({layout.layer_link(s.name, d) for s in scans for d in s.layers & deleted})
        for start in range(0, len(links), _SWEEP_BATCH):
            await self.store.delete_many(links[start : start + _SWEEP_BATCH])
        self.result.layer_links_deleted = sum(d in deleted for _, d in self.layer_links)

    async def _empty_repositories(
        self,
        scans: Iterable[RepoScan],
        gone: dict[str, set[Digest]],
        deleted: AbstractSet[Digest],
    ) -> list[str]:
        """Repositories with no manifest left, no upload and nothing linked within the grace
        window."""

        def emptied(scans: Iterable[RepoScan]) -> list[RepoScan]:
            # A set made per repository only where it lost manifests (0.01 s of the bench
            # store's run, serial, where none did).
            return [
                s
                for s in scans
                if not s.uploads
                and not (s.revisions if s.name not in gone else s.revisions - gone[s.name])
            ]

        candidates = emptied(scans)
        if self.skipped and candidates:
            # Their links of the algorithms the mark skipped count too: read whole again.
            candidates = emptied(
                await each(
                    [s.name for s in candidates],
                    lambda name: scan_repository(
                        self.store, name, self.cutoff, layer_folders=True, tag_links=False
                    ),
                )
            )

        async def is_stale(scan: RepoScan) -> bool:
            for digest in scan.layers - deleted:
                info = await self.store.stat(layout.layer_link(scan.name, digest))
                if info is not None and self._fresh(info.mtime):
                    self.result.repositories_kept_fresh += 1
                    return False
            return True

        stale = await each(candidates, is_stale)
        return sorted(s.name for s, ok in zip(candidates, stale, strict=True) if ok)
