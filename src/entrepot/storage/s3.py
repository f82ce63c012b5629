"""The S3 driver: keys are objects in one bucket, under registry:2's layout.

Key "a/b" is the object ``<rootdirectory>/a/b`` (registry:2's s3 driver strips the slashes
around ``rootdirectory`` the same way), so registry:2 and Entrepot share a bucket.
"Directories" are key prefixes, listed with a "/" delimiter.

The client is obstore (Rust's object_store): on radosgw it needed a fifth of aiobotocore's
CPU per request and half its memory, and streamed 256 MiB about twice as fast (see the
commit that added this driver for the numbers).

Writers stream: a background ``put_async`` pulls what ``write`` hands it through a small
queue and uploads it as a multipart upload in ``chunksize`` parts (a few in flight), so
memory stays bounded whatever the object's size. ``commit`` completes the upload (the
object appears whole, atomically); ``cancel`` makes the producer fail, which aborts it.
An append writer streams the existing object into a new upload before the new bytes
(S3 objects cannot grow in place); the result replaces the object at commit. Uploads do
not use it (``appends_in_place`` is False: they keep chunks as separate objects).
"""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import hashlib
import os
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import obstore
from obstore.exceptions import AlreadyExistsError, BaseError, NotFoundError, PreconditionError
from obstore.store import S3Store

from entrepot.storage.defaults import Folder
from entrepot.storage.driver import (
    LEASE_TTL,
    FileInfo,
    Fold,
    Infos,
    IngestState,
    IngestWriter,
    Lease,
    LeaseScope,
    StorageConflict,
    StorageDriver,
    StorageError,
    StorageNotFound,
    StorageWriter,
    check_key,
)
from entrepot.storage.leases import FlockLeases, Leases
from entrepot.storage.objectleases import ObjectLeases
from entrepot.storage.s3ingest import S3Ingest, ingest_state, read_ingest
from entrepot.storage.s3mirror import Mirrors, mirror_directory
from entrepot.storage.s3stream import MIN_PIECE, S3Writer, cut, reason
from entrepot.storage.s3wait import ANSWER_TIMEOUT, answered, each_answered

if TYPE_CHECKING:
    from obstore import GetOptions

__all__ = ["S3Driver", "S3Settings", "aws_credentials", "probe_bucket"]

MIN_CHUNK = 5 * 1024 * 1024  # S3's smallest part (but the last)
LEASES = "entrepot/leases"  # the bucket's leases without Redis (storage/objectleases.py)
REDIRECT_EXPIRY = timedelta(minutes=20)  # registry:2's presigned URLs last 20 minutes
# obstore raises its NotFoundError for some calls and FileNotFoundError for others.
_MISSING = (NotFoundError, FileNotFoundError)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class S3Settings:
    """What the driver needs, already validated (the config layer maps registry:2's keys)."""

    bucket: str
    region: str = "us-east-1"
    endpoint: str | None = None  # with its scheme; None: AWS's endpoint for the region
    access_key: str | None = None  # None: AWS_* environment, then ~/.aws/credentials
    secret_key: str | None = None
    session_token: str | None = None
    path_style: bool = False
    skip_verify: bool = False
    rootdirectory: str = ""
    chunksize: int = 10 * 1024 * 1024
    parts_in_flight: int = 4
    encrypt: bool = False
    keyid: str | None = None
    redirect: bool = True  # False: storage.redirect.disable (blob GETs stream through us)


def aws_credentials(environ: dict[str, str] | None = None) -> tuple[str, str, str | None] | None:
    """(access key, secret, session token) from the AWS environment variables or the shared
    credentials file (``AWS_SHARED_CREDENTIALS_FILE``, ``AWS_PROFILE``), as the AWS SDKs
    read them; None when neither has any. Blocking: call it at start-up."""
    env = os.environ if environ is None else environ
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], env.get("AWS_SESSION_TOKEN")
    path = env.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.expanduser("~/.aws/credentials")
    parser = configparser.RawConfigParser()
    try:
        parser.read(path)
    except configparser.Error as exc:
        raise StorageError(f"AWS credentials file {path}: {exc}") from exc
    profile = env.get("AWS_PROFILE", "default")
    if not parser.has_section(profile):
        return None
    section = parser[profile]
    key, secret = section.get("aws_access_key_id"), section.get("aws_secret_access_key")
    if not key or not secret:
        return None
    return key, secret, section.get("aws_session_token")


