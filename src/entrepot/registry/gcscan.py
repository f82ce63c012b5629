"""What garbage collection reads: every repository's links and every blob, read with many
storage calls in flight at once (bounded), through the driver contract only, so it works
the same on a local disk and on object storage.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import repeat

from entrepot.oci.digest import Digest, trusted_pair
from entrepot.registry import layout
from entrepot.registry.digestnames import digest_at, link_digest
from entrepot.registry.gcrefs import Referenced, read_refs
from entrepot.registry.gcwalk import (
    Record,
    blob_records,
    repository_args,
    repository_records,
)
from entrepot.registry.manifestrefs import ManifestRefs, manifest_refs, refs_of
from entrepot.registry.storecalls import Limited, each
from entrepot.storage import FileInfo
from entrepot.storage.driver import Fold, Shard

# Each blob found, with its ``data``'s size and mtime (None: no ``data``; UNREAD: not
# read yet, a folder found on a disk: see find_blobs).
Blobs = dict[Digest, FileInfo | None]
UNREAD = FileInfo("", 0, 0.0, True)
_MARKERS = frozenset({"_layers", "_manifests", "_uploads", "_referrers"})


async def find_repositories(store: Limited) -> list[str]:
    """Every directory under ``repositories/`` that holds a repository's links or uploads
    (the catalog lists fewer: not one that holds only uploads), walked level by level in
    parallel."""
    found: list[str] = []

    async def walk(name: str) -> None:
        children = await store.children(layout.repository(name) if name else layout.REPOSITORIES)
        if any(child in _MARKERS for child in children):
            found.append(name)
        below = [f"{name}/{c}" if name else c for c in children if not c.startswith("_")]
        await each(below, walk)

    await walk("")
    found.sort()
    return found


def _blob_fold(directory: str) -> str | None:
    """A blob's folder (``<algorithm>/<2 hex>/<encoded>/``) is its ``data``."""
    return "data" if directory.count("/") == 3 else None


async def find_blobs(store: Limited, progress: Progress | None = None) -> Blobs:
    """Every blob under ``blobs/`` (registry:2 enumerates the same) with its ``data``'s size
    and mtime; None for a blob folder without ``data`` (one an interrupted collection left
    aside). On object storage one flat ``scan``, sizes included; where the driver walks
    locally (a disk) a listing of each ``<algorithm>/<2 hex>`` folder (gcwalk's), each blob
    UNREAD: a stat of every ``data`` cost more than the rest of the mark, and only the
    unmarked blobs need theirs (read_blobs)."""
    if store.driver.walks_local:
        return await _listed_blobs(store, progress)
    found: Blobs = {}
    async for batch in store.scan(layout.BLOBS, _blob_fold):
        for info in batch:
            algorithm, _, rest = info.key.partition("/")
            encoded, _, name = rest.partition("/")[2].partition("/")
            digest = digest_at(algorithm, encoded)
            if digest is None:
                continue
            if name == "data":
                found[digest] = info
            else:
                found.setdefault(digest, None)
        if progress is not None:
            progress.tick(len(batch))
    return found


async def _listed_blobs(store: Limited, progress: Progress | None) -> Blobs:
    found: Blobs = {}
    async for batch in store.walk_local(layout.BLOBS, blob_records, (), None):
        for algorithm, names in batch:
            found.update(zip(map(trusted_pair, zip(repeat(algorithm), names)), repeat(UNREAD)))
            if progress is not None:
                progress.tick(len(names))
    return found


async def read_blobs(store: Limited, blobs: Blobs, digests: Iterable[Digest]) -> None:
    """Fill in the UNREAD ones of ``digests`` in ``blobs``."""
    unread = [d for d in digests if blobs[d] is UNREAD]
    infos = await store.stat_many([layout.blob_data(d) for d in unread])
    for digest, info in zip(unread, infos, strict=True):
        blobs[digest] = None if info is None or info.is_dir else info


