"""Local repositories: what is pushed to this registry, stored through a driver."""

from __future__ import annotations

from collections.abc import AsyncIterator

from entrepot.oci.digest import Digest
from entrepot.oci.errors import ErrorCode, RegistryError
from entrepot.oci.names import validate_name
from entrepot.registry import layout
from entrepot.registry.api import (
    BlobContent,
    BlobInfo,
    ManifestContent,
    ManifestPut,
    UploadStatus,
)
from entrepot.registry.blobs import (
    BlobStore,
    LinkWriter,
    delete_key,
    read_link,
    storage_unavailable,
)
from entrepot.registry.catalog import RepositoryIndex, paginate
from entrepot.registry.manifests import ManifestCache, ManifestService
from entrepot.registry.uploads import UploadService
from entrepot.storage import StorageDriver, StorageError, StorageNotFound


def blob_unknown(digest: Digest) -> RegistryError:
    return RegistryError(
        ErrorCode.BLOB_UNKNOWN, "blob unknown to registry", {"digest": str(digest)}
    )


def _delete_disabled() -> RegistryError:
    return RegistryError(
        ErrorCode.UNSUPPORTED, "deletes are disabled (storage.delete.enabled is false)"
    )


class LocalRegistry:
    """The local store: the services over one driver, and the repositories they serve."""

    def __init__(self, driver: StorageDriver, *, delete_enabled: bool = False) -> None:
        self.driver = driver
        self.delete_enabled = delete_enabled
        self.blobs = BlobStore(driver)
        self.index = RepositoryIndex(driver)
        self.links = LinkWriter(driver, self.index.note)
        self.uploads = UploadService(driver, self.blobs, self.links)
        self.manifests = ManifestService(driver, self.blobs, ManifestCache(), self.links)

    async def repository(
        self, name: str, *, for_push: bool = False, namespace: str | None = None
    ) -> LocalRepository:
        return LocalRepository(self, validate_name(name))

    async def catalog(self, n: int | None, last: str | None) -> list[str]:
        return paginate(await self.index.names(), n, last)

    def scope_name(self, name: str, namespace: str | None) -> str:
        return name


class LocalRepository:
    namespace: str | None = None

    def __init__(self, registry: LocalRegistry, name: str) -> None:
        self.registry = registry
        self.name = name

    async def exists(self) -> bool:
        """Whether anything was ever pushed to (or cached in) this repository."""
        try:
            await self.registry.driver.stat(layout.repository(self.name))
        except StorageNotFound:
            return False
        except StorageError as exc:
            raise storage_unavailable(exc) from exc
        return True

    async def _linked_blob(self, digest: Digest) -> BlobInfo:
        driver = self.registry.driver
        linked = await read_link(driver, layout.layer_link(self.name, digest))
        if linked is None:
            # A manifest is also a blob of its repository (clients may fetch it as one).
            linked = await read_link(driver, layout.manifest_revision_link(self.name, digest))
        if linked != digest:
            raise blob_unknown(digest)
        info = await self.registry.blobs.stat(digest)
        if info is None:
            raise blob_unknown(digest)
        return info

    async def stat_blob(self, digest: Digest) -> BlobInfo:
        return await self._linked_blob(digest)

    async def open_blob(self, digest: Digest) -> BlobContent:
        return self.registry.blobs.content(await self._linked_blob(digest))

    async def delete_blob(self, digest: Digest) -> None:
        if not self.registry.delete_enabled:
            raise _delete_disabled()
        # Like registry:2: unlink from the repository; the bytes go at garbage collection.
        link = layout.layer_link(self.name, digest)
        if not await delete_key(self.registry.driver, link.removesuffix("/link")):
            raise blob_unknown(digest)

    async def mount_blob(self, digest: Digest, source: str | None) -> BlobInfo | None:
        """Link a blob another repository has; None when it cannot be mounted."""
        if source is not None:
            try:
                source_repo = await self.registry.repository(source)
                await source_repo.stat_blob(digest)
            except RegistryError:
                return None
        info = await self.registry.blobs.stat(digest)
        if info is None:
            return None
        await self.registry.links.write(self.name, layout.layer_link(self.name, digest), digest)
        return info

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

    async def get_manifest(self, reference: str) -> ManifestContent:
        return await self.registry.manifests.get(self.name, reference)

    async def put_manifest(
        self, reference: str, raw: bytes, content_type: str | None
    ) -> ManifestPut:
        return await self.registry.manifests.put(self.name, reference, raw, content_type)

    async def delete_manifest(self, reference: str) -> None:
        if not self.registry.delete_enabled:
            raise _delete_disabled()
        await self.registry.manifests.delete(self.name, reference)

    async def list_tags(self) -> list[str]:
        return await self.registry.manifests.tags(self.name)

    async def referrers(self, digest: Digest, artifact_type: str | None) -> list[dict[str, object]]:
        return await self.registry.manifests.referrers(self.name, digest, artifact_type)
