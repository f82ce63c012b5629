"""The composition root: the one place (besides the CLI) that reads the configuration and
wires storage, registry services and the HTTP app together."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import multiprocessing
import os
import socket
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.routing import Mount, Route

from entrepot.config import CONFIG_ENV, METRICS_DIR_ENV, Config, load_config
from entrepot.http.app import build_app
from entrepot.http.clientaddr import ClientAddresses
from entrepot.http.context import ApiContext
from entrepot.http.metrics import (
    HttpMetrics,
    MetricsMiddleware,
    metrics_endpoint,
    samples,
    scrape_registry,
    worker_stopped,
)
from entrepot.http.notify import EndpointSettings, NotificationMetrics, Notifier
from entrepot.http.ui import UiSettings, access_for, ui_routes
from entrepot.log_setup import configure_logging
from entrepot.proxy.access import NameRules
from entrepot.proxy.cache import ProxyCache
from entrepot.proxy.health import UpstreamHealth
from entrepot.proxy.janitor import CacheJanitor
from entrepot.proxy.metrics import CacheEvents, ProxyMetrics, RequestCounts
from entrepot.proxy.prefetch import Prefetcher, parse_platform
from entrepot.proxy.pulls import PullRecorder as ImagePullRecorder
from entrepot.proxy.ratelimit import RateBudget
from entrepot.proxy.registry2_store import Registry2Store
from entrepot.proxy.routing import ProxyResolver
from entrepot.proxy.upstream_client import UpstreamClient, UpstreamSettings
from entrepot.proxy.upstreams import DOCKER_HUB_ALIASES, CachePolicy, Upstream, host_aliases
from entrepot.registry.gc import GcOptions
from entrepot.registry.gcschedule import GcMetrics, ScheduledCollector
from entrepot.registry.health import StorageHealthCheck, check_writable, probe_key
from entrepot.registry.local import LocalRegistry
from entrepot.registry.pulls import PullRecorder as TagPullRecorder
from entrepot.registry.purge import run_upload_purger
from entrepot.registry.retention import RetentionRule
from entrepot.registry.usage import read_usage, run_usage_meter
from entrepot.root_auth import create_guard, derive_key, shared_secret
from entrepot.storage import StorageDriver, StorageError, StorageNotFound
from entrepot.storage.filesystem import FilesystemDriver
from entrepot.storage.s3 import S3Driver, S3Settings, aws_credentials, probe_bucket
from entrepot.storage.timed import TimedDriver

if TYPE_CHECKING:  # redis is imported only with a redis section (it is a large import)
    from entrepot.storage.redisleases import RedisSettings


def create_driver(config: Config) -> StorageDriver:
    # load_config already refused drivers Entrepot does not have.
    if config.storage.s3 is None:
        # Lock files under the root coordinate fills: Redis is not needed on one disk.
        return FilesystemDriver(config.storage.rootdirectory)
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
        "once of its own; configure redis (addr) for one download across replicas"
    )


def s3_settings(config: Config) -> S3Settings:
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


def storage_problem(config: Config) -> str | None:
    """Why the configured storage cannot be used, in one line naming it, or None. Run
    before serving, so that an unwritable root or an unusable bucket stops start-up
    instead of failing every push later (read-only mode only needs to read)."""
    if config.storage.s3 is not None:
        return _s3_problem(config) or _redis_problem(config)

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
    # The S3 client's (obstore's) runtime does not survive fork(), and the server forks
    # its workers after this check: probe from a fresh process, never this one.
    context = multiprocessing.get_context("spawn")
    write_key = None if config.storage.readonly else probe_key()
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        problem = pool.submit(probe_bucket, settings, write_key).result()
    if problem is None:
        return None
    return f"cannot use storage.s3 ({problem}); check the bucket, regionendpoint and credentials"


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


def scheduled_collector(
    config: Config, driver: StorageDriver, registry: CollectorRegistry
) -> ScheduledCollector | None:
    """The server's own garbage collection (``garbagecollect.interval``), if configured."""
    settings = config.garbagecollect
    if not settings.interval_s or config.storage.readonly:
        return None
    options = GcOptions(
        delete_untagged=settings.deleteuntagged,
        grace=settings.grace_s,
        rules=retention_rules(config),
    )
    return ScheduledCollector(driver, settings.interval_s, options, GcMetrics(registry))


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


