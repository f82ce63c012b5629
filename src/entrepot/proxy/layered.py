"""A plain name with a mirror upstream (Docker's registry-mirrors): what was pushed here
answers first, the mirror's cache second. Writes always go to the pushed side, so pushed
content is never replaced by upstream content."""

from __future__ import annotations

from collections.abc import AsyncIterator

from entrepot.oci.digest import Digest
from entrepot.oci.errors import ErrorCode, RegistryError
from entrepot.proxy.cache import CachedRepository
from entrepot.registry.api import BlobContent, BlobInfo, ManifestContent, ManifestPut, UploadStatus
from entrepot.registry.local import LocalRepository

_MISSING = frozenset({ErrorCode.MANIFEST_UNKNOWN, ErrorCode.BLOB_UNKNOWN, ErrorCode.NAME_UNKNOWN})


def _unknown_blob(exc: RegistryError) -> str | None:
    """The digest a MANIFEST_BLOB_UNKNOWN error names, if that is what `exc` is."""
    if exc.code is not ErrorCode.MANIFEST_BLOB_UNKNOWN or not isinstance(exc.detail, dict):
        return None
    digest = exc.detail.get("digest")
    return digest if isinstance(digest, str) else None


class LayeredRepository:
    namespace: str | None = None

    def __init__(self, local: LocalRepository, cached: CachedRepository) -> None:
        self.local = local
        self.cached = cached
        self.name = local.name

    async def get_manifest(self, reference: str) -> ManifestContent:
        try:
            return await self.local.get_manifest(reference)
        except RegistryError as exc:
            if exc.code not in _MISSING:
                raise
        return await self.cached.get_manifest(reference)

    async def stat_blob(self, digest: Digest) -> BlobInfo:
        try:
            return await self.local.stat_blob(digest)
        except RegistryError as exc:
            if exc.code not in _MISSING:
                raise
            missing = exc
        # A push asks "is this blob here?" with HEAD before uploading it, and a HEAD cannot
        # be told from a pull's. Answer from what this registry holds (pushed, or in the
        # mirror's cache, which put_manifest adopts), never by asking the upstream: private
        # repository names and digests are not sent to the mirror, and a push does not
        # wait on it.
        held = await self.cached.held_blob(digest)
        if held is None:
            raise missing
        return held

    async def open_blob(self, digest: Digest) -> BlobContent:
        try:
            return await self.local.open_blob(digest)
        except RegistryError as exc:
            if exc.code not in _MISSING:
                raise
        return await self.cached.open_blob(digest)

    async def list_tags(self) -> list[str]:
        local: list[str] = []
        try:
            local = await self.local.list_tags()
        except RegistryError as exc:
            if exc.code not in _MISSING:
                raise
        try:
            upstream = await self.cached.list_tags()
        except RegistryError:
            if local:
                return local
            raise
        return sorted(set(local) | set(upstream))

    async def referrers(self, digest: Digest, artifact_type: str | None) -> list[dict[str, object]]:
        entries = await self.local.referrers(digest, artifact_type)
        seen = {entry["digest"] for entry in entries}
        cached = await self.cached.referrers(digest, artifact_type)
        return entries + [entry for entry in cached if entry["digest"] not in seen]

    # Writes: always the local (pushed) side.

    async def put_manifest(
        self, reference: str, raw: bytes, content_type: str | None
    ) -> ManifestPut:
        adopted: set[str] = set()
        while True:
            try:
                return await self.local.put_manifest(reference, raw, content_type)
            except RegistryError as exc:
                digest = _unknown_blob(exc)
                if digest is None or digest in adopted or not await self._adopt(digest):
                    raise
                adopted.add(digest)

    async def _adopt(self, digest: str) -> bool:
        """Link into the pushed repository a blob the client did not upload because the
        mirror answered its HEAD for this name; fetched through the cache first when only the
        upstream has it. The pushed image then holds its own links and needs nothing cached."""
        parsed = Digest.parse(digest)
        try:
            # Only what the mirror vouches for under this name (cached here, or upstream has
            # it): naming a digest gives a pusher no blob of another repository.
            await self.cached.stat_blob(parsed)
            if await self.local.registry.blobs.stat(parsed) is None:
                content = await self.cached.open_blob(parsed)
                async for _ in content.open_stream(0, None):
                    pass  # completes the cache fill
        except RegistryError:
            return False
        return await self.local.mount_blob(parsed, None) is not None

    async def delete_manifest(self, reference: str) -> None:
        await self.local.delete_manifest(reference)

    async def delete_blob(self, digest: Digest) -> None:
        await self.local.delete_blob(digest)

    async def mount_blob(self, digest: Digest, source: str | None) -> BlobInfo | None:
        return await self.local.mount_blob(digest, source)

    async def start_upload(self) -> UploadStatus:
        return await self.local.start_upload()

    async def upload_status(self, upload_id: str) -> UploadStatus:
        return await self.local.upload_status(upload_id)

    async def append_upload(
        self, upload_id: str, chunks: AsyncIterator[bytes], start: int | None
    ) -> UploadStatus:
        return await self.local.append_upload(upload_id, chunks, start)

    async def finish_upload(
        self, upload_id: str, digest: Digest, chunks: AsyncIterator[bytes] | None
    ) -> BlobInfo:
        return await self.local.finish_upload(upload_id, digest, chunks)

    async def cancel_upload(self, upload_id: str) -> None:
        await self.local.cancel_upload(upload_id)
