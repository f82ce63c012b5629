"""Manifests, tags and referrers of local repositories, in registry:2's layout.

Manifest bytes are stored once as blobs; a repository sees a manifest through its
revision link and a tag through ``tags/<tag>/current/link``. Bytes read back are checked
against their digest before they are served; verified manifests are immutable, so they are
kept in a small in-memory cache keyed by digest.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from dataclasses import replace

from cachetools import LRUCache

from entrepot.oci.digest import Digest, is_digest
from entrepot.oci.errors import ErrorCode, RegistryError
from entrepot.oci.manifest import Manifest, parse_manifest
from entrepot.oci.names import validate_tag
from entrepot.registry import layout
from entrepot.registry.api import ManifestContent, ManifestPut
from entrepot.registry.blobs import (
    BlobGone,
    BlobStore,
    LinkWriter,
    delete_key,
    read_link,
    storage_unavailable,
    write_link,
)
from entrepot.registry.epochs import bump_epoch, read_epoch, tags_epoch
from entrepot.registry.pulls import PullRecorder
from entrepot.storage import StorageDriver, StorageError, StorageNotFound

# Memory budgets of the two caches, so they stay flat however many manifests and
# repositories go by. A parsed manifest costs about 2 KiB plus its raw size (measured:
# 2.8 KiB for a 731-byte image manifest); a tag in a cached list about 70 bytes.
MANIFEST_CACHE_BYTES = 4 << 20
TAG_LIST_CACHE_TAGS = 100_000


def _manifest_cost(manifest: Manifest) -> int:
    return 2048 + 2 * len(manifest.raw)


def _tag_list_cost(entry: tuple[bytes | None, list[str]]) -> int:
    return 1 + len(entry[1])


def manifest_unknown(reference: str) -> RegistryError:
    return RegistryError(
        ErrorCode.MANIFEST_UNKNOWN, "manifest unknown to registry", {"reference": reference}
    )


class ManifestCache:
    """Verified manifests by digest (content-addressed, so never stale), the least
    recently used pushed out beyond ``max_bytes`` (estimated).

    An OrderedDict keyed by the digest's two strings rather than a cachetools LRUCache
    keyed by the Digest: a look-up runs on every manifest request, and that one (Python
    calls for the cache's layers and the dataclass's hash) cost several times this. Each
    manifest is kept with the ManifestContent a pull answers with, made once."""

    def __init__(self, max_bytes: int = MANIFEST_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, str], tuple[Manifest, ManifestContent]] = OrderedDict()
        self._cost = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def cost(self) -> int:
        return self._cost

    def get(self, digest: Digest) -> Manifest | None:
        found = self._found(digest)
        return None if found is None else found[0]

    def content(self, digest: Digest) -> ManifestContent | None:
        """What a pull of the manifest ``digest`` answers with, if it is kept."""
        found = self._found(digest)
        return None if found is None else found[1]

    def _found(self, digest: Digest) -> tuple[Manifest, ManifestContent] | None:
        key = (digest.algorithm, digest.encoded)
        found = self._items.get(key)
        if found is not None:
            self._items.move_to_end(key)
        return found

    def put(self, manifest: Manifest) -> None:
        cost = _manifest_cost(manifest)
        if cost > self.max_bytes:
            return  # too big to keep
        digest = manifest.digest
        key = (digest.algorithm, digest.encoded)
        replaced = self._items.pop(key, None)
        if replaced is not None:
            self._cost -= _manifest_cost(replaced[0])
        self._items[key] = (manifest, _content(manifest))
        self._cost += cost
        while self._cost > self.max_bytes:
            _, (evicted, _content_of) = self._items.popitem(last=False)
            self._cost -= _manifest_cost(evicted)


def _content(manifest: Manifest) -> ManifestContent:
    return ManifestContent(manifest.digest, manifest.media_type, manifest.raw)


def deletes_disabled() -> RegistryError:
    return RegistryError(
        ErrorCode.UNSUPPORTED, "deletes are disabled (storage.delete.enabled is false)"
    )


class ManifestService:
    """The manifests of the local store: verified bytes by digest and tag lists, shared by
    every repository; ``of`` is one repository's manifests."""

    def __init__(
        self,
        driver: StorageDriver,
        blobs: BlobStore,
        cache: ManifestCache,
        links: LinkWriter,
        *,
        delete_enabled: bool = False,
        max_cached_tags: int = TAG_LIST_CACHE_TAGS,
    ) -> None:
        self.driver = driver
        self.blobs = blobs
        self.cache = cache
        self.links = links
        self.delete_enabled = delete_enabled
        self.pulls: PullRecorder | None = None  # set when retention rules need pull times
        # Tag lists by repository, with the tags epoch they were read at; at most
        # ``max_cached_tags`` tags in all, the least recently used lists pushed out.
        self._tag_lists: LRUCache[str, tuple[bytes | None, list[str]]] = LRUCache(
            max_cached_tags, getsizeof=_tag_list_cost
        )

    def of(self, name: str) -> RepositoryManifests:
        return RepositoryManifests(self, name)

    async def load(self, digest: Digest, reference: str) -> Manifest:
        cached = self.cache.get(digest)
        if cached is not None:
            return cached
        raw = await self.blobs.get(digest)
        if raw is None:
            raise manifest_unknown(reference)
        if Digest.of(raw, digest.algorithm) != digest:
            raise RegistryError(
                ErrorCode.UNKNOWN,
                "stored manifest does not match its digest",
                {"digest": str(digest)},
            )
        manifest = parse_manifest(raw)
        if manifest.digest != digest:
            # Stored under another algorithm: keep the digest it was asked for.
            manifest = _with_digest(manifest, digest)
        self.cache.put(manifest)
        return manifest

    async def set_tag(self, name: str, tag: str, digest: Digest) -> None:
        """Point ``tag`` at ``digest`` (writing it again also marks it fresh: its mtime)."""
        current = layout.tag_current_link(name, tag)
        is_new = await read_link(self.driver, current) is None
        try:
            await write_link(self.driver, layout.tag_index_link(name, tag, digest), digest)
            await write_link(self.driver, current, digest)
        except RegistryError:
            if is_new:  # (a full disk) no tag directory without current/link is left listed
                with contextlib.suppress(StorageError):
                    await self.driver.delete(layout.tag_dir(name, tag))
            raise
        if is_new:
            await self.tags_changed(name)

    async def tags_changed(self, name: str) -> None:
        self._tag_lists.pop(name, None)
        try:
            await bump_epoch(self.driver, tags_epoch(name))
        except StorageError as exc:
            raise storage_unavailable(exc) from exc

    async def tags(self, name: str, *, missing_ok: bool = False) -> list[str]:
        """The repository's tags, sorted; kept in memory until the repository's tags epoch
        changes (one small read per request instead of listing the directory)."""
        epoch = await read_epoch(self.driver, tags_epoch(name))
        cached = self._tag_lists.get(name)
        # No epoch yet (a root registry:2 wrote, or tags never changed here) is an epoch too:
        # every tag Entrepot creates or deletes writes one.
        if cached is not None and cached[0] == epoch:
            return cached[1]
        try:
            tags = sorted(await self.driver.list(layout.tags_dir(name)))
        except StorageNotFound:
            if missing_ok:
                return []
            try:
                await self.driver.stat(layout.repository(name))
            except StorageNotFound as exc:
                raise RegistryError(
                    ErrorCode.NAME_UNKNOWN, "repository name not known to registry", {"name": name}
                ) from exc
            return []
        except StorageError as exc:
            raise storage_unavailable(exc) from exc
        if _tag_list_cost((epoch, tags)) <= self._tag_lists.maxsize:  # else listed each time
            self._tag_lists[name] = (epoch, tags)
        return tags


