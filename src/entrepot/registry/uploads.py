"""Blob uploads: monolithic, chunked (resumable) and cancel, in registry:2's layout.

The upload's bytes accumulate at ``_uploads/<id>/data``; on finish they are verified
against the client's digest and moved (renamed) into the blob store, so a failed or
interrupted upload never leaves a visible blob. Each request's bytes are appended with
a writer that is committed only when the request body arrived whole: a client that
disconnects mid-chunk leaves the upload as it was before that chunk. Where the driver
cannot append in place (S3), each chunk after the first is an object of its own and the
finish copies them all into the blob once, hashing them again (see ``segments``).

The bytes are made durable (``StorageDriver.sync``, an fsync) once, when the upload
finishes and before the blob becomes visible, not at each chunk: the filesystem writes
them back as they arrive (``storage.writeback``), so that sync finds little left, and a
chunked push does not wait for the disk at every PATCH. A crash can lose the tail of an
unfinished upload (the client's next request then gets 416 or DIGEST_INVALID, as the hash
is computed again from what is on disk, and it starts again; registry:2 never syncs), and
never leaves a visible blob whose bytes are not on disk.

Several processes (workers, or replicas on one S3 bucket) serve one upload: its POST,
PATCHes and PUT may each land on another. The running SHA-256 is kept in memory for the
next chunk on the same process, and, where the driver versions its objects (S3's ETag),
also saved beside the data (``_uploads/<id>/entrepot-hashstate``: the version of the data
it covers, then the hash state in registry:2's form, see ``hashstate``), so another
replica resumes it instead of reading every byte back from the bucket. A hash, in memory
or saved, is used only for the exact object it was computed over (same size, and same
version where there are versions), and the data is moved into the blob store only if it
is still that version; anything else is hashed again from storage. (One window is left:
radosgw does not return the ETag of a completed multipart upload, so the S3 writer reads
it back; a client sending two chunks of one upload at once to two replicas could have a
chunk's hash bound to the other's object in those milliseconds. Only its own upload.)

Measured (see ``hashstate``): rehashing from storage costs a GET of every byte uploaded so
far at each change of replica; the saved state costs one ~150-byte PUT per PATCH on S3
and nothing on the filesystem, where it is not saved (the workers of one machine re-read
the local file, as before).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

from cachetools import LRUCache

from entrepot.oci.digest import Digest, DigestVerifier
from entrepot.oci.errors import ErrorCode, RegistryError
from entrepot.registry import hashstate, layout
from entrepot.registry.api import BlobInfo, UploadStatus
from entrepot.registry.blobs import (
    BlobGone,
    BlobStore,
    LinkWriter,
    count_link,
    storage_unavailable,
)
from entrepot.registry.keyedlocks import KeyedLocks
from entrepot.registry.segments import Segments, load_segments
from entrepot.registry.streams import pump_batches
from entrepot.storage import (
    FileInfo,
    StorageConflict,
    StorageDriver,
    StorageError,
    StorageNotFound,
)

Hasher = DigestVerifier | hashstate.ResumableSha256

log = logging.getLogger(__name__)

_HASH_CHUNK = 1 << 20
# Received bytes handed to the hash and the disk at once, at least (unless the body ended):
# each batch costs two thread hops, and Granian hands over ~400 KiB at a time.
_MIN_BATCH = 4 << 20
# Running hashes kept in memory (a few hundred bytes each). An upload another worker
# finished, or a client abandoned, leaves its hash here until it is pushed out; an
# upload whose hash was pushed out is re-read from storage on its next chunk.
MAX_RUNNING_HASHES = 1024
_STATE_MAGIC = b"entrepot-hashstate 1\n"


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
    chunked uploads are hashed once; on a versioned store also saves it in storage for
    another replica (see the module docstring); otherwise re-reads the data when another
    process appended to the upload, after a restart, or once the hash was pushed out of
    the bounded cache."""

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
        # (upload) -> (version of the data it covers, the hash of its bytes)
        self._hashes: LRUCache[tuple[str, str], tuple[str | None, Hasher]] = LRUCache(max_hashes)
        self._locks = KeyedLocks()

    def _forget(self, name: str, upload_id: str) -> None:
        self._hashes.pop((name, upload_id), None)

    async def start(self, name: str) -> UploadStatus:
        upload_id = new_upload_id()
        started = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        # Both files at once (each is synced): the POST waits for the disk once, not twice.
        # The purger dates a session by either file, or by when it first saw it undated.
        outcomes = await asyncio.gather(
            self.driver.put_content(layout.upload_data(name, upload_id), b""),
            self.driver.put_content(layout.upload_started_at(name, upload_id), started.encode()),
            return_exceptions=True,
        )
        failed = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        if failed:
            # No half-made session is left behind for the purger (a full disk fails here).
            with contextlib.suppress(StorageError):
                await self.driver.delete(layout.upload_dir(name, upload_id))
            if isinstance(failed[0], StorageError):
                raise storage_unavailable(failed[0]) from failed[0]
            raise failed[0]
        # A push under way in a repository keeps its layer links' blobs: a collection
        # re-reading it early hears of a session begun since (blobs.count_link).
        await count_link(self.driver)
        return UploadStatus(upload_id, 0)

    async def _stat(self, name: str, upload_id: str) -> Segments:
        if not _valid_upload_id(upload_id):
            raise _upload_unknown(upload_id)
        try:
            return await load_segments(self.driver, name, upload_id)
        except StorageNotFound as exc:
            raise _upload_unknown(upload_id) from exc
        except StorageError as exc:
            raise storage_unavailable(exc) from exc

    async def status(self, name: str, upload_id: str) -> UploadStatus:
        return UploadStatus(upload_id, (await self._stat(name, upload_id)).size)

    async def append(
        self, name: str, upload_id: str, chunks: AsyncIterator[bytes], start: int | None
    ) -> UploadStatus:
        async with self._locks.hold((name, upload_id)):
            current = await self._stat(name, upload_id)
            if start is not None and start != current.size:
                status = UploadStatus(upload_id, current.size)
                raise RegistryError(
                    ErrorCode.RANGE_INVALID,
                    f"chunk starts at {start} but the upload has {current.size} bytes",
                    headers=_range_headers(status),
                )
            written = await self._append(name, upload_id, chunks, current, save_state=True)
            return UploadStatus(upload_id, written.size)

    async def _append(
        self,
        name: str,
        upload_id: str,
        chunks: AsyncIterator[bytes],
        current: Segments,
        *,
        save_state: bool,
    ) -> _Written:
        """Append the request's bytes (in place, else as a new segment, see ``segments``):
        the upload now, and the hash of all its bytes."""
        hasher = await self._hasher(name, upload_id, current)
        running = hasher.copy()
        in_place = self.driver.appends_in_place
        key = layout.upload_data(name, upload_id) if in_place else current.next_key(name, upload_id)
        try:
            writer = await self.driver.writer(key, append=in_place)
        except StorageError as exc:
            raise storage_unavailable(exc) from exc

        def hash_parts(parts: list[bytes]) -> None:
            for part in parts:
                running.update(part)

        async def consume(parts: list[bytes]) -> None:
            # Hash and write at once, each in a thread (both release the GIL); the parts
            # as received, never joined (a copy of every byte, and fresh memory).
            await asyncio.gather(asyncio.to_thread(hash_parts, parts), writer.write_parts(parts))

        try:
            await pump_batches(chunks, consume, min_batch=_MIN_BATCH)
            if writer.size == 0 and key != layout.upload_data(name, upload_id):
                await writer.cancel()  # an empty chunk: no empty segment
                return _Written(current, hasher)
            # Durable only when the upload finishes (``_sync``): a crash before that
            # loses at most the upload, which the client then starts again.
            await writer.commit(durable=False)
        except BaseException as exc:
            # The writer keeps only what earlier commits wrote (cancel truncates back).
            with contextlib.suppress(StorageError):
                await writer.cancel()
            if isinstance(exc, StorageError):  # a full disk, an I/O error: the spec's 503
                raise storage_unavailable(exc) from exc
            raise
        written = current.with_part(FileInfo(key, writer.size, 0.0, False, writer.version))
        version = written.version
        self._hashes[(name, upload_id)] = (version, running)
        if save_state and version is not None and isinstance(running, hashstate.ResumableSha256):
            await self._save_state(name, upload_id, version, running)
        return _Written(written, running)

    def _new_hasher(self, versioned: bool) -> Hasher:
        # The resumable one only where its state is saved (versioned stores): hashlib's
        # object is a little cheaper to copy, and the filesystem path stays as it was.
        if versioned and hashstate.available():
            return hashstate.ResumableSha256()
        return DigestVerifier()

    async def _hasher(self, name: str, upload_id: str, current: Segments) -> Hasher:
        """The hash of the upload's bytes as they are in ``current``: the one held in
        memory or saved in storage if it covers exactly this object, else recomputed."""
        versioned = current.version is not None
        if current.size == 0:
            return self._new_hasher(versioned)
        cached = self._hashes.get((name, upload_id))
        if cached is not None and cached[1].size == current.size and cached[0] == current.version:
            return cached[1]
        if versioned:
            saved = await self._load_state(name, upload_id, current)
            if saved is not None:
                return saved
        hasher = self._new_hasher(versioned)
        try:
            async for chunk in current.read(self.driver, _HASH_CHUNK):
                await asyncio.to_thread(hasher.update, chunk)
        except StorageNotFound as exc:
            raise _upload_unknown(upload_id) from exc
        except StorageError as exc:
            raise storage_unavailable(exc) from exc
        return hasher

    async def _save_state(
        self, name: str, upload_id: str, version: str, hasher: hashstate.ResumableSha256
    ) -> None:
        data = _STATE_MAGIC + version.encode() + b"\n" + hasher.save()
        try:
            await self.driver.put_content(layout.upload_hashstate(name, upload_id), data)
        except StorageError as exc:
            # The chunk is stored: the next request hashes the upload again instead.
            log.warning("upload %s of %s: could not save its hash state: %s", upload_id, name, exc)

    async def _load_state(
        self, name: str, upload_id: str, current: Segments
    ) -> hashstate.ResumableSha256 | None:
        if not hashstate.available():
            return None
        try:
            data = await self.driver.get_content(layout.upload_hashstate(name, upload_id))
        except StorageError:
            return None  # none saved (or unreadable): hash again from the data
        if not data.startswith(_STATE_MAGIC):
            return None
        version, _, state = data[len(_STATE_MAGIC) :].partition(b"\n")
        if version.decode(errors="replace") != current.version:
            return None  # saved for another object (an older chunk, or a racing writer)
        try:
            hasher = hashstate.ResumableSha256.restore(state)
        except ValueError:
            return None
        return hasher if hasher.size == current.size else None

    async def finish(
        self,
        name: str,
        upload_id: str,
        digest: Digest,
        chunks: AsyncIterator[bytes] | None,
    ) -> BlobInfo:
        async with self._locks.hold((name, upload_id)):
            current = await self._stat(name, upload_id)
            if chunks is not None:
                written = await self._append(name, upload_id, chunks, current, save_state=False)
            else:
                hashed = await self._hasher(name, upload_id, current)
                written = _Written(current, hashed)
            segments, hasher = written.segments, written.hasher
            if digest.algorithm != hasher.algorithm:
                hasher = DigestVerifier(digest.algorithm)
                async for chunk in segments.read(self.driver, _HASH_CHUNK):
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
            await self._sync(name, upload_id, segments)
            link = layout.layer_link(name, digest)
            if not await self._place(digest, upload_id, segments):
                # A copy was there: the upload's bytes stay until the link is confirmed,
                # as a garbage collection may delete that copy meanwhile (LinkWriter.write).
                try:
                    await self.links.write(name, link, digest)
                except BlobGone:
                    await self._place(digest, upload_id, segments)
                    await self.links.write(name, link, digest)
                await self._discard(name, upload_id)
                return BlobInfo(digest, segments.size)
            # The upload's folder goes while the link is written (the blob is in place and
            # durable): the client waits for one of them, not both.
            linked, discarded = await asyncio.gather(
                self.links.write(name, link, digest),
                self._discard(name, upload_id),
                return_exceptions=True,
            )
            for outcome in (linked, discarded):
                if isinstance(outcome, BaseException):
                    raise outcome
            return BlobInfo(digest, segments.size)

    async def _place(self, digest: Digest, upload_id: str, segments: Segments) -> bool:
        """The upload's bytes moved or copied into place as the blob; False where a copy
        was there already (nothing done)."""
        try:
            if len(segments.parts) == 1:
                only = segments.parts[0]
                return await self.blobs.adopt(digest, only.key, only.version)
            # One pass over the segments, verified again as they are copied.
            return await self.blobs.assemble(digest, segments.read(self.driver, _HASH_CHUNK))
        except StorageConflict as exc:
            # Another replica appended meanwhile: what was verified is not what is
            # there now. Nothing moved; the client may check the upload and go on.
            raise RegistryError(
                ErrorCode.BLOB_UPLOAD_INVALID,
                "the upload changed while it was being completed (a concurrent request)",
                {"uuid": upload_id},
            ) from exc

    async def _sync(self, name: str, upload_id: str, segments: Segments) -> None:
        """Put the upload's bytes on disk before they become a visible blob."""
        try:
            for part in segments.parts:
                await self.driver.sync(part.key)
        except StorageNotFound as exc:
            raise _upload_unknown(upload_id) from exc
        except StorageError as exc:
            # Some bytes may not be on disk, and the OS reports a failed writeback only
            # once: a retried PUT would find nothing wrong. The client starts again.
            with contextlib.suppress(RegistryError):
                await self._discard(name, upload_id)
            raise storage_unavailable(exc) from exc

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


@dataclass(frozen=True, slots=True)
class _Written:
    segments: Segments  # the upload's objects now (with their versions, where any)
    hasher: Hasher

    @property
    def size(self) -> int:
        return self.segments.size


def _range_headers(status: UploadStatus) -> dict[str, str]:
    return {"Range": f"0-{max(status.size - 1, 0)}", "Docker-Upload-UUID": status.upload_id}
