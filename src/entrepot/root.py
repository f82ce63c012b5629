"""The composition root: the one place (besides the CLI) that reads the configuration and
wires storage, registry services and the HTTP app together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.routing import Mount

from entrepot.config import CONFIG_ENV, Config, load_config
from entrepot.http.app import build_app
from entrepot.http.clientaddr import ClientAddresses
from entrepot.http.context import ApiContext
from entrepot.http.metrics import Sample
from entrepot.http.notify import EndpointSettings, Notifier
from entrepot.log_setup import configure_logging
from entrepot.proxy.cache import ProxyCache
from entrepot.proxy.janitor import CacheJanitor
from entrepot.proxy.routing import ProxyResolver
from entrepot.proxy.upstream_client import UpstreamClient, UpstreamSettings
from entrepot.proxy.upstreams import CachePolicy, Upstream
from entrepot.registry.health import StorageHealthCheck, check_writable
from entrepot.registry.local import LocalRegistry
from entrepot.registry.purge import run_upload_purger
from entrepot.root_auth import create_guard, derive_key, shared_secret
from entrepot.storage import StorageDriver, StorageError, StorageNotFound
from entrepot.storage.filesystem import FilesystemDriver


def create_driver(config: Config) -> StorageDriver:
    # load_config already refused drivers Entrepot does not have.
    return FilesystemDriver(config.storage.rootdirectory)


def storage_problem(config: Config) -> str | None:
    """Why the configured storage cannot be used, in one line naming it, or None. Run
    before serving, so that an unwritable root stops start-up instead of failing every
    push later (read-only mode only needs to read)."""

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

    root = config.storage.rootdirectory
    try:
        asyncio.run(probe())
    except StorageError as exc:
        verb = "read" if config.storage.readonly else "write to"
        return (
            f"cannot {verb} storage.filesystem.rootdirectory {root} ({exc}); "
            "make it writable by this user or choose another rootdirectory"
        )
    return None


def create_upstreams(config: Config) -> list[Upstream]:
    upstreams = []
    for proxy in config.proxies:
        settings = UpstreamSettings(
            host=proxy.host,
            urls=proxy.remoteurls,
            username=proxy.username,
            password=proxy.password,
            connect_timeout=proxy.connect_timeout_s,
            read_timeout=proxy.read_timeout_s,
        )
        policy = CachePolicy(tag_ttl=proxy.tag_ttl_s, negative_ttl=proxy.negative_ttl_s)
        upstreams.append(
            Upstream(
                host=proxy.host,
                client=UpstreamClient(settings),
                policy=policy,
                mirror=proxy.mirror,
                allow_push=proxy.allow_push,
            )
        )
    return upstreams


def create_notifier(config: Config) -> Notifier | None:
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
    )


def create_app(config: Config, driver: StorageDriver | None = None) -> Starlette:
    driver = driver if driver is not None else create_driver(config)
    local = LocalRegistry(driver, delete_enabled=config.storage.delete_enabled)
    upstreams = create_upstreams(config)
    cache = ProxyCache(local)
    resolver = ProxyResolver(local, cache, upstreams, readonly=config.storage.readonly)
    health_cfg = config.health.storagedriver
    health = StorageHealthCheck(
        driver,
        health_cfg.interval_s,
        health_cfg.threshold,
        writable=not config.storage.readonly,
    )

    def samples() -> list[Sample]:
        found = [
            Sample("entrepot_proxy_events_total", (("upstream", host), ("event", event)), n)
            for (event, host), n in cache.stats.items()
        ]
        for upstream in upstreams:
            found.extend(
                Sample(
                    "entrepot_upstream_requests_total",
                    (("upstream", upstream.host), ("request", kind)),
                    n,
                )
                for kind, n in upstream.client.requests.items()
            )
        if notifier is not None:
            found.extend(notifier.samples())
        return found

    notifier = create_notifier(config)
    secret = shared_secret(config)
    guard, token_service = create_guard(config, secret)
    api = ApiContext(
        resolver=resolver,
        guard=guard,
        token_service=token_service,
        metrics=samples,
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
        maxsize = config.proxycache.maxsize_bytes
        if maxsize is not None and upstreams:
            janitor = CacheJanitor(cache, [u.prefix for u in upstreams], maxsize)
            tasks.append(asyncio.create_task(janitor.run(config.proxycache.sweepinterval_s)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await cache.aclose()
            if notifier is not None:
                await notifier.aclose()
            for upstream in upstreams:
                await upstream.client.aclose()
            await driver.close()

    app = build_app(api, lifespan=lifespan, access_log=not config.log.accesslog_disabled)
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
