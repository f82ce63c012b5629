"""Local repositories: what is pushed to this registry, stored through a driver."""

from __future__ import annotations

from collections.abc import AsyncIterator

from entrepot.oci.digest import Digest
from entrepot.oci.errors import ErrorCode, RegistryError
from entrepot.oci.names import validate_name
from entrepot.registry import layout
from entrepot.registry.api import BlobContent, BlobInfo, Repository, UploadStatus, Writes
from entrepot.registry.blobs import BlobGone, BlobStore, LinkWriter, delete_key, links_to
from entrepot.registry.catalog import RepositoryIndex
from entrepot.registry.manifests import (
    ManifestCache,
    ManifestService,
    RepositoryManifests,
    RepositoryTags,
    deletes_disabled,
)
from entrepot.registry.uploads import UploadService
from entrepot.storage import StorageDriver


def blob_unknown(digest: Digest) -> RegistryError:
    return RegistryError(
        ErrorCode.BLOB_UNKNOWN, "blob unknown to registry", {"digest": str(digest)}
    )


class LocalRegistry:
    """The local store: the services over one driver, and the repositories they serve."""

    def __init__(self, driver: StorageDriver, *, delete_enabled: bool = False) -> None:
        self.driver = driver
        self.delete_enabled = delete_enabled
        self.blobs = BlobStore(driver)
        self.index = RepositoryIndex(driver)
        self.links = LinkWriter(driver, self.blobs, self.index.note)
        self.uploads = UploadService(driver, self.blobs, self.links)
        self.manifests = ManifestService(
            driver, self.blobs, ManifestCache(), self.links, delete_enabled=delete_enabled
        )
        self.made: dict[str, Repository] = {}  # see local_repository

    async def repository(
        self, name: str, *, for_push: bool = False, namespace: str | None = None
    ) -> Repository:
        return local_repository(self, validate_name(name))

    async def catalog(self, n: int | None, last: str | None) -> list[str]:
        return await self.index.page(n, last)

    def scope_name(self, name: str, namespace: str | None) -> str:
        return name


# Repositories kept made, by name: they hold no state of their own (their facets read
# the store on every call), and making one costs five objects on every request.
_MADE_REPOSITORIES = 1024


def local_repository(
    registry: LocalRegistry, name: str, manifests: RepositoryManifests | None = None
) -> Repository:
    if manifests is not None:
        return _make_repository(registry, name, manifests)
    made = registry.made
    repository = made.get(name)
    if repository is None:
        if len(made) >= _MADE_REPOSITORIES:
            del made[next(iter(made))]  # the oldest made
        repository = made[name] = _make_repository(registry, name, None)
    return repository


def _make_repository(
    registry: LocalRegistry, name: str, manifests: RepositoryManifests | None
) -> Repository:
    blobs = LocalBlobs(registry, name)
    manifests = manifests or registry.manifests.of(name)
    tags = RepositoryTags(registry.manifests, name)
    return Repository(name, blobs, manifests, tags, Writes(blobs, manifests))


class LocalBlobs:
    """The blobs of one local repository: those linked into it (pushed, mounted or
    cached), and its upload sessions."""

    def __init__(self, registry: LocalRegistry, name: str) -> None:
        self.registry = registry
        self.name = name

    async def stat(self, digest: Digest) -> BlobInfo:
        driver = self.registry.driver
        if not await links_to(driver, layout.layer_link(self.name, digest), digest):
            # A manifest is also a blob of its repository (clients may fetch it as one).
            revision = layout.manifest_revision_link(self.name, digest)
            if not await links_to(driver, revision, digest):
                raise blob_unknown(digest)
        info = await self.registry.blobs.stat(digest)
        if info is None:
            raise blob_unknown(digest)
        return info

    async def open(self, digest: Digest) -> BlobContent:
        return self.registry.blobs.content(await self.stat(digest))

    async def delete(self, digest: Digest) -> None:
        if not self.registry.delete_enabled:
            raise deletes_disabled()
        # Like registry:2: unlink from the repository; the bytes go at garbage collection.
        link = layout.layer_link(self.name, digest)
        if not await delete_key(self.registry.driver, link.removesuffix("/link")):
            raise blob_unknown(digest)

    async def mount(self, digest: Digest, source: str | None) -> BlobInfo | None:
        if source is not None:
            try:
                await LocalBlobs(self.registry, validate_name(source)).stat(digest)
            except RegistryError:
                return None
        info = await self.registry.blobs.stat(digest)
        if info is None:
            return None
        try:
            await self.registry.links.write(self.name, layout.layer_link(self.name, digest), digest)
        except BlobGone:  # collected meanwhile: the client uploads it instead
            return None
        return info

    # Upload sessions are the registry's (uploads.py); these bind them to this repository.

    async def start_upload(self) -> UploadStatus:
        return await self.registry.uploads.start(self.name)

    async def upload_status(self, upload_id: str) -> UploadStatus:
        return await self.registry.uploads.status(self.name, upload_id)

    async def append_upload(
        self, upload_id: str, chunks: AsyncIterator[bytes], start: int | None
    ) -> UploadStatus:
        return await self.registry.uploads.append(self.name, upload_id, chunks, start)

    async def finish_upload(
        self, upload_id: str, digest: Digest, chunks: AsyncIterator[bytes] | None
    ) -> BlobInfo:
        return await self.registry.uploads.finish(self.name, upload_id, digest, chunks)

    async def cancel_upload(self, upload_id: str) -> None:
        await self.registry.uploads.cancel(self.name, upload_id)
