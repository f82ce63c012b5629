"""What the HTTP layer sees of a repository, local or cached: one interface for both, so
handlers never ask "is this a cache?"."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from entrepot.oci.digest import Digest


@dataclass(frozen=True, slots=True)
class BlobInfo:
    digest: Digest
    size: int


@dataclass(frozen=True, slots=True)
class BlobContent:
    """A readable blob: a local file to send zero-copy when there is one, else a stream;
    ``redirect_url`` gives a URL to send the client to instead (a presigned S3 URL), or
    None to serve it here."""

    info: BlobInfo
    local_path: str | None
    open_stream: Callable[[int, int | None], AsyncIterator[bytes]]
    redirect_url: Callable[[], Awaitable[str | None]] | None = None


@dataclass(frozen=True, slots=True)
class ManifestContent:
    digest: Digest
    media_type: str
    raw: bytes


@dataclass(frozen=True, slots=True)
class ManifestPut:
    digest: Digest
    subject: Digest | None


@dataclass(frozen=True, slots=True)
class UploadStatus:
    upload_id: str
    size: int


class Repository(Protocol):
    name: str
    # The upstream registry host this repository caches, when it was reached by the
    # ``ns`` query parameter (answered with the OCI-Namespace header); None otherwise.
    namespace: str | None

    # Blobs
    async def stat_blob(self, digest: Digest) -> BlobInfo: ...
    async def open_blob(self, digest: Digest) -> BlobContent: ...
    async def delete_blob(self, digest: Digest) -> None: ...
    async def mount_blob(self, digest: Digest, source: str | None) -> BlobInfo | None: ...

    # Uploads
    async def start_upload(self) -> UploadStatus: ...
    async def upload_status(self, upload_id: str) -> UploadStatus: ...
    async def append_upload(
        self, upload_id: str, chunks: AsyncIterator[bytes], start: int | None
    ) -> UploadStatus: ...
    async def finish_upload(
        self, upload_id: str, digest: Digest, chunks: AsyncIterator[bytes] | None
    ) -> BlobInfo: ...
    async def cancel_upload(self, upload_id: str) -> None: ...

    # Manifests and tags
    async def get_manifest(self, reference: str) -> ManifestContent: ...
    async def put_manifest(
        self, reference: str, raw: bytes, content_type: str | None
    ) -> ManifestPut: ...
    async def delete_manifest(self, reference: str) -> None: ...
    async def list_tags(self) -> list[str]: ...
    async def referrers(
        self, digest: Digest, artifact_type: str | None
    ) -> list[dict[str, object]]: ...


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
