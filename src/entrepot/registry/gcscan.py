"""What garbage collection reads: every repository's links and every blob, read with many
storage calls in flight at once (bounded), through the driver contract only, so it works
the same on a local disk and on object storage.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from entrepot.oci.digest import Digest
from entrepot.oci.errors import RegistryError
from entrepot.registry import layout
from entrepot.registry.segments import last_segment
from entrepot.storage import FileInfo, StorageDriver, StorageNotFound

T = TypeVar("T")
R = TypeVar("R")

QUARANTINE = "collecting"  # next to a blob's ``data`` while the sweep re-checks it
_MARKERS = frozenset({"_layers", "_manifests", "_uploads", "_referrers"})


class Limited:
    """The driver calls collection makes, at most ``limit`` of them in flight."""

    def __init__(self, driver: StorageDriver, limit: int) -> None:
        self.driver = driver
        self._slots = asyncio.Semaphore(limit)

    async def children(self, prefix: str) -> list[str]:
        """``list``, with a missing prefix (or one left empty) as no children."""
        async with self._slots:
            try:
                return await self.driver.list(prefix)
            except StorageNotFound:
                return []

    async def stat(self, key: str) -> FileInfo | None:
        async with self._slots:
            try:
                return await self.driver.stat(key)
            except StorageNotFound:
                return None

    async def get(self, key: str) -> bytes | None:
        async with self._slots:
            try:
                return await self.driver.get_content(key)
            except StorageNotFound:
                return None

    async def move(self, src: str, dst: str, *, sync: bool = True) -> bool:
        async with self._slots:
            try:
                await self.driver.move(src, dst, sync=sync)
            except StorageNotFound:
                return False
            return True

    async def delete(self, key: str) -> bool:
        async with self._slots:
            try:
                await self.driver.delete(key)
            except StorageNotFound:
                return False
            return True

    async def digests(self, prefix: str) -> set[Digest]:
        """The digests named by ``<prefix>/<algorithm>/<encoded>`` directories."""
        found: set[Digest] = set()
        for algorithm in await self.children(prefix):
            for encoded in await self.children(f"{prefix}/{algorithm}"):
                digest = parse_digest(f"{algorithm}:{encoded}")
                if digest is not None:
                    found.add(digest)
        return found

    async def linked(self, prefix: str) -> dict[Digest, float]:
        """The digests under ``prefix`` (as ``digests``) whose ``link`` file exists, with its
        mtime: registry:2 deletes a manifest by removing the link and keeps the folder."""
        found: dict[Digest, float] = {}
        for digest in await self.digests(prefix):
            info = await self.stat(f"{prefix}/{digest.algorithm}/{digest.encoded}/link")
            if info is not None:
                found[digest] = info.mtime
        return found

    async def read_link(self, key: str) -> Digest | None:
        raw = await self.get(key)
        return None if raw is None else parse_digest(raw.decode("ascii", "replace").strip())


async def each(items: Iterable[T], work: Callable[[T], Awaitable[R]]) -> list[R]:
    """``work`` on every item at once (the driver wrapper bounds the storage calls)."""
    return list(await asyncio.gather(*(work(item) for item in items)))


def parse_digest(text: str) -> Digest | None:
    try:
        return Digest.parse(text)
    except RegistryError:
        return None


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


async def find_blobs(store: Limited) -> set[Digest]:
    """Every blob directory under ``blobs/`` (registry:2 enumerates the same). Listed
    shard by shard: a walk down to each blob's ``data`` costs a local disk a directory
    read per blob (about twice as long in all)."""
    found: set[Digest] = set()

    async def shard(algorithm: str, prefix: str) -> None:
        for encoded in await store.children(f"{layout.BLOBS}/{algorithm}/{prefix}"):
            digest = parse_digest(f"{algorithm}:{encoded}")
            if digest is not None:
                found.add(digest)

    for algorithm in await store.children(layout.BLOBS):
        prefixes = await store.children(f"{layout.BLOBS}/{algorithm}")
        await asyncio.gather(*(shard(algorithm, prefix) for prefix in prefixes))
    return found


@dataclass
class RepoScan:
    """One repository's links, as read at one moment."""

    name: str
    revisions: set[Digest] = field(default_factory=set)
    revision_mtimes: dict[Digest, float] = field(default_factory=dict)
    layers: set[Digest] = field(default_factory=set)
    tags: dict[str, Digest] = field(default_factory=dict)  # tag -> what it points at now
    tag_names: list[str] = field(default_factory=list)  # every tag, with a link or not
    uploads: list[str] = field(default_factory=list)
    upload_active: bool = False

    @property
    def tagged(self) -> set[Digest]:
        return set(self.tags.values())


