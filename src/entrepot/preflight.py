"""Part of the composition root: the storage driver the configuration asks for, the
checks the CLI runs on it before serving (storage usable, a registry:2 store taken over),
and the retention rules a collection applies (the garbage-collect command needs no more).

The server's parent process only supervises its workers and forks them: it runs these
checks, so this module keeps its imports small (no HTTP app, no aiohttp; obstore and redis
only for S3 and a redis section). Whatever the parent imports, every worker holds too."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import pwd
from typing import TYPE_CHECKING

from entrepot.config import Config
from entrepot.proxy.hostnames import host_aliases
from entrepot.proxy.registry2_store import Registry2Store
from entrepot.registry.health import check_writable, probe_key
from entrepot.registry.retention import RetentionRule
from entrepot.storage import StorageDriver, StorageError, StorageNotFound
from entrepot.storage.filesystem import FilesystemDriver

if TYPE_CHECKING:  # imported only with storage.s3 or a redis section (large imports)
    from entrepot.storage.redisleases import RedisSettings
    from entrepot.storage.s3 import S3Settings


def retention_rules(config: Config) -> tuple[RetentionRule, ...]:
    return tuple(
        RetentionRule(
            repositories=rule.repositories,
            tags=rule.tags or ("*",),
            keep_latest=rule.keeplatest,
            keep_pulled_within=rule.keeppulledwithin,
            untagged_older_than=rule.untaggedolderthan,
        )
        for rule in config.garbagecollect.retention
    )


class OwnerSwitchError(Exception):
    """Root could not become the store's owner: the message says what to do."""


def become_store_owner(config: Config) -> str | None:
    """Run as the owner of a disk store when started as root and another user owns it (the
    user its server runs as): a maintenance command (``garbage-collect``, ``cache
    prefetch``) run with sudo would otherwise leave folders only root may write in (under
    ``entrepot/``, a cached image's), and the server then failed to record a tag push or
    take a lease there. Returns the line to tell the operator when it switched; raises
    OwnerSwitchError when it cannot."""
    if config.storage.s3 is not None or os.geteuid() != 0:
        return None
    root = config.storage.rootdirectory
    try:
        owner = os.stat(root)
    except OSError:
        return None  # made by the command itself, as a server run as root would
    if owner.st_uid == 0:
        return None
    try:
        user = pwd.getpwuid(owner.st_uid)
        name, gid = user.pw_name, user.pw_gid
    except KeyError:  # a uid with no name here (a container's): the folder's group
        user, name, gid = None, f"uid {owner.st_uid}", owner.st_gid
    try:
        if user is not None:
            os.initgroups(user.pw_name, gid)
        else:
            os.setgroups([gid])
        os.setgid(gid)
        os.setuid(owner.st_uid)
    except OSError as exc:
        raise OwnerSwitchError(
            f"storage.filesystem.rootdirectory {root} belongs to {name} (uid {owner.st_uid}) "
            f"and this command runs as root but cannot become that user ({exc}); run it as "
            f"that user (sudo -u {name} ...), so that what it writes stays the server's"
        ) from exc
    return (
        f"entrepot: running as {name} (uid {owner.st_uid}), the owner of "
        f"storage.filesystem.rootdirectory {root}, so that what this command writes stays "
        "writable by a server running as that user"
    )


def create_driver(config: Config) -> StorageDriver:
    # load_config already refused drivers Entrepot does not have.
    if config.storage.s3 is None:
        # Lock files under the root coordinate fills: Redis is not needed on one disk.
        return FilesystemDriver(config.storage.rootdirectory)
    from entrepot.storage.s3 import S3Driver

    settings = s3_settings(config)
    redis = redis_settings(config)
    if redis is None:
        return S3Driver(settings)
    from entrepot.storage.redisleases import RedisLeases

    root = settings.rootdirectory.strip("/")
    return S3Driver(settings, RedisLeases(redis, f"entrepot:lease:{settings.bucket}/{root}:"))


def redis_settings(config: Config) -> RedisSettings | None:
    redis = config.redis
    if redis is None:
        return None
    from entrepot.storage.redisleases import RedisSettings

    return RedisSettings(
        host=redis.host,
        port=redis.port,
        password=redis.password,
        db=redis.db,
        tls=redis.tls.enabled,
        dial_timeout=redis.dialtimeout_s or None,
        read_timeout=redis.readtimeout_s or None,
        write_timeout=redis.writetimeout_s or None,
        max_connections=redis.pool.maxactive or None,
    )


def fill_coordination(config: Config) -> tuple[int, str] | None:
    """What the operator gets from cache fills with this storage (a log level and a
    line), None without upstreams."""
    if not config.proxies:
        return None
    redis = redis_settings(config)
    if config.storage.s3 is None:
        return logging.INFO, (
            "cache fills: one upstream download per blob for every worker process using "
            f"storage.filesystem.rootdirectory {config.storage.rootdirectory} (lock files)"
            + ("; the redis section is not needed for that and not used" if redis else "")
        )
    if redis is not None:
        return logging.INFO, (
            f"cache fills: one upstream download per blob for every replica using "
            f"{redis.address} on S3 bucket {config.storage.s3.bucket}"
        )
    return logging.WARNING, (
        "cache fills on storage.s3 without a redis section: the worker processes of this "
        "machine share one upstream download per blob, but every replica downloads it "
        "once of its own; configure redis (addr) for one download across replicas "
        "(background work, such as garbage collection and eviction, runs on one replica at "
        "a time either way: its leases are in the bucket)"
    )


