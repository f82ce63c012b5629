"""Every in-memory cache stays within its bound however many distinct keys go by: a soak
of hours sends new upload ids, digests, storage keys, manifests and repositories all the
time, and a cache without a bound would grow with them (issue 13, "memory that keeps
growing")."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from entrepot.auth import guard, tokens
from entrepot.auth.htpasswd import UserDirectory
from entrepot.auth.ratelimit import FailedLoginLimiter
from entrepot.http import app as http_app
from entrepot.http import manifests as http_manifests
from entrepot.http.context import HeadersMade
from entrepot.oci import digest as digests
from entrepot.oci import names
from entrepot.oci.digest import Digest
from entrepot.oci.manifest import parse_manifest
from entrepot.proxy.cache import MAX_NEGATIVE, ProxyCache
from entrepot.proxy.upstream_auth import MAX_CACHED, Token, TokenCache, TokenKey
from entrepot.registry import blobs as registry_blobs
from entrepot.registry.keyedlocks import KeyedLocks
from entrepot.registry.local import LocalRegistry
from entrepot.registry.manifests import ManifestCache, ManifestService
from entrepot.registry.uploads import UploadService
from entrepot.storage import filesystem
from entrepot.storage.filesystem import FilesystemDriver

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


async def _body(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _manifest(n: int, padding: int = 0) -> bytes:
    config = Digest.of(f"config {n}".encode())
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": str(config), "size": 8},
            "layers": [],
            "annotations": {"n": str(n), "pad": "x" * padding},
        }
    ).encode()  # fmt: skip


# --- uploads: two workers over one store ----------------------------------------------------


async def test_uploads_finished_by_another_worker_leave_bounded_state(tmp_path: Path) -> None:
    """Worker A starts uploads that worker B finishes (a load balancer does that): A never
    hears of the end, so its running hashes must be pushed out by newer ones, and no
    lock outlives its request on either side."""
    driver = FilesystemDriver(tmp_path)
    worker_a, worker_b = LocalRegistry(driver), LocalRegistry(driver)
    bound = 8
    worker_a.uploads = UploadService(driver, worker_a.blobs, worker_a.links, max_hashes=bound)
    for n in range(5 * bound):
        data = f"layer {n}".encode()
        started = await worker_a.uploads.start("team/app")
        await worker_a.uploads.append("team/app", started.upload_id, _body(data[:3]), 0)
        info = await worker_b.uploads.finish(
            "team/app", started.upload_id, Digest.of(data), _body(data[3:])
        )
        assert info.digest == Digest.of(data)

    assert len(worker_a.uploads._hashes) == bound
    assert len(worker_b.uploads._hashes) == 0
    assert len(worker_a.uploads._locks) == len(worker_b.uploads._locks) == 0


async def test_an_upload_whose_hash_was_pushed_out_still_finishes(tmp_path: Path) -> None:
    driver = FilesystemDriver(tmp_path)
    local = LocalRegistry(driver)
    local.uploads = UploadService(driver, local.blobs, local.links, max_hashes=2)
    first = await local.uploads.start("app")
    await local.uploads.append("app", first.upload_id, _body(b"first "), 0)
    for _ in range(3):  # newer uploads push the first one's hash out
        await local.uploads.start("app")

    info = await local.uploads.finish(
        "app", first.upload_id, Digest.of(b"first part"), _body(b"part")
    )

    assert info.size == len(b"first part")


async def test_keyed_locks_serialise_a_key_and_forget_it_when_released() -> None:
    locks = KeyedLocks()
    inside: list[str] = []
    overlaps = 0

    async def use(key: str) -> None:
        nonlocal overlaps
        async with locks.hold(key):
            overlaps += key in inside
            inside.append(key)
            await asyncio.sleep(0.001)
            inside.remove(key)

    await asyncio.gather(*(use(f"upload-{n % 10}") for n in range(200)))

    assert overlaps == 0
    assert len(locks) == 0


async def test_keyed_locks_forget_a_waiter_that_was_cancelled() -> None:
    locks = KeyedLocks()
    held = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with locks.hold("k"):
            held.set()
            await release.wait()

    async def waiter() -> None:
        async with locks.hold("k"):
            pass

    first = asyncio.create_task(holder())
    await held.wait()
    second = asyncio.create_task(waiter())
    await asyncio.sleep(0)
    second.cancel()
    release.set()
    await first
    await asyncio.gather(second, return_exceptions=True)

    assert len(locks) == 0


# --- manifests and tag lists ----------------------------------------------------------------


def test_manifest_cache_stays_within_its_memory_budget() -> None:
    cache = ManifestCache(max_bytes=64 * 1024)
    manifests = [parse_manifest(_manifest(n, padding=n % 500), OCI_MANIFEST) for n in range(500)]
    for manifest in manifests:
        cache.put(manifest)
        assert cache.cost <= 64 * 1024

    assert 0 < len(cache) < 100
    assert cache.get(manifests[-1].digest) is manifests[-1]  # the newest stay
    assert cache.get(manifests[0].digest) is None


def test_a_manifest_bigger_than_the_budget_is_not_cached() -> None:
    cache = ManifestCache(max_bytes=4096)
    big = parse_manifest(_manifest(1, padding=8192), OCI_MANIFEST)
    cache.put(big)
    assert cache.get(big.digest) is None


async def test_tag_lists_of_many_repositories_stay_within_the_tag_budget(tmp_path: Path) -> None:
    driver = FilesystemDriver(tmp_path)
    local = LocalRegistry(driver)
    service = ManifestService(driver, local.blobs, ManifestCache(), local.links, max_cached_tags=20)
    raw = _manifest(0)
    config = json.loads(raw)["config"]
    data = f"config {0}".encode()
    for n in range(12):
        name = f"team/app{n}"
        await local.uploads.finish(name, (await local.uploads.start(name)).upload_id,
                                   Digest.parse(config["digest"]), _body(data))  # fmt: skip
        for tag in ("a", "b", "c"):
            await service.of(name).put(tag, raw, OCI_MANIFEST)
        assert await service.tags(name) == ["a", "b", "c"]

    assert sum(1 + len(tags) for _, tags in service._tag_lists.values()) <= 20
    assert len(service._tag_lists) == 5  # 4 tags' worth each


# --- memoised validation --------------------------------------------------------------------


def test_validation_caches_keep_only_recent_keys() -> None:
    bound = names.VALIDATED_CACHE_SIZE
    for n in range(2 * bound):
        names.validate_name(f"team/app{n}")
        names.validate_tag(f"v{n}")
        names.is_valid_tag(f"w{n}")
        Digest.parse(str(Digest.of(str(n).encode())))
        filesystem._check_key(f"docker/registry/v2/repositories/app/_uploads/{n}/data")

    assert names.validate_name.cache_info().currsize <= bound
    assert names.validate_tag.cache_info().currsize <= bound
    assert names.is_valid_tag.cache_info().currsize <= bound
    assert digests._parse_digest.cache_info().currsize <= digests.PARSED_CACHE_SIZE
    assert filesystem._check_key.cache_info().currsize <= filesystem.CHECKED_KEYS_CACHE_SIZE


# --- pull-through: upstream 404s ------------------------------------------------------------


def test_remembered_upstream_404s_are_bounded_and_expire(tmp_path: Path) -> None:
    cache = ProxyCache(LocalRegistry(FilesystemDriver(tmp_path)))
    for n in range(MAX_NEGATIVE + 500):
        cache.remember_missing(("docker.io", f"library/app{n}", "latest"), 60.0)
    cache.remember_missing(("docker.io", "gone", "latest"), -1.0)

    assert len(cache._negative) <= MAX_NEGATIVE
    assert cache.known_missing(("docker.io", f"library/app{MAX_NEGATIVE + 499}", "latest"))
    assert not cache.known_missing(("docker.io", "gone", "latest"))


# --- authentication ---------------------------------------------------------------------------


def test_verified_token_cache_keeps_at_most_its_entries() -> None:
    cache = tokens._VerifiedCache()
    claims = tokens.TokenClaims("alice", (), expires=time.time() + 3600)
    for n in range(tokens._CACHE_ENTRIES + 100):
        cache.put(f"token-{n}", claims)

    assert len(cache._items) == tokens._CACHE_ENTRIES
    assert cache.get(f"token-{tokens._CACHE_ENTRIES + 99}") is claims


def test_failed_sign_ins_are_remembered_for_a_bounded_number_of_clients() -> None:
    limiter = FailedLoginLimiter(max_failures=3, window=60)
    for n in range(100_100):
        limiter.failed(f"alice\0198.51.{n // 256}.{n % 256}")

    assert len(limiter._failures) <= 100_000


async def test_verified_passwords_are_remembered_for_a_bounded_number_of_pairs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # bcrypt is what the cache saves; here every password is right, at no cost.
    monkeypatch.setattr(guard, "check_password", lambda hashed, password: True)
    users = UserDirectory(None, {"alice": "$2y$05$stand-in-hash"})
    checker = guard.PasswordChecker(users, FailedLoginLimiter())
    for n in range(10_050):
        assert await checker.verify("alice", f"password {n}", "192.0.2.1")

    assert len(checker._good) <= 10_001


async def test_upstream_token_cache_keeps_at_most_max_cached_tokens() -> None:
    cache = TokenCache(time.monotonic)

    async def fetch() -> Token:
        return Token("secret", 300.0)

    for n in range(MAX_CACHED + 50):
        await cache.get(
            TokenKey("https://auth.test/token", "registry", f"repository:app{n}:pull"), fetch
        )

    assert len(cache._tokens) == MAX_CACHED


def test_accept_header_matches_are_memoised_for_a_bounded_number_of_headers() -> None:
    for n in range(3000):
        http_manifests._accepts((f"application/x-custom-{n}+json".encode(),), OCI_MANIFEST)

    info = http_manifests._accepted.cache_info()
    assert info.maxsize is not None and info.currsize <= info.maxsize <= 4096


def test_remembered_routes_link_digests_and_headers_are_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http_app, "_ROUTED_KEPT", 10)
    monkeypatch.setattr(registry_blobs, "LINK_DIGESTS_KEPT", 10)
    monkeypatch.setattr(http_app, "_routed", {})
    monkeypatch.setattr(registry_blobs, "_link_digests", {})
    made = HeadersMade(lambda n: ((b"x-n", str(n).encode()),), kept=10)
    for n in range(25):  # every upload's request has a new path, every push new digests
        _, _, name, reference = http_app._route(f"app/blobs/uploads/{n}", "PATCH")
        assert (name, reference) == ("app", str(n))
        digest = Digest.of(b"%d" % n)
        assert registry_blobs._linked(str(digest).encode()) == digest
        assert made(n) == ((b"x-n", str(n).encode()),)
    assert len(http_app._routed) == len(registry_blobs._link_digests) == len(made.made) == 10