class RepositoryManifests:
    """The manifests of one local repository: its manifests facet and manifest writer."""

    def __init__(self, service: ManifestService, name: str) -> None:
        self.service = service
        self.driver = service.driver
        self.name = name

    async def resolve(self, reference: str) -> Digest:
        """The digest a tag or digest reference names in this repository."""
        name = self.name
        if is_digest(reference):
            digest = Digest.parse(reference)
            linked = await read_link(self.driver, layout.manifest_revision_link(name, digest))
            if linked is None:
                raise manifest_unknown(reference)
            return digest
        validate_tag(reference)
        current = await read_link(self.driver, layout.tag_current_link(name, reference))
        if current is None:
            raise manifest_unknown(reference)
        return current

    async def get(self, reference: str) -> ManifestContent:
        digest = await self.resolve(reference)
        service = self.service
        content = service.cache.content(digest)
        if content is None:
            content = _content(await service.load(digest, reference))
        pulls = service.pulls
        if pulls is not None and not is_digest(reference):
            pulls.record(self.name, digest, reference)
        return content

    async def put(self, reference: str, raw: bytes, content_type: str | None) -> ManifestPut:
        manifest = parse_manifest(raw, content_type, strict=True)
        if is_digest(reference):
            expected = Digest.parse(reference)
            actual = Digest.of(raw, expected.algorithm)
            if actual != expected:
                raise RegistryError(
                    ErrorCode.DIGEST_INVALID,
                    "manifest digest does not match the reference",
                    {"expected": str(expected), "actual": str(actual)},
                )
            manifest = _with_digest(manifest, expected)
            tag = None
        else:
            tag = validate_tag(reference)
        await self._check_references(manifest)
        await self.store(manifest, tag, pushed=True)
        return ManifestPut(manifest.digest, manifest.subject.digest if manifest.subject else None)

    async def store(self, manifest: Manifest, tag: str | None, *, pushed: bool = False) -> None:
        """Store verified manifest bytes and link them (and the tag) into the repository;
        ``pushed``: its references were checked (_check_references) and are confirmed
        once it is linked (a cache stores manifests whose blobs it fetches later)."""
        name = self.name
        digest = manifest.digest
        revision = layout.manifest_revision_link(name, digest)
        await self.service.blobs.put(digest, manifest.raw)
        await self._link(manifest, revision, pushed)
        if manifest.subject is not None:
            await write_link(
                self.driver, layout.referrer_link(name, manifest.subject.digest, digest), digest
            )
        if tag is not None:
            await self.service.set_tag(name, tag, digest)
            # A collection deleting untagged manifests (--delete-untagged, a retention
            # rule) reads the tags, then unlinks: one that read them before this tag may
            # have unlinked the manifest just now. It reads them again after unlinking
            # (gcsweep): one of the two sees the other.
            if await read_link(self.driver, revision) is None:
                await self._link(manifest, revision, pushed)
        self.service.cache.put(manifest)

    async def _link(self, manifest: Manifest, revision: str, pushed: bool) -> None:
        """Write the manifest's revision link (its bytes confirmed there once linked:
        LinkWriter.write) and, for a push, confirm what it references."""
        blobs, links = self.service.blobs, self.service.links
        try:
            await links.write(self.name, revision, manifest.digest)
        except BlobGone:
            # Bytes an earlier push left unreferenced, collected meanwhile: these are them.
            await blobs.put(manifest.digest, manifest.raw)
            await links.write(self.name, revision, manifest.digest)
        if pushed:
            await self._confirm_references(manifest, revision)

    async def _confirm_references(self, manifest: Manifest, revision: str) -> None:
        """_check_references again once the manifest is linked: a garbage collection may
        have set aside or deleted a blob it references after the check (BlobStore.confirm
        puts back one set aside), or, removing a repository it found empty, its layer
        links (written again here, the bytes being there: gcremove looks once more too).
        Where a blob is gone, the manifest is unlinked again."""
        name = self.name
        blobs = self.service.blobs
        children = [child.digest for child in manifest.manifests]
        required = [blob.digest for blob in manifest.required_blobs()]
        child_links, layer_links = await asyncio.gather(
            asyncio.gather(
                *(read_link(self.driver, layout.manifest_revision_link(name, d)) for d in children)
            ),
            asyncio.gather(*(read_link(self.driver, layout.layer_link(name, d)) for d in required)),
        )
        present = await asyncio.gather(*(blobs.confirm(d) for d in (*required, *children)))
        missing = [d for d, ok in zip((*required, *children), present, strict=True) if not ok]
        missing += [d for d, link in zip(children, child_links, strict=True) if link is None]
        if missing:
            await delete_key(self.driver, revision.removesuffix("/link"))
            raise RegistryError(
                ErrorCode.MANIFEST_BLOB_UNKNOWN,
                f"{missing[0]}, which the manifest references, was deleted by a garbage"
                " collection as the manifest was pushed; push it again, then the manifest",
                {"digest": str(missing[0])},
            )
        for digest, link in zip(required, layer_links, strict=True):
            if link is None:
                await write_link(self.driver, layout.layer_link(name, digest), digest)

    async def _check_references(self, manifest: Manifest) -> None:
        name = self.name
        for blob in manifest.required_blobs():
            # The bytes too, as registry:2 checks: garbage collection may have put an
            # unreferenced blob aside while its link still stands.
            linked = await read_link(self.driver, layout.layer_link(name, blob.digest))
            if linked is None or await self.service.blobs.stat(blob.digest) is None:
                raise RegistryError(
                    ErrorCode.MANIFEST_BLOB_UNKNOWN,
                    f"blob {blob.digest} is not in repository {name}",
                    {"digest": str(blob.digest)},
                )
        for child in manifest.manifests:
            link = layout.manifest_revision_link(name, child.digest)
            if await read_link(self.driver, link) is None:
                raise RegistryError(
                    ErrorCode.MANIFEST_BLOB_UNKNOWN,
                    f"manifest {child.digest} is not in repository {name}",
                    {"digest": str(child.digest)},
                )

    async def delete(self, reference: str) -> tuple[str, ...]:
        if not self.service.delete_enabled:
            raise deletes_disabled()
        name = self.name
        if not is_digest(reference):
            validate_tag(reference)
            if not await delete_key(self.driver, layout.tag_dir(name, reference)):
                raise manifest_unknown(reference)
            await self.service.tags_changed(name)
            return ()
        digest = await self.resolve(reference)
        manifest: Manifest | None
        try:
            manifest = await self.service.load(digest, reference)
        except RegistryError:
            manifest = None
        await delete_key(self.driver, layout.manifest_revision_dir(name, digest))
        # registry:2 also untags every tag that points at a deleted manifest.
        untagged: list[str] = []
        for tag in await self.service.tags(name, missing_ok=True):
            if await read_link(self.driver, layout.tag_current_link(name, tag)) == digest:
                await delete_key(self.driver, layout.tag_dir(name, tag))
                untagged.append(tag)
        if untagged:
            await self.service.tags_changed(name)
        if manifest is not None and manifest.subject is not None:
            link = layout.referrer_link(name, manifest.subject.digest, digest)
            await delete_key(self.driver, link.removesuffix("/link"))
        return tuple(untagged)

    async def referrers(
        self, subject: Digest, artifact_type: str | None
    ) -> list[dict[str, object]]:
        name = self.name
        try:
            algorithms = await self.driver.list(layout.referrers_dir(name, subject))
        except StorageNotFound:
            return []
        except StorageError as exc:
            raise storage_unavailable(exc) from exc
        entries: list[dict[str, object]] = []
        for algorithm in algorithms:
            prefix = f"{layout.referrers_dir(name, subject)}/{algorithm}"
            try:
                encoded_list = await self.driver.list(prefix)
            except StorageNotFound:
                continue
            for encoded in encoded_list:
                digest = await read_link(self.driver, f"{prefix}/{encoded}/link")
                if digest is None:
                    continue
                if (
                    await read_link(self.driver, layout.manifest_revision_link(name, digest))
                    is None
                ):
                    continue
                try:
                    manifest = await self.service.load(digest, str(digest))
                except RegistryError:
                    continue
                entry = manifest.referrer_descriptor()
                if artifact_type is None or entry.get("artifactType") == artifact_type:
                    entries.append(entry)
        return entries


class RepositoryTags:
    """The tags of one local repository (their lists are cached by the service)."""

    def __init__(self, service: ManifestService, name: str) -> None:
        self.service = service
        self.name = name

    async def list(self) -> list[str]:
        return await self.service.tags(self.name)


def _with_digest(manifest: Manifest, digest: Digest) -> Manifest:
    return replace(manifest, digest=digest)