def create_upstreams(config: Config, metrics: ProxyMetrics | None = None) -> list[Upstream]:
    upstreams = []
    for proxy in config.proxies:
        budget = RateBudget(proxy.ratelimit_reserve)
        if metrics is not None:
            metrics.upstream(proxy.host)
        settings = UpstreamSettings(
            host=proxy.host,
            urls=proxy.remoteurls,
            username=proxy.username,
            password=proxy.password,
            connect_timeout=proxy.connect_timeout_s,
            read_timeout=proxy.read_timeout_s,
        )
        policy = CachePolicy(
            tag_ttl=proxy.tag_ttl_s,
            negative_ttl=proxy.negative_ttl_s,
            expire_after=proxy.ttl_s,
            fill_wait=proxy.fill_wait_s,
        )
        health = UpstreamHealth(
            proxy.host,
            configured_offline=proxy.offline,
            offline_after=proxy.offline_after,
            probe_interval=proxy.probe_interval_s,
            on_change=metrics.offline.labels(proxy.host).set if metrics is not None else None,
        )
        client = UpstreamClient(
            settings, requests=RequestCounts(proxy.host, metrics, budget), health=health
        )
        names = NameRules.of(
            proxy.host, proxy.allow, proxy.deny, docker_hub=proxy.host in DOCKER_HUB_ALIASES
        )
        upstreams.append(
            Upstream(
                host=proxy.host,
                client=client,
                policy=policy,
                mirror=proxy.mirror,
                allow_push=proxy.allow_push,
                budget=budget,
                other_hosts=proxy.aliases,
                names=names,
            )
        )
    return upstreams


@contextlib.asynccontextmanager
async def open_cache(config: Config) -> AsyncIterator[tuple[ProxyCache, list[Upstream]]]:
    """The pull-through cache on the configured storage, as the server's workers have it,
    for a command run beside them (or with no server at all)."""
    driver = create_driver(config)
    local = LocalRegistry(driver, delete_enabled=config.storage.delete_enabled)
    upstreams = create_upstreams(config)
    cache = ProxyCache(local)
    try:
        yield cache, upstreams
    finally:
        await local.index.close()
        await cache.aclose()
        for upstream in upstreams:
            await upstream.client.aclose()
        await driver.close()


def create_janitor(
    config: Config, cache: ProxyCache, upstreams: list[Upstream], metrics: ProxyMetrics
) -> CacheJanitor | None:
    """The cache's eviction, when a size cap or an upstream's ttl asks for it; readonly
    storage is never written to."""
    maxsize = config.proxycache.maxsize_bytes
    ttls = {u.prefix: u.policy.expire_after for u in upstreams if u.policy.expire_after > 0}
    if config.storage.readonly or not upstreams or (maxsize is None and not ttls):
        return None
    return CacheJanitor(cache, [u.prefix for u in upstreams], maxsize, ttls=ttls, metrics=metrics)


def create_notifier(config: Config, metrics: NotificationMetrics | None = None) -> Notifier | None:
    """registry:2's notification endpoints (disabled ones left out), None without any."""
    settings = []
    for endpoint in config.notifications.endpoints:
        if endpoint.disabled:
            logging.getLogger("entrepot.notifications").info(
                "notification endpoint %s is disabled, skipping", endpoint.name
            )
            continue
        settings.append(
            EndpointSettings(
                name=endpoint.name,
                url=endpoint.url,
                headers=tuple((k, v) for k, values in endpoint.headers.items() for v in values),
                timeout=endpoint.timeout_s,
                threshold=endpoint.threshold,
                backoff=endpoint.backoff_s,
                queue_size=endpoint.queuesize,
                ignored_media_types=endpoint.ignored_media_types,
                ignored_actions=frozenset(endpoint.ignore.actions),
            )
        )
    if not settings:
        return None
    # registry:2's source record: this host and the port it listens on; a new id per start.
    port = config.http.port
    addr = f"{socket.gethostname()}:{port}" if port else socket.gethostname()
    return Notifier(
        settings,
        source={"addr": addr, "instanceID": str(uuid.uuid4())},
        include_references=config.notifications.includereferences,
        metrics=metrics,
    )