@dataclass
class RepoScan:
    """One repository's links, as read at one moment."""

    name: str
    revisions: set[Digest] = field(default_factory=set)
    revision_mtimes: dict[Digest, float] = field(default_factory=dict)
    unlinked_revisions: set[Digest] = field(default_factory=set)  # folders without a link
    # Every layer folder (its name is the digest; the link in it is read only where it
    # matters: see repository_fold): a link-less one left by a blob DELETE too. From the
    # mark of a disk where every manifest is kept, only those the repository's manifests
    # do not reference, unless it has uploads (gcwalk.LOOSE): the others are marked.
    layers: set[Digest] = field(default_factory=set)
    tags: dict[str, Digest] = field(default_factory=dict)  # tag -> what it points at now
    # Every tag, with a link or not; none from a scan without tag links (scan_store).
    tag_names: list[str] = field(default_factory=list)
    uploads: list[str] = field(default_factory=list)
    upload_active: bool = False

    @property
    def tagged(self) -> set[Digest]:
        return set(self.tags.values())


def repository_fold(tag_links: bool = True) -> Fold:
    """The scan of ``repositories/`` opens no layer folder (the mark needs the digests,
    which the folders' names are), reads each revision's link and, with ``tag_links``,
    each tag's current link (without, it does not enter ``_manifests/tags``), and does not
    enter ``_referrers``. Module-level functions:
    a disk's walk runs in a process of its own (StorageDriver.scan_apart)."""
    return _fold_with_tags if tag_links else _fold_without_tags


def _repository_leaf(directory: str, tag_links: bool) -> str | None:
    # The first segment starting with "_" (the marker) after the first segment; found
    # with one search: the walk asks for each of its 150,000 folders (bench store).
    cut = directory.find("/_")
    if cut < 0 or directory[0] == "_":
        return None
    return marker_leaf(directory[cut + 1 : -1].split("/"), tag_links)


def _fold_with_tags(directory: str) -> str | None:
    return _repository_leaf(directory, True)


def _fold_without_tags(directory: str) -> str | None:
    return _repository_leaf(directory, False)


def marker_leaf(parts: list[str], tag_links: bool, layer_links: bool = False) -> str | None:
    """``repository_fold`` for a folder of one repository: ``parts`` from its marker; with
    ``layer_links``, a layer folder is its link."""
    marker, n = parts[0], len(parts)
    if marker == "_layers":
        return ("link" if layer_links else "") if n == 3 else None
    if marker == "_manifests" and n == 2 and parts[1] == "tags" and not tag_links:
        return ""  # the tags are not wanted: not listed either
    if marker == "_manifests" and n > 2:
        if parts[1] == "revisions":
            return "link" if n == 4 else None
        if parts[1] == "tags" and n == 3:
            return "current/link" if tag_links else ""
        return None
    return "" if marker == "_referrers" else None


def mark_reads(key: str) -> str | None:
    """What the mark reads of a repository's objects (see scan_store): a tag's current
    link itself, a revision link's manifest. Module-level: read where the walk is."""
    head, _, rest = key.rpartition("/_manifests/")
    if not head:
        return None
    parts = rest.split("/")
    if len(parts) == 4 and parts[0] == "tags" and parts[2:] == ["current", "link"]:
        return key
    if len(parts) == 4 and parts[0] == "revisions" and parts[3] == "link":
        digest = digest_at(parts[1], parts[2])
        return None if digest is None else layout.blob_data(digest)
    return None