class S3Driver(StorageDriver):
    """Objects in an S3 bucket (AWS, radosgw, MinIO, ...); see the module docstring."""

    name = "s3"
    follow_interval = 0.1  # a listing per look
    appends_in_place = False  # an append re-uploads the object (see S3Writer)

    def __init__(
        self,
        settings: S3Settings,
        leases: Leases | None = None,
        mirrors: str | None = None,
        lock_files: str | None = None,
        answer_timeout: float = ANSWER_TIMEOUT,
    ) -> None:
        self.settings = settings
        # Seconds a call waits for the server's answer, a stream for its next piece (s3wait)
        self.answer_timeout = answer_timeout
        self.bucket = settings.bucket
        self.endpoint = settings.endpoint or f"https://s3.{settings.region}.amazonaws.com"
        root = settings.rootdirectory.strip("/")
        self._prefix = root + "/" if root else ""
        self.chunksize = max(settings.chunksize, MIN_CHUNK)
        self.parts_in_flight = max(1, settings.parts_in_flight)
        self.store = S3Store(settings.bucket, **self._store_options(settings))
        # Leases of scope "store" are in the shared lease service (Redis) when there is
        # one, else in the bucket (objects under LEASES). Those of scope "machine" (cache
        # fills) are in Redis too, else lock files of this machine (in ``lock_files`` or
        # below the temp directory): its processes share one fill, other replicas each
        # fill on their own, and a fill costs no request to the bucket for its lease.
        self.leases = leases or FlockLeases(
            lock_files or local_lease_directory(self.endpoint, self.bucket, root)
        )
        self.store_leases = leases or ObjectLeases(self, LEASES)
        # Cache fills read by this machine's processes from one local copy (s3mirror), in
        # ``mirrors`` (a directory) or below the temp directory.
        self.mirrors = Mirrors(mirrors or mirror_directory(self.endpoint, self.bucket, root))

    @staticmethod
    def _store_options(s: S3Settings) -> dict[str, Any]:
        config: dict[str, Any] = {
            "region": s.region,
            "virtual_hosted_style_request": not s.path_style,
        }
        if s.endpoint:
            config["endpoint"] = s.endpoint
        if s.access_key and s.secret_key:
            config["access_key_id"] = s.access_key
            config["secret_access_key"] = s.secret_key
            if s.session_token:
                config["token"] = s.session_token
        if s.encrypt:
            config["server_side_encryption"] = "aws:kms" if s.keyid else "AES256"
            if s.keyid:
                config["sse_kms_key_id"] = s.keyid
        client = {
            "allow_http": bool(s.endpoint and s.endpoint.startswith("http://")),
            "allow_invalid_certificates": s.skip_verify,
            "connect_timeout": timedelta(seconds=5),
            "timeout": timedelta(minutes=5),
        }
        retry = {"max_retries": 3, "retry_timeout": timedelta(seconds=30)}
        return {"config": config, "client_options": client, "retry_config": retry}

    def __repr__(self) -> str:
        return f"S3Driver(bucket={self.bucket!r}, endpoint={self.endpoint!r})"

    def object_key(self, key: str) -> str:
        check_key(key)
        return self._prefix + key

    def _dir_key(self, prefix: str) -> str | None:
        """The object-key prefix listing ``prefix`` ("" is the root), without the slash."""
        if not prefix:
            return self._prefix.rstrip("/") or None
        return self.object_key(prefix)

    def where(self, key: str) -> str:
        return f"s3 bucket {self.bucket} key {self._prefix}{key} at {self.endpoint}"

    def _answered(self, call: Awaitable[T]) -> Awaitable[T]:
        return answered(call, self.answer_timeout)

    def _each(self, items: AsyncIterator[T]) -> AsyncIterator[T]:
        return each_answered(items, self.answer_timeout)

    def _error(self, exc: BaseException, key: str, missing: bool = True) -> StorageError:
        """StorageNotFound for a missing key (``missing``: the operation reads it), else
        StorageError naming bucket, key, endpoint and S3's reason. A 404 for the bucket
        (NoSuchBucket: it was deleted) is an error, not a missing key."""
        if missing and isinstance(exc, _MISSING) and "NoSuchBucket" not in str(exc):
            return StorageNotFound(key)
        return StorageError(f"{self.where(key)}: {reason(exc)}")

    async def get_content(self, key: str) -> bytes:
        path = self.object_key(key)
        try:
            result = await self._answered(obstore.get_async(self.store, path))
            return bytes(await self._answered(result.bytes_async()))
        except (BaseError, OSError) as exc:
            raise self._error(exc, key) from exc

    async def put_content(self, key: str, data: bytes) -> None:
        path = self.object_key(key)
        try:
            await self._answered(obstore.put_async(self.store, path, data, use_multipart=False))
        except (BaseError, OSError) as exc:
            raise self._error(exc, key, missing=False) from exc

    async def put_new(self, key: str, data: bytes) -> bool:
        path = self.object_key(key)
        try:
            put = obstore.put_async(self.store, path, data, use_multipart=False, mode="create")
            await self._answered(put)
        except (AlreadyExistsError, PreconditionError):
            return False
        except (BaseError, OSError) as exc:
            raise self._error(exc, key, missing=False) from exc
        return True

    async def read(
        self, key: str, offset: int = 0, length: int | None = None, chunk_size: int = 1 << 20
    ) -> AsyncIterator[bytes]:
        if offset < 0 or (length is not None and length < 0) or chunk_size <= 0:
            raise ValueError("offset and length must be >= 0 and chunk_size > 0")
        path = self.object_key(key)
        options: GetOptions = {}
        if offset or length is not None:
            # A range needs the size first: S3 refuses one that starts at or past the end.
            try:
                size = (await self._answered(obstore.head_async(self.store, path)))["size"]
            except (BaseError, OSError) as exc:
                raise self._error(exc, key) from exc
            end = size if length is None else min(size, offset + length)
            if offset >= end:
                return
            options["range"] = (offset, end)
        # else the whole object (a blob GET): one GET, no HEAD first.
        try:
            result = await self._answered(obstore.get_async(self.store, path, options=options))
            # obstore's pieces passed on as they are (``cut``), not merged into 1 MiB and
            # cut again to exact sizes: one copy of every byte less (obstore already
            # copies each piece out of its buffers into ``bytes``).
            pieces = self._each(result.stream(min_chunk_size=MIN_PIECE))
            async for chunk in cut(pieces, chunk_size):
                yield chunk
        except (BaseError, OSError) as exc:
            raise self._error(exc, key) from exc

    async def writer(self, key: str, append: bool = False) -> StorageWriter:
        self.object_key(key)
        existing = (await self.stat(key)).size if append else None
        if append and existing is None:
            raise StorageNotFound(key)
        return S3Writer(self, key, existing)

    async def stat(self, key: str) -> FileInfo:
        if key:
            try:
                meta = await self._answered(obstore.head_async(self.store, self.object_key(key)))
                mtime = meta["last_modified"].timestamp()
                return FileInfo(key, meta["size"], mtime, False, meta.get("e_tag"))
            except _MISSING:
                pass
            except (BaseError, OSError) as exc:
                raise self._error(exc, key) from exc
        if await self._has_children(key):
            return FileInfo(key, 0, 0.0, True)
        raise StorageNotFound(key)

    async def _has_children(self, prefix: str) -> bool:
        stream = self._each(obstore.list(self.store, self._dir_key(prefix), chunk_size=1))
        try:
            async for batch in stream:
                if batch:
                    return True
        except (BaseError, OSError) as exc:
            raise self._error(exc, prefix) from exc
        return False

    async def list(self, prefix: str) -> list[str]:
        try:
            listing = await self._answered(
                obstore.list_with_delimiter_async(self.store, self._dir_key(prefix))
            )
        except (BaseError, OSError) as exc:
            raise self._error(exc, prefix) from exc
        names = [p.rsplit("/", 1)[-1] for p in listing["common_prefixes"]]
        names += [o["path"].rsplit("/", 1)[-1] for o in listing["objects"]]
        if not names:
            raise StorageNotFound(prefix)
        return sorted(names)

    async def move(
        self, src: str, dst: str, *, sync: bool = True, if_version: str | None = None
    ) -> None:
        src_path, dst_path = self.object_key(src), self.object_key(dst)
        try:
            await obstore.copy_async(self.store, src_path, dst_path)
        except (BaseError, OSError) as exc:
            raise self._error(exc, src) from exc
        if if_version is not None:
            # A copy cannot be made conditional here (obstore): check afterwards. Still
            # that version now means the copy is of it (a version names its content).
            failure: BaseException | None = None
            try:
                now = (await self._answered(obstore.head_async(self.store, src_path))).get("e_tag")
            except (BaseError, OSError) as exc:
                now, failure = None, None if isinstance(exc, _MISSING) else exc
            if now != if_version:
                with contextlib.suppress(BaseError, OSError):
                    await obstore.delete_async(self.store, dst_path)
                if failure is not None:
                    raise self._error(failure, src, missing=False) from failure
                raise StorageConflict(f"{self.where(src)}: changed while it was moved")
        try:
            await self._answered(obstore.delete_async(self.store, src_path))
        except (BaseError, OSError) as exc:
            raise self._error(exc, src) from exc

    async def delete(self, key: str) -> None:
        path = self.object_key(key)
        paths: list[str] = []
        try:
            with contextlib.suppress(*_MISSING):
                await self._answered(obstore.head_async(self.store, path))
                paths.append(path)
            async for batch in self._each(obstore.list(self.store, path, chunk_size=1000)):
                paths.extend(o["path"] for o in batch)
            if not paths:
                raise StorageNotFound(key)
            for i in range(0, len(paths), 1000):  # DeleteObjects takes 1000 keys at most
                await self._answered(obstore.delete_async(self.store, paths[i : i + 1000]))
        except (BaseError, OSError) as exc:
            raise self._error(exc, key) from exc

    async def scan(self, prefix: str, *, fold: Fold | None = None) -> AsyncGenerator[Infos, None]:
        # One flat listing: sizes and times come with the keys, 1,000 a request; a fold
        # only filters it.
        base = self._dir_key(prefix)
        cut = len(base) + 1 if base else 0
        folder = Folder(fold) if fold is not None else None
        try:
            async for batch in self._each(obstore.list(self.store, base, chunk_size=1000)):
                infos = [
                    FileInfo(
                        o["path"][cut:],
                        o["size"],
                        o["last_modified"].timestamp(),
                        False,
                        o.get("e_tag"),
                    )
                    for o in batch
                ]
                if folder is not None:
                    infos = folder.feed(infos)
                if infos:
                    yield infos
        except (BaseError, OSError) as exc:
            raise self._error(exc, prefix) from exc
        if folder is not None and (rest := folder.flush()):
            yield rest

    async def delete_many(self, keys: Sequence[str]) -> None:
        paths = [self.object_key(key) for key in keys]
        try:
            for i in range(0, len(paths), 1000):  # DeleteObjects takes 1000 keys at most
                await self._answered(obstore.delete_async(self.store, paths[i : i + 1000]))
        except (BaseError, OSError) as exc:
            raise self._error(exc, keys[0], missing=False) from exc

    def _leases(self, key: str, scope: LeaseScope) -> Leases:
        check_key(key)
        return self.leases if scope == "machine" else self.store_leases

    async def try_lease(
        self, key: str, *, ttl: float = LEASE_TTL, scope: LeaseScope = "store"
    ) -> Lease | None:
        return await self._leases(key, scope).acquire(key, ttl)

    async def lease_holder(self, key: str, *, scope: LeaseScope = "store") -> str | None:
        return await self._leases(key, scope).holder(key)

    async def ingest(self, key: str, dst: str, size: int | None = None) -> IngestWriter:
        self.object_key(dst)
        return await S3Ingest.start(self, key, dst, size)

    async def ingested(self, key: str) -> IngestState | None:
        return await ingest_state(self, key)

    def read_ingest(self, key: str, offset: int, length: int) -> AsyncIterator[bytes]:
        return read_ingest(self, key, offset, length)

    async def redirect_url(self, key: str) -> str | None:
        path = self.object_key(key)
        if not self.settings.redirect:
            return None
        try:
            return await obstore.sign_async(self.store, "GET", path, REDIRECT_EXPIRY)
        except (BaseError, OSError) as exc:
            raise self._error(exc, key) from exc

    async def close(self) -> None:
        await self.mirrors.close()
        await self.leases.close()
        # Drop the client now: obstore aborts the process if a store with open connections
        # is still alive when the interpreter finalises.
        with contextlib.suppress(AttributeError):
            del self.store

    async def check_bucket(self) -> None:
        """Raise StorageError naming the bucket, the endpoint and the reason unless the
        bucket can be listed with these credentials (for start-up)."""
        try:
            await self._answered(obstore.list_with_delimiter_async(self.store, self._dir_key("")))
        except (BaseError, OSError) as exc:
            raise StorageError(
                f"S3 bucket {self.bucket!r} at {self.endpoint}: {reason(exc)}"
            ) from exc


def local_lease_directory(endpoint: str, bucket: str, root: str) -> str:
    """Lock files of this machine's processes on one store: below the temp directory, in
    a directory named after endpoint, bucket and rootdirectory, one per user (a command
    run with sudo made a root-owned one that stopped the server's user taking locks)."""
    name = hashlib.sha256(f"{endpoint}\n{bucket}\n{root}".encode()).hexdigest()[:24]
    return os.path.join(tempfile.gettempdir(), f"entrepot-leases-{os.geteuid()}", name)


def probe_bucket(settings: S3Settings, write_key: str | None) -> str | None:
    """Why the bucket cannot be used (naming bucket, endpoint and S3's reason), or None:
    it must list, and with ``write_key`` take a small object there and delete it. For
    start-up, in a process of its own (obstore's runtime must not be started in a process
    that forks afterwards); blocking."""

    async def probe() -> None:
        driver = S3Driver(settings)
        try:
            await driver.check_bucket()
            if write_key is not None:
                await driver.put_content(write_key, b"entrepot storage probe\n")
                await driver.delete(write_key)
        finally:
            await driver.close()

    try:
        asyncio.run(probe())
    except StorageError as exc:
        return str(exc)
    return None
