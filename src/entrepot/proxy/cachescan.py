"""What the cache holds, as images: the units the janitor evicts (proxy/janitor.py).

An image is a manifest of a cached repository that a tag points at, or that was pulled by
digest and is no index's child: with its tags, its index children and referrers (manifests
whose ``subject`` is in it), and the blobs all those reference. Its last pull is the latest
of: a recorded pull of any of its manifests (registry/pulls.py: so a pull by digest refreshes
the image its tag names), the last time one of its tags was fetched or revalidated, and
when it was cached. A blob held by a cached repository that no cached manifest references
(fetched on its own) is a unit by itself, last used when it was cached.

Pushed content is never part of a unit: a blob or manifest that a pushed repository links
(or a cache repository holding pushed tags, with allowpush) is protected.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from entrepot.oci.digest import Digest
from entrepot.registry import layout
from entrepot.registry.gc import keep_closure
from entrepot.registry.gcrefs import read_refs
from entrepot.registry.gcscan import RepoScan, find_repositories, scan_repository
from entrepot.registry.manifestrefs import ManifestRefs
from entrepot.registry.pulls import DigestPulls
from entrepot.registry.storecalls import Limited, each

UPLOAD_GRACE = 3600.0  # an upload written to this recently is in progress


@dataclass
class CacheUnit:
    """What is evicted together: one cached image (``root`` set) or one lone blob."""

    repository: str
    root: Digest | None
    manifests: set[Digest] = field(default_factory=set)
    tags: list[str] = field(default_factory=list)
    blobs: set[Digest] = field(default_factory=set)  # held and unprotected, manifests too
    last_pulled: float = 0.0
    # Every blob it references, pushed content's too: their links in this repository go
    # with it (or the repository stays listed, holding links and no image).
    linked: set[Digest] = field(default_factory=set)

    @property
    def named(self) -> str:
        """How an operator knows the image: ``repository:tag`` (its first tag), else its
        label."""
        return f"{self.repository}:{self.tags[0]}" if self.tags else self.label

    @property
    def label(self) -> str:
        if self.root is None:
            return f"{self.repository} blob {sorted(self.blobs, key=str)[0]}"
        return f"{self.repository}@{self.root}"


@dataclass
class CacheScan:
    units: list[CacheUnit]
    sizes: dict[Digest, int]  # held, unprotected blobs -> bytes
    layer_links: dict[Digest, set[str]]  # blob -> cache repositories with a layer link to it


async def _tag_times(store: Limited, name: str, tags: list[str]) -> dict[str, float]:
    infos = await each(tags, lambda tag: store.stat(layout.tag_current_link(name, tag)))
    return {tag: info.mtime for tag, info in zip(tags, infos, strict=True) if info is not None}


async def linked_digests(store: Limited, name: str) -> set[Digest]:
    """The blobs and manifests a repository links (a manifest registry:2 deleted, whose
    folder stays without its link, counts too: cheaper, and only ever keeps more)."""
    layers, revisions = await asyncio.gather(
        store.digests(layout.layers_dir(name)),
        store.digests(f"{layout.repository(name)}/_manifests/revisions"),
    )
    return layers | revisions


async def has_pushed_tags(store: Limited, scan: RepoScan) -> bool:
    found = await each(
        scan.tag_names, lambda tag: store.stat(f"{layout.tag_dir(scan.name, tag)}/pushed")
    )
    return any(info is not None for info in found)


def _images(
    scan: RepoScan,
    refs: dict[Digest, ManifestRefs],
    pulls: DigestPulls,
    tag_times: dict[str, float],
) -> list[CacheUnit]:
    valid = scan.revisions
    children = {c for d in valid for c in refs[d].children}
    referrers = {d for d in valid if refs[d].subject in valid}
    roots = (scan.tagged & valid) | (valid - children - referrers)
    units = []
    for root in sorted(roots, key=str):
        members = keep_closure(valid, [root], refs)
        tags = sorted(t for t, d in scan.tags.items() if d == root)
        blobs = set(members)
        for member in members:
            blobs |= refs[member].references
        times = [scan.revision_mtimes.get(root, 0.0)]
        times += [pulls.get((scan.name, str(m)), 0.0) for m in members]
        times += [tag_times.get(t, 0.0) for t in tags]
        units.append(CacheUnit(scan.name, root, members, tags, blobs, max(times), set(blobs)))
    return units


async def scan_cache(
    store: Limited,
    is_cache: Callable[[str], bool],
    pulls: DigestPulls,
    refs: dict[Digest, ManifestRefs],
    now: float,
) -> CacheScan:
    """Read every repository; ``refs`` keeps manifests' references across runs (a manifest
    never changes), and is pruned to what is still cached."""
    names = await find_repositories(store)
    scans = await each(
        [n for n in names if is_cache(n)],
        lambda name: scan_repository(store, name, now - UPLOAD_GRACE),
    )
    pushed_marks = await each(scans, lambda s: has_pushed_tags(store, s))
    cache = [s for s, pushed in zip(scans, pushed_marks, strict=True) if not pushed]
    pushed_names = [n for n in names if not is_cache(n)]
    pushed_names += [s.name for s, pushed in zip(scans, pushed_marks, strict=True) if pushed]
    protected: set[Digest] = set()
    for links in await each(pushed_names, lambda name: linked_digests(store, name)):
        protected |= links
    await read_refs(store, (d for s in cache for d in s.revisions), refs)
    for digest in set(refs) - {d for s in cache for d in s.revisions}:
        del refs[digest]
    tag_times = await each(cache, lambda s: _tag_times(store, s.name, sorted(s.tags)))
    units: list[CacheUnit] = []
    layer_links: dict[Digest, set[str]] = {}
    for scan, times in zip(cache, tag_times, strict=True):
        images = _images(scan, refs, pulls, times)
        referenced = {b for unit in images for b in unit.blobs}
        units += images
        units += [CacheUnit(scan.name, None, blobs={d}) for d in scan.layers - referenced]
        for digest in scan.layers:
            layer_links.setdefault(digest, set()).add(scan.name)
    wanted = {b for unit in units for b in unit.blobs} - protected
    infos = await each(wanted, lambda d: store.stat(layout.blob_data(d)))
    sizes: dict[Digest, int] = {}
    mtimes: dict[Digest, float] = {}
    for digest, info in zip(wanted, infos, strict=True):
        if info is not None:  # else linked but not held: evicted, or never fetched
            sizes[digest], mtimes[digest] = info.size, info.mtime
    kept = []
    for unit in units:
        unit.blobs &= sizes.keys()
        if unit.root is None:
            if not unit.blobs:
                continue
            unit.last_pulled = mtimes[next(iter(unit.blobs))]
        kept.append(unit)
    return CacheScan(kept, sizes, layer_links)