class _Scanner:
    """Builds RepoScans from the objects under ``repositories/``: a key's first segment
    starting with "_" (which no repository name component may) ends the repository's
    name and says what the key is."""

    def __init__(
        self,
        fresh_after: float,
        layer_folders: bool = True,
        refs: dict[Digest, ManifestRefs] | None = None,
        referenced: Referenced | None = None,
    ) -> None:
        self.fresh_after = fresh_after
        self.refs = refs  # where the manifests that come read (mark_reads) go
        self.referenced = referenced  # or, from gcwalk's walk, where their references go
        self.layer_folders = layer_folders  # a layer folder without its link counts
        self.scans: dict[str, RepoScan] = {}
        # Found, not read yet: tags with a current link, and revisions (see scan_store).
        self.unread_tags: list[tuple[str, str]] = []
        self.unread_revisions: list[Digest] = []

    def add(self, name: str, parts: list[str], info: FileInfo) -> None:
        """One object (or folded folder: ``info.is_dir``, ``parts`` without the "" after
        its last "/") of repository ``name``; ``parts`` from the marker."""
        scan = self.scans.get(name)
        if scan is None:
            scan = self.scans[name] = RepoScan(name)
        n = len(parts)
        marker = parts[0]
        if marker == "_manifests" and n > 2:
            if parts[1] == "revisions":
                if n == 5 and parts[4] == "link":
                    digest = digest_at(parts[2], parts[3])
                    if digest is not None:
                        scan.revision_mtimes[digest] = info.mtime
                        if info.data is None or self.refs is None:
                            self.unread_revisions.append(digest)
                        elif digest not in self.refs:
                            self.refs[digest] = manifest_refs(info.data)
                elif n == 4 and info.is_dir:
                    digest = digest_at(parts[2], parts[3])
                    if digest is not None:
                        scan.unlinked_revisions.add(digest)
            elif parts[1] == "tags":
                if not scan.tag_names or scan.tag_names[-1] != parts[2]:
                    scan.tag_names.append(parts[2])
                if n == 5 and parts[3] == "current" and parts[4] == "link":
                    if info.data is None:  # not read yet, or missing: read (again)
                        self.unread_tags.append((name, parts[2]))
                    elif (digest := link_digest(info.data)) is not None:
                        scan.tags[parts[2]] = digest
        elif marker == "_layers" and n == 3 + (not info.is_dir):
            digest = digest_at(parts[1], parts[2])
            linked = self.layer_folders if info.is_dir else parts[3] == "link"
            if digest is not None and linked:
                scan.layers.add(digest)
        elif marker == "_uploads" and n > 1:
            # An upload's folder counts before its first file: a POST that just made it.
            if not scan.uploads or scan.uploads[-1] != parts[1]:
                scan.uploads.append(parts[1])
            if n == 3 and not info.is_dir and layout.holds_bytes(parts[2]):
                scan.upload_active |= info.mtime > self.fresh_after

    def add_keys(self, batch: list[FileInfo]) -> None:
        """Objects with keys relative to ``repositories/``."""
        name, marks = "", "\0"  # the last repository, and where its objects' keys start
        for info in batch:
            key = info.key
            if not key.startswith(marks):  # a repository's objects come one after the other
                cut = key.find("/_")
                if cut < 0 or key[0] == "_":
                    continue
                name, marks = key[:cut], key[: cut + 2]
            parts = key[len(name) + 1 :].split("/")
            if info.is_dir:
                parts.pop()
            self.add(name, parts, info)

    def add_records(self, records: list[Record]) -> int:
        """Repositories as gcwalk's walk found them; how many objects they hold. (Digests
        made by map(trusted_pair, ...), and steps skipped for what is empty, as most is:
        this took a third less of the main process's CPU on the bench store.)"""
        refs, referenced, scans, objects = self.refs, self.referenced, self.scans, 0
        for name, revisions, unlinked, layers, tag_names, tags, uploads, newest in records:
            scan = scans.get(name)
            if scan is None:
                scan = scans[name] = RepoScan(name)
            for algorithm, encoded, mtime, pairs in revisions:
                digest = trusted_pair((algorithm, encoded))
                scan.revision_mtimes[digest] = mtime
                if pairs is None or refs is None:
                    self.unread_revisions.append(digest)
                elif referenced is not None:
                    referenced.pairs.update(pairs[0])
                    referenced.manifests.add(digest)
                elif digest not in refs:
                    refs[digest] = refs_of(pairs)
            if unlinked:
                scan.unlinked_revisions.update(map(trusted_pair, unlinked))
            if layers:  # none, mostly: every layer referenced (gcwalk.LOOSE)
                scan.layers.update(map(trusted_pair, layers))
            if tag_names:
                scan.tag_names += tag_names
            for tag, algorithm, encoded in tags:
                scan.tags[tag] = trusted_pair((algorithm, encoded))
            if uploads:
                scan.uploads += uploads
            scan.upload_active |= newest > self.fresh_after
            objects += 1 + len(revisions) + len(unlinked) + len(layers) + len(tag_names)
        return objects

    async def read_tags(self, store: Limited) -> None:
        """Read what each tag found since the last call points at."""

        async def read(item: tuple[str, str]) -> None:
            name, tag = item
            digest = await store.read_link(layout.tag_current_link(name, tag))
            if digest is not None:
                self.scans[name].tags[tag] = digest

        links, self.unread_tags = self.unread_tags, []
        await each(links, read)

    async def finish(self, store: Limited) -> dict[str, RepoScan]:
        """Read what each tag's current link points at, and settle the sets."""
        await self.read_tags(store)
        # With the CPUs idle after the walks: a list or dict of one, as most are, is
        # settled already (sorting each was 0.03 s of the bench store's 10,000).
        for scan in self.scans.values():
            scan.revisions = set(scan.revision_mtimes)
            if len(scan.tag_names) > 1:
                scan.tag_names = sorted(set(scan.tag_names))
            if len(scan.uploads) > 1:
                scan.uploads = sorted(set(scan.uploads))
            if len(scan.tags) > 1:
                scan.tags = dict(sorted(scan.tags.items()))
        return self.scans


