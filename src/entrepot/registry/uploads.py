"""Blob uploads: monolithic, chunked (resumable) and cancel, in registry:2's layout.

The upload's bytes accumulate at ``_uploads/<id>/data``; on finish they are verified
against the client's digest and moved (renamed) into the blob store, so a failed or
interrupted upload never leaves a visible blob. Each request's bytes are appended with
a writer that is committed only when the request body arrived whole: a client that
disconnects mid-chunk leaves the upload as it was before that chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from cachetools import LRUCache

from entrepot.oci.digest import Digest, DigestVerifier
from entrepot.oci.errors import ErrorCode, RegistryError
from entrepot.registry import layout
from entrepot.registry.api import BlobInfo, UploadStatus
from entrepot.registry.blobs import BlobStore, LinkWriter, storage_unavailable
from entrepot.registry.keyedlocks import KeyedLocks
from entrepot.registry.streams import pump
from entrepot.storage import StorageDriver, StorageError, StorageNotFound

_HASH_CHUNK = 1 << 20
# Running hashes kept in memory (a few hundred bytes each). An upload another worker
# finished, or a client abandoned, leaves its hash here until it is pushed out; an
# upload whose hash was pushed out is re-read from storage on its next chunk.
MAX_RUNNING_HASHES = 1024


def new_upload_id() -> str:
    # Unguessable: 128 bits from the OS CSPRNG, in registry:2's UUID-like shape.
    raw = secrets.token_hex(16)
    return f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"


def _upload_unknown(upload_id: str) -> RegistryError:
    return RegistryError(
        ErrorCode.BLOB_UPLOAD_UNKNOWN, "blob upload unknown to registry", {"uuid": upload_id}
    )


def _valid_upload_id(upload_id: str) -> bool:
    return 0 < len(upload_id) <= 64 and all(c in "0123456789abcdef-" for c in upload_id)


class UploadService:
    """Uploads of one registry. Keeps the running hash of in-flight uploads in memory so
    chunked uploads are hashed once; falls back to re-reading the data when another
    process appended to the upload (several workers), after a restart, or once the
    hash was pushed out of the bounded cache."""

    def __init__(
        self,
        driver: StorageDriver,
        blobs: BlobStore,
        links: LinkWriter,
        *,
        max_hashes: int = MAX_RUNNING_HASHES,
    ) -> None:
        self.driver = driver
        self.blobs = blobs
        self.links = links
        self._hashes: LRUCache[tuple[str, str], DigestVerifier] = LRUCache(max_hashes)
        self._locks = KeyedLocks()

    def _forget(self, name: str, upload_id: str) -> None:
        self._hashes.pop((name, upload_id), None)

    async def start(self, name: str) -> UploadStatus:
        upload_id = new_upload_id()
        started = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        try:
            await self.driver.put_content(layout.upload_data(name, upload_id), b"")
            await self.driver.put_content(
                layout.upload_started_at(name, upload_id), started.encode()
            )
        except StorageError as exc:
            # No half-made session is left behind for the purger (a full disk fails here).
            with contextlib.suppress(StorageError):
                await self.driver.delete(layout.upload_dir(name, upload_id))
            raise storage_unavailable(exc) from exc
        self._hashes[(name, upload_id)] = DigestVerifier()
        return UploadStatus(upload_id, 0)

    async def status(self, name: str, upload_id: str) -> UploadStatus:
        if not _valid_upload_id(upload_id):
            raise _upload_unknown(upload_id)
        try:
            info = await self.driver.stat(layout.upload_data(name, upload_id))
        except StorageNotFound as exc:
            raise _upload_unknown(upload_id) from exc
        except StorageError as exc:
            raise storage_unavailable(exc) from exc
        return UploadStatus(upload_id, info.size)

    async def append(
        self, name: str, upload_id: str, chunks: AsyncIterator[bytes], start: int | None
    ) -> UploadStatus:
        async with self._locks.hold((name, upload_id)):
            current = await self.status(name, upload_id)
            if start is not None and start != current.size:
                raise RegistryError(
                    ErrorCode.RANGE_INVALID,
                    f"chunk starts at {start} but the upload has {current.size} bytes",
                    headers=_range_headers(current),
                )
            size = await self._append(name, upload_id, chunks, current.size)
            return UploadStatus(upload_id, size)

    async def _append(
        self, name: str, upload_id: str, chunks: AsyncIterator[bytes], offset: int
    ) -> int:
        hasher = await self._hasher(name, upload_id, offset)
        running = hasher.copy()
        try:
            writer = await self.driver.writer(layout.upload_data(name, upload_id), append=True)
        except StorageError as exc:
            raise storage_unavailable(exc) from exc

        async def consume(data: bytes) -> None:
            # Hash and write at once, each in a thread (both release the GIL).
            await asyncio.gather(asyncio.to_thread(running.update, data), writer.write(data))

        try:
            await pump(chunks, consume)
            await writer.commit()
        except BaseException as exc:
            # The writer keeps only what earlier commits wrote (cancel truncates back).
            with contextlib.suppress(StorageError):
                await writer.cancel()
            if isinstance(exc, StorageError):  # a full disk, an I/O error: the spec's 503
                raise storage_unavailable(exc) from exc
            raise
        self._hashes[(name, upload_id)] = running
        return writer.size

    async def _hasher(self, name: str, upload_id: str, size: int) -> DigestVerifier:
        """The hash of the upload's first ``size`` bytes, cached or recomputed."""
        cached = self._hashes.get((name, upload_id))
        if cached is not None and cached.size == size:
            return cached
        hasher = DigestVerifier()
        try:
            async for chunk in self.driver.read(
                layout.upload_data(name, upload_id), 0, size, _HASH_CHUNK
            ):
                hasher.update(chunk)
        except StorageNotFound as exc:
            raise _upload_unknown(upload_id) from exc
        except StorageError as exc:
            raise storage_unavailable(exc) from exc
        return hasher

    async def finish(
        self,
        name: str,
        upload_id: str,
        digest: Digest,
        chunks: AsyncIterator[bytes] | None,
    ) -> BlobInfo:
        async with self._locks.hold((name, upload_id)):
            current = await self.status(name, upload_id)
            size = current.size
            if chunks is not None:
                size = await self._append(name, upload_id, chunks, size)
            hasher = await self._hasher(name, upload_id, size)
            if digest.algorithm != hasher.algorithm:
                hasher = DigestVerifier(digest.algorithm)
                async for chunk in self.driver.read(layout.upload_data(name, upload_id)):
                    hasher.update(chunk)
            actual = hasher.digest()
            if actual != digest:
                # The bytes are not what the client said: nothing of them is kept.
                await self._discard(name, upload_id)
                raise RegistryError(
                    ErrorCode.DIGEST_INVALID,
                    "provided digest did not match uploaded content",
                    {"expected": str(digest), "actual": str(actual)},
                )
            await self.blobs.adopt(digest, layout.upload_data(name, upload_id))
            await self.links.write(name, layout.layer_link(name, digest), digest)
            await self._discard(name, upload_id)
            return BlobInfo(digest, size)

    async def cancel(self, name: str, upload_id: str) -> None:
        async with self._locks.hold((name, upload_id)):
            await self.status(name, upload_id)
            await self._discard(name, upload_id)

    async def _discard(self, name: str, upload_id: str) -> None:
        self._forget(name, upload_id)
        try:
            await self.driver.delete(layout.upload_dir(name, upload_id))
        except StorageNotFound:
            pass
        except StorageError as exc:
            raise storage_unavailable(exc) from exc


def _range_headers(status: UploadStatus) -> dict[str, str]:
    return {"Range": f"0-{max(status.size - 1, 0)}", "Docker-Upload-UUID": status.upload_id}
