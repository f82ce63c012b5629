"""The composition root: the one place (besides the CLI) that reads the configuration and
wires storage, registry services and the HTTP app together."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.routing import Mount, Route

from entrepot import requestinfo
from entrepot.config import CONFIG_ENV, METRICS_DIR_ENV, Config, load_config
from entrepot.heap import keep_heap_for_bodies
from entrepot.http.accesslog import flush_access_lines
from entrepot.http.app import build_app
from entrepot.http.clientaddr import ClientAddresses
from entrepot.http.context import ApiContext
from entrepot.http.metrics import (
    HttpMetrics,
    metrics_endpoint,
    samples,
    scrape_registry,
    worker_stopped,
)
from entrepot.http.notify import EndpointSettings, NotificationMetrics, Notifier
from entrepot.http.ui import UiSettings, access_for, ui_routes
from entrepot.log_setup import configure_logging
from entrepot.preflight import (
    create_driver,
    create_registry2_store,
    retention_rules,
)
from entrepot.proxy.access import NameRules
from entrepot.proxy.cache import ProxyCache
from entrepot.proxy.health import UpstreamHealth
from entrepot.proxy.hostnames import DOCKER_HUB_ALIASES
from entrepot.proxy.janitor import CacheJanitor
from entrepot.proxy.metrics import CacheEvents, ProxyMetrics, RequestCounts
from entrepot.proxy.prefetch import Prefetcher, parse_platform
from entrepot.proxy.ratelimit import RateBudget
from entrepot.proxy.routing import ProxyResolver
from entrepot.proxy.upstreams import CachePolicy, Upstream
from entrepot.registry.gc import GcOptions
from entrepot.registry.gcpace import Pacer
from entrepot.registry.gcschedule import GcMetrics, ScheduledCollector
from entrepot.registry.health import StorageHealthCheck
from entrepot.registry.local import LocalRegistry
from entrepot.registry.pullcompact import run_compaction
from entrepot.registry.pulls import PullRecorder
from entrepot.registry.purge import run_upload_purger
from entrepot.registry.usage import read_usage, run_usage_meter
from entrepot.root_auth import create_guard, derive_key, shared_secret
from entrepot.storage import StorageDriver
from entrepot.storage.timed import TimedDriver


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
    # It rests while its worker serves, as while other processes keep the CPUs busy.
    pacer = functools.partial(Pacer, served=requestinfo.serving)
    return ScheduledCollector(
        driver, settings.interval_s, options, GcMetrics(registry), pacer=pacer
    )


def create_upstreams(config: Config, metrics: ProxyMetrics | None = None) -> list[Upstream]:
    if not config.proxies:
        return []
    # aiohttp is a large import: a worker serving no upstream never loads it.
    from entrepot.proxy.upstream_client import UpstreamClient, UpstreamSettings

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
        driver if driver is not None else create_driver(config),
        http_metrics.storage_action,
        http_metrics.storage_observer,
    )
    local = LocalRegistry(driver, delete_enabled=config.storage.delete_enabled)
    # One pull record for retention rules (pulls by tag) and the cache's eviction.
    pulls = PullRecorder(driver)
    if config.garbagecollect.needs_pulls and not config.storage.readonly:
        local.manifests.pulls = pulls
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
    guard, token_service = create_guard(config, secret, resolver.mirrored_as)
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
            cache.pulls = pulls
            tasks.append(asyncio.create_task(janitor.run(config.proxycache.sweepinterval_s)))
        if cache.pulls is not None or local.manifests.pulls is not None:
            tasks.append(asyncio.create_task(pulls.run()))
            tasks.append(asyncio.create_task(run_compaction(driver)))
        if collector is not None:
            tasks.append(asyncio.create_task(collector.run()))
        try:
            yield
        finally:
            flush_access_lines()  # (forked workers exit without logging's own flush)
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
        metrics=http_metrics,
    )
    if config.http.prefix != "/":
        # http.prefix: the API lives below a path, as behind a reverse proxy.
        outer = Starlette(
            routes=[Mount(config.http.prefix.rstrip("/"), app=app)], lifespan=lifespan
        )
        return outer
    return app


def create_app_from_env() -> Starlette:
    """Granian's factory target: the CLI passes the config path in ENTREPOT_CONFIG."""
    keep_heap_for_bodies()  # in each worker: the bodies it receives (see entrepot.heap)
    config = load_config(os.environ.get(CONFIG_ENV) or None)
    configure_logging(config.log)
    return create_app(config)