async def scan_store(
    store: Limited,
    fresh_after: float,
    progress: Progress | None = None,
    *,
    tag_links: bool = True,
    refs: dict[Digest, ManifestRefs] | None = None,
    referenced: Referenced | None = None,
    algorithms: tuple[str, ...] | None = None,
) -> dict[str, RepoScan]:
    """Every repository's revisions (with their links' mtimes), layer folders, tags (with
    ``tag_links``, what each points at) and upload sessions (a repository left with empty
    folders is found by them); an upload written to after ``fresh_after`` is in
    progress. Where the driver walks locally (a disk), gcwalk's walk reads the tags and,
    with ``refs``, the manifests (into ``refs``, as read_refs, or, with ``referenced``,
    what they reference into it) as it goes; elsewhere one
    folded ``scan`` of ``repositories/`` (a walk apart reads them itself: ``mark_reads``)
    and what a batch names but did not read is read while the walk goes on; in the
    store's ``walk_shards``. With ``algorithms``, gcwalk's walk lists the link folders of
    those algorithms only (see gcwalk.ONLY)."""
    scanner = _Scanner(fresh_after, refs=refs, referenced=referenced)
    ahead: list[asyncio.Future[None]] = []

    def read_ahead(objects: int) -> None:
        """The tags and manifests the walk did not read, read while it goes on."""
        if progress is not None:
            progress.tick(objects)
        if scanner.unread_tags:
            ahead.append(asyncio.ensure_future(scanner.read_tags(store)))
        if refs is not None and scanner.unread_revisions:
            found, scanner.unread_revisions = scanner.unread_revisions, []
            ahead.append(asyncio.ensure_future(read_refs(store, found, refs, settle_missing=False)))

    async def walk(shard: Shard | None) -> None:
        if store.driver.walks_local:
            args = repository_args(
                tag_links, refs is not None, algorithms, loose=referenced is not None
            )
            async for records in store.walk_local(
                layout.REPOSITORIES, repository_records, args, shard
            ):
                read_ahead(scanner.add_records(records))
            return
        read = None if refs is None else mark_reads
        async for batch in store.scan(layout.REPOSITORIES, repository_fold(tag_links), read, shard):
            scanner.add_keys(batch)
            read_ahead(len(batch))

    try:
        await asyncio.gather(*(walk(shard) for shard in store.walk_shards()))
        await asyncio.gather(*ahead)
    finally:  # the walk failed, or a read did: the others are not wanted
        for task in ahead:
            task.cancel()
    return await scanner.finish(store)


async def scan_repository(
    store: Limited,
    name: str,
    fresh_after: float,
    *,
    layer_folders: bool = False,
    tag_links: bool = True,
) -> RepoScan:
    """One repository's ``scan_store`` (its marker folders only: a repository nested in it
    is not its content), where ``layers`` are the linked ones only, unless
    ``layer_folders``."""
    scanner = _Scanner(fresh_after, layer_folders=layer_folders)
    scanner.scans[name] = RepoScan(name)

    async def folder(marker: str) -> None:
        def fold(directory: str) -> str | None:
            return marker_leaf([marker, *directory.split("/")[:-1]], tag_links, True)

        prefix = f"{layout.repository(name)}/{marker}"
        async for batch in store.driver.scan(prefix, fold=fold):
            for info in batch:
                parts = info.key.split("/")
                scanner.add(name, [marker, *(parts[:-1] if info.is_dir else parts)], info)

    await each(("_manifests", "_layers", "_uploads"), folder)
    return (await scanner.finish(store))[name]


class Progress:
    """A line every few seconds on a long run: ``<what>: done/total`` (or ``done``)."""

    def __init__(
        self, emit: Callable[[str], None], what: str, total: int | None, every: float
    ) -> None:
        self.emit, self.what, self.total = emit, what, total
        self.every = every
        self.done = 0
        self.last = time.monotonic()

    def tick(self, count: int = 1) -> None:
        self.done += count
        if time.monotonic() - self.last >= self.every:
            self.last = time.monotonic()
            total = "" if self.total is None else f"/{self.total}"
            self.emit(f"{self.what}: {self.done}{total}")