async def scan_repository(store: Limited, name: str, fresh_after: float) -> RepoScan:
    """Read a repository's revisions, layer links, tags (what each points at) and upload
    sessions; an upload written to after ``fresh_after`` is in progress. One call after
    another: the parallelism is across repositories (fewer tasks, less overhead)."""
    scan = RepoScan(name)
    scan.revision_mtimes = await store.linked(f"{layout.repository(name)}/_manifests/revisions")
    scan.revisions = set(scan.revision_mtimes)
    scan.layers = await store.digests(layout.layers_dir(name))
    scan.tag_names = await store.children(layout.tags_dir(name))
    for tag in scan.tag_names:
        digest = await store.read_link(layout.tag_current_link(name, tag))
        if digest is not None:
            scan.tags[tag] = digest
    scan.uploads = await store.children(layout.uploads_dir(name))
    for upload_id in scan.uploads:
        if await _written_after(store, name, upload_id, fresh_after):
            scan.upload_active = True
    return scan


async def _written_after(store: Limited, name: str, upload_id: str, fresh_after: float) -> bool:
    """Whether the upload got bytes after ``fresh_after``: its ``data`` was written then,
    or, where chunks are segments of their own (see ``segments``), its newest one was."""
    info = await store.stat(layout.upload_data(name, upload_id))
    if info is None or info.mtime > fresh_after or store.driver.appends_in_place:
        return info is not None and info.mtime > fresh_after
    folder = layout.upload_dir(name, upload_id)
    newest = last_segment(await store.children(folder))
    latest = None if newest is None else await store.stat(f"{folder}/{newest}")
    return latest is not None and latest.mtime > fresh_after


@dataclass(frozen=True, slots=True)
class ManifestRefs:
    """What a stored manifest points at: ``references`` as registry:2's ``References()``
    (config and layers, an index's children, a schema1 manifest's layers), ``children``
    (an index's manifests) and ``subject`` (the manifest it refers to)."""

    references: frozenset[Digest]
    children: tuple[Digest, ...]
    subject: Digest | None


NO_REFS = ManifestRefs(frozenset(), (), None)


def manifest_refs(raw: bytes) -> ManifestRefs:
    """Leniently: garbage collection must not stop at a manifest another registry accepted."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return NO_REFS
    if not isinstance(body, dict):
        return NO_REFS

    def digests_of(value: Any, key: str = "digest") -> list[Digest]:
        items = value if isinstance(value, list) else [value]
        found = []
        for item in items:
            text = item.get(key) if isinstance(item, dict) else None
            digest = parse_digest(text) if isinstance(text, str) else None
            if digest is not None:
                found.append(digest)
        return found

    children = digests_of(body.get("manifests", []))
    references = [
        *digests_of(body.get("config")),
        *digests_of(body.get("layers", [])),
        *children,
        *digests_of(body.get("fsLayers", []), "blobSum"),
    ]
    subject = digests_of(body.get("subject"))
    return ManifestRefs(frozenset(references), tuple(children), subject[0] if subject else None)


async def read_refs(
    store: Limited, digests: Iterable[Digest], known: dict[Digest, ManifestRefs]
) -> None:
    """Add the references of every manifest in ``digests`` not in ``known`` yet (each
    manifest's bytes are read once, however many repositories link it)."""

    async def read(digest: Digest) -> None:
        raw = await store.get(layout.blob_data(digest))
        known[digest] = NO_REFS if raw is None else manifest_refs(raw)

    await each([d for d in set(digests) if d not in known], read)


class Progress:
    """A line every few seconds on a long run: ``<what>: done/total``."""

    def __init__(self, emit: Callable[[str], None], what: str, total: int, every: float) -> None:
        self.emit, self.what, self.total = emit, what, total
        self.every = every
        self.done = 0
        self.last = time.monotonic()

    def tick(self) -> None:
        self.done += 1
        if time.monotonic() - self.last >= self.every:
            self.last = time.monotonic()
            self.emit(f"{self.what}: {self.done}/{self.total}")


def keep_closure(
    valid: set[Digest], roots: Iterable[Digest], refs: dict[Digest, ManifestRefs]
) -> set[Digest]:
    """The manifests of one repository kept from ``roots``: with their index children and
    their referrers (manifests whose ``subject`` is kept), transitively."""
    referrers: dict[Digest, list[Digest]] = {}
    for digest in valid:
        subject = refs.get(digest)
        if subject is not None and subject.subject is not None:
            referrers.setdefault(subject.subject, []).append(digest)
    kept: set[Digest] = set()
    stack = [d for d in roots if d in valid]
    while stack:
        digest = stack.pop()
        if digest in kept:
            continue
        kept.add(digest)
        found = refs.get(digest)
        if found is not None:
            stack.extend(c for c in found.children if c in valid)
        stack.extend(referrers.get(digest, ()))
    return kept