def create_app(config: Config, driver: StorageDriver | None = None) -> Starlette:
    registry = CollectorRegistry()
    http_metrics = HttpMetrics(registry)
    driver = TimedDriver(
        driver if driver is not None else create_driver(config), http_metrics.storage_action
    )
    local = LocalRegistry(driver, delete_enabled=config.storage.delete_enabled)
    if config.garbagecollect.needs_pulls and not config.storage.readonly:
        local.manifests.pulls = TagPullRecorder(driver)
    collector = scheduled_collector(config, driver, registry)
    proxy_metrics = ProxyMetrics(registry)
    upstreams = create_upstreams(config, proxy_metrics)
    cache = ProxyCache(local, events=CacheEvents(proxy_metrics))
    resolver = ProxyResolver(
        local,
        cache,
        upstreams,
        readonly=config.storage.readonly,
        registry2=create_registry2_store(config, driver),
    )
    health_cfg = config.health.storagedriver
    health = StorageHealthCheck(
        driver,
        health_cfg.interval_s,
        health_cfg.threshold,
        writable=not config.storage.readonly,
    )

    multiproc_dir = os.environ.get(METRICS_DIR_ENV) or None
    collect = scrape_registry(registry, multiproc_dir)
    notifier = create_notifier(config, NotificationMetrics(registry))
    secret = shared_secret(config)
    guard, token_service = create_guard(config, secret)
    api = ApiContext(
        resolver=resolver,
        guard=guard,
        token_service=token_service,
        metrics=lambda: samples(collect()),
        notifier=notifier,
        upload_secret=None if config.auth is None else derive_key(secret, "upload-state"),
        extra_headers={k: ", ".join(v) for k, v in config.http.headers.items()},
        base_url=(config.http.host_url or "").rstrip("/") + config.http.prefix.rstrip("/"),
        is_healthy=(lambda: health.healthy) if health_cfg.enabled else (lambda: True),
        client_addresses=ClientAddresses.trusting(config.http.trustedproxies),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tasks = []
        if notifier is not None:
            await notifier.start()
        if health_cfg.enabled:
            tasks.append(asyncio.create_task(health.run()))
        purging = config.storage.uploadpurging
        if purging.enabled and not config.storage.readonly:
            tasks.append(
                asyncio.create_task(
                    run_upload_purger(driver, purging.age_s, purging.interval_s, purging.dryrun)
                )
            )
        if not config.storage.readonly:
            tasks.append(asyncio.create_task(run_usage_meter(driver)))
        prefetch = config.proxycache.prefetch
        if prefetch is not None and prefetch.images and upstreams:
            platforms = [parse_platform(p) for p in prefetch.platforms]
            schedule = Prefetcher(cache, upstreams).run_schedule(
                prefetch.images, platforms, prefetch.interval_s
            )
            tasks.append(asyncio.create_task(schedule))
        janitor = create_janitor(config, cache, upstreams, proxy_metrics)
        if janitor is not None:
            pulls = cache.pulls = ImagePullRecorder(driver)
            tasks.append(asyncio.create_task(pulls.run()))
            tasks.append(asyncio.create_task(janitor.run(config.proxycache.sweepinterval_s)))
        if local.manifests.pulls is not None:
            tasks.append(asyncio.create_task(local.manifests.pulls.run()))
        if collector is not None:
            tasks.append(asyncio.create_task(collector.run()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await local.index.close()
            await cache.aclose()
            if notifier is not None:
                await notifier.aclose()
            for upstream in upstreams:
                await upstream.client.aclose()
            await driver.close()
            if multiproc_dir is not None:
                worker_stopped(multiproc_dir)

    # With access control on, metrics are only on http.debug.addr (a listener operators
    # keep private): the main address's /metrics would tell anyone what is pulled.
    public = [] if config.auth is not None else [Route("/metrics", metrics_endpoint(collect))]
    ui = UiSettings(
        store=local,
        upstreams=upstreams,
        access=access_for(guard, token_service),
        session_key=derive_key(secret, "ui-session"),
        delete_enabled=config.storage.delete_enabled,
        storage_use=lambda: read_usage(driver),
    )
    app = build_app(
        api,
        lifespan=lifespan,
        extra_routes=[*public, *ui_routes(ui)],
        access_log=not config.log.accesslog_disabled,
    )
    app.add_middleware(MetricsMiddleware, metrics=http_metrics)
    if config.http.prefix != "/":
        # http.prefix: the API lives below a path, as behind a reverse proxy.
        outer = Starlette(
            routes=[Mount(config.http.prefix.rstrip("/"), app=app)], lifespan=lifespan
        )
        return outer
    return app


def create_app_from_env() -> Starlette:
    """Granian's factory target: the CLI passes the config path in ENTREPOT_CONFIG."""
    config = load_config(os.environ.get(CONFIG_ENV) or None)
    configure_logging(config.log)
    return create_app(config)