def s3_settings(config: Config) -> S3Settings:
    from entrepot.storage.s3 import S3Settings, aws_credentials

    s3 = config.storage.s3
    assert s3 is not None
    access, secret, token = s3.accesskey, s3.secretkey, s3.sessiontoken
    if not access:
        access, secret, token = aws_credentials() or (None, None, None)
    return S3Settings(
        bucket=s3.bucket,
        region=s3.region or "us-east-1",
        endpoint=s3.endpoint,
        access_key=access,
        secret_key=secret,
        session_token=token,
        path_style=s3.path_style,
        skip_verify=s3.skipverify,
        rootdirectory=s3.rootdirectory,
        chunksize=s3.chunksize,
        encrypt=s3.encrypt,
        keyid=s3.keyid,
        redirect=not config.storage.redirect_disabled,
    )


def storage_problem(config: Config, *, write: bool = True) -> str | None:
    """Why the configured storage cannot be used, in one line naming it, or None. Run
    before serving, so that an unwritable root or an unusable bucket stops start-up
    instead of failing every push later (read-only mode only needs to read). Without
    ``write`` (check-config), a disk is judged by its permissions: a check makes nothing."""
    if config.storage.s3 is not None:
        return _s3_problem(config) or _redis_problem(config)
    root = config.storage.rootdirectory
    if str(root).startswith("~"):  # YAML does not expand it: a folder named "~" would do
        return (
            f"storage.filesystem.rootdirectory {root}: '~' is not expanded here; write the "
            "full path (/home/NAME/...)"
        )
    if not write:
        return _disk_problem(config)

    async def probe() -> None:
        driver = create_driver(config)
        try:
            if config.storage.readonly:
                with contextlib.suppress(StorageNotFound):
                    await driver.stat("")
            else:
                await check_writable(driver)
        finally:
            await driver.close()

    try:
        asyncio.run(probe())
    except StorageError as exc:
        verb = "read" if config.storage.readonly else "write to"
        return (
            f"cannot {verb} storage.filesystem.rootdirectory {config.storage.rootdirectory} "
            f"({exc}); make it writable by this user (uid {os.geteuid()}) or choose "
            "another rootdirectory"
        )
    return None


def _disk_problem(config: Config) -> str | None:
    """storage_problem's verdict on a disk from permissions alone: the root, or the
    nearest folder above it that exists (where it would be made)."""
    root = config.storage.rootdirectory.absolute()
    there = root
    while not there.exists() and there != there.parent:
        there = there.parent
    readonly = config.storage.readonly
    need = os.R_OK | os.X_OK if readonly else os.W_OK | os.X_OK
    if there.is_dir() and os.access(there, need, effective_ids=True):
        return None
    denied = "Permission denied"
    if there == root:
        why = denied if there.is_dir() else "not a folder"
    elif not there.is_dir():
        why = f"it does not exist, and {there} above it is a file, not a folder"
    else:
        why = f"it does not exist, and {there}, where it would be made: {denied}"
    return (
        f"cannot {'read' if readonly else 'write to'} storage.filesystem.rootdirectory "
        f"{config.storage.rootdirectory} ({why}); make it {'readable' if readonly else 'writable'} "
        f"by this user (uid {os.geteuid()}) or choose another rootdirectory"
    )


def _redis_problem(config: Config) -> str | None:
    settings = redis_settings(config)
    if settings is None:
        return None
    from entrepot.storage.redisleases import ping

    problem = ping(settings)
    if problem is None:
        return None
    return f"cannot use redis ({problem}); check redis.addr, redis.password and redis.tls"


def _s3_problem(config: Config) -> str | None:
    try:
        settings = s3_settings(config)
    except StorageError as exc:  # an unreadable AWS credentials file
        return f"cannot use storage.s3 ({exc})"
    import multiprocessing  # here: its import (pickle) was 6 ms of every collection's start

    from entrepot.storage.s3 import probe_bucket

    # The S3 client's (obstore's) runtime does not survive fork(), and the server forks
    # its workers after this check: probe from a fresh process, never this one.
    context = multiprocessing.get_context("spawn")
    write_key = None if config.storage.readonly else probe_key()
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        problem = pool.submit(probe_bucket, settings, write_key).result()
    if problem is None:
        return None
    return f"cannot use storage.s3 ({problem}); check the bucket, regionendpoint and credentials"


def create_registry2_store(config: Config, driver: StorageDriver) -> Registry2Store:
    upstreams = config.proxies
    return Registry2Store(
        driver,
        mode=config.proxycache.registry2store,
        mirror=any(upstream.mirror for upstream in upstreams),
        routed={name for u in upstreams for name in host_aliases(u.host, u.aliases)},
        readonly=config.storage.readonly,
    )


def take_over_store(config: Config) -> str | None:
    """Decide, once, what a registry:2 store's plain-name repositories are
    (proxy/registry2_store.py), before any worker serves; a storage error in one line."""
    if config.storage.s3 is None:
        problem = _decide_store(config)
        where = f"storage.filesystem.rootdirectory {config.storage.rootdirectory}"
    elif not config.proxies:
        return None  # no cache on this bucket (a process of its own costs seconds)
    else:
        # The S3 client must not run in this process, whose workers fork from it.
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
            problem = pool.submit(_decide_store, config).result()
        where = f"storage.s3 bucket {config.storage.s3.bucket}"
    if problem is None:
        return None
    return (
        f"cannot record what the repositories under {where} are "
        f"(registry:2's cache or pushed): {problem}"
    )


def _decide_store(config: Config) -> str | None:
    async def decide() -> None:
        driver = create_driver(config)
        try:
            await create_registry2_store(config, driver).open()
        finally:
            await driver.close()

    try:
        asyncio.run(decide())
    except StorageError as exc:
        return str(exc)
    return None
