"""What the HTTP layer sees of a repository, local or cached: one interface for both, split
into facets the way distribution splits it, so handlers never ask "is this a cache?"."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from entrepot.oci.digest import Digest


@dataclass(frozen=True, slots=True)
class BlobInfo:
    digest: Digest
    size: int
    # The repository that holds it when that is not the repository asked for: a plain
    # name answered from its mirror's cache (``docker.io/library/x``). Notifications name it.
    held_by: str | None = None


@dataclass(frozen=True, slots=True)
class BlobContent:
    """A readable blob: a local file to send zero-copy when there is one, else a stream;
    ``redirect_url`` gives a URL to send the client to instead (a presigned S3 URL), or
    None to serve it here. ``settled``, for a blob still arriving (a cache fill), waits
    briefly for the complete copy: it, or None when it is not coming soon (then stream)."""

    info: BlobInfo
    local_path: str | None
    open_stream: Callable[[int, int | None], AsyncIterator[bytes]]
    redirect_url: Callable[[], Awaitable[str | None]] | None = None
    settled: Callable[[], Awaitable[BlobContent | None]] | None = None


@dataclass(frozen=True, slots=True)
class ManifestContent:
    digest: Digest
    media_type: str
    raw: bytes
    held_by: str | None = None  # as BlobInfo's


@dataclass(frozen=True, slots=True)
class ManifestPut:
    digest: Digest
    subject: Digest | None


@dataclass(frozen=True, slots=True)
class UploadStatus:
    upload_id: str
    size: int


class Blobs(Protocol):
    """A repository's blobs, as a pull reads them."""

    async def stat(self, digest: Digest) -> BlobInfo: ...
    async def open(self, digest: Digest) -> BlobContent: ...


class Manifests(Protocol):
    """A repository's manifests, by tag or digest, and what refers to them."""

    async def get(self, reference: str) -> ManifestContent: ...
    async def referrers(
        self, digest: Digest, artifact_type: str | None
    ) -> list[dict[str, object]]: ...


class Tags(Protocol):
    async def list(self) -> list[str]: ...


class BlobWriter(Protocol):
    """Blobs going into a repository (upload sessions, cross-repository mounts) and out
    of it."""

    async def start_upload(self) -> UploadStatus: ...
    async def upload_status(self, upload_id: str) -> UploadStatus: ...
    async def append_upload(
        self, upload_id: str, chunks: AsyncIterator[bytes], start: int | None
    ) -> UploadStatus: ...
    async def finish_upload(
        self, upload_id: str, digest: Digest, chunks: AsyncIterator[bytes] | None
    ) -> BlobInfo: ...
    async def cancel_upload(self, upload_id: str) -> None: ...
    async def mount(self, digest: Digest, source: str | None) -> BlobInfo | None:
        """Link a blob another repository holds; None when it cannot be mounted."""
        ...

    async def delete(self, digest: Digest) -> None: ...


class ManifestWriter(Protocol):
    async def put(self, reference: str, raw: bytes, content_type: str | None) -> ManifestPut: ...
    async def delete(self, reference: str) -> tuple[str, ...]:
        """Delete a manifest (and the tags on it) or a tag; returns the tags a manifest's
        deletion took away."""
        ...


@dataclass(frozen=True, slots=True)
class Writes:
    """What a push or a delete changes in a repository."""

    blobs: BlobWriter
    manifests: ManifestWriter


@dataclass(frozen=True, slots=True)
class Repository:
    """A repository as distribution sees one: facets for blobs, manifests and tags, and
    ``writes`` for pushes and deletes, None when the repository is read-only (a cache of
    an upstream), so handlers never ask what kind of repository they hold."""

    name: str
    blobs: Blobs
    manifests: Manifests
    tags: Tags
    writes: Writes | None
    # The upstream registry host a cached repository answers for (sent as the
    # OCI-Namespace header); None for what was pushed here.
    namespace: str | None = None


class RepositoryResolver(Protocol):
    """Finds the repository that answers for a name (local, or later a cached upstream)."""

    async def repository(
        self, name: str, *, for_push: bool = False, namespace: str | None = None
    ) -> Repository:
        """The repository answering for ``name``; ``namespace`` is the ``ns`` query
        parameter (the registry host a containerd mirror request is meant for)."""
        ...

    async def catalog(self, n: int | None, last: str | None) -> list[str]: ...

    def scope_name(self, name: str, namespace: str | None) -> str:
        """The repository name access rules see for a request: the cache name
        ``<host>/<name>`` when ``ns`` routes it to a cached upstream, else ``name``."""
        ...
