"""The configuration's models, one declaration per key (see ``schema``); ``http``,
``auth``, ``proxies`` and ``proxycache`` have their own modules. The README's design
section says how to add a section."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

from entrepot.config.authconf import AuthConfig
from entrepot.config.errors import ConfigError
from entrepot.config.gcconf import GarbageCollectConfig
from entrepot.config.httpconf import HttpConfig
from entrepot.config.notifications import NotificationsConfig
from entrepot.config.proxies import ProxyBlockConfig, ProxyUpstreamConfig, check_upstreams
from entrepot.config.proxycache import ProxyCacheConfig
from entrepot.config.redisconf import RedisConfig
from entrepot.config.s3conf import S3StorageConfig
from entrepot.config.schema import At, derived, key, scalar_text

__all__ = [
    "DEFAULT_ROOTDIRECTORY",
    "SUPPORTED_STORAGE_DRIVERS",
    "Config",
    "HealthConfig",
    "LogConfig",
    "StorageConfig",
    "StorageHealth",
    "UploadPurging",
]

DEFAULT_ROOTDIRECTORY = Path("/var/lib/registry")
SUPPORTED_STORAGE_DRIVERS = ("filesystem", "s3")
_LOG_LEVELS = ("error", "warn", "info", "debug")


@dataclass(frozen=True)
class LogConfig:
    """``log``."""

    NOT_IMPLEMENTED: ClassVar = ("hooks",)
    level: str = key(
        "level", "info", lower=True, choices=_LOG_LEVELS, doc="error, warn, info, debug"
    )
    formatter: str | None = key(
        "formatter",
        None,
        choices=("text", "json", "logstash"),
        doc="`text`; `json`, `logstash`: one JSON object per line (the access log stays text)",
    )
    fields: dict[str, str] = key("fields", factory=dict, doc="added to every log line")
    accesslog_disabled: bool = key("accesslog.disabled", False, doc="no access log")


@dataclass(frozen=True)
class UploadPurging:
    """``storage.maintenance.uploadpurging``: abandoned uploads are removed."""

    enabled: bool = key("enabled", True, doc="remove abandoned uploads")
    age_s: float = key("age", 168 * 3600.0, doc="uploads older than this are removed")
    interval_s: float = key("interval", 24 * 3600.0, doc="how often")
    dryrun: bool = key("dryrun", False, doc="only log what would be removed")

    def checked(self, at: At) -> UploadPurging:
        if self.enabled and self.interval_s == 0:
            raise ConfigError(f"config key '{at.key('interval')}' must be more than 0")
        return self


# Keys below ``storage`` that are not a driver name (as in registry:2).
_STORAGE_SECTIONS = ("maintenance", "cache", "delete", "redirect", "tag")


@dataclass(frozen=True)
class StorageConfig:
    """``storage``: exactly one driver (a key not in ``_STORAGE_SECTIONS``) and its
    options; ``driver`` is its name. A driver is added with a field for its options and
    its name in ``SUPPORTED_STORAGE_DRIVERS``."""

    OPEN: ClassVar = True  # a Go map: any other key names a driver (``accept``)
    NOT_IMPLEMENTED: ClassVar = ("tag", "filesystem.maxthreads", "cache.blobdescriptorsize")
    rootdirectory: Path = key(
        "filesystem.rootdirectory",
        DEFAULT_ROOTDIRECTORY,
        doc="the registry:2 layout under `docker/registry/v2`",
    )
    delete_enabled: bool = key("delete.enabled", False, doc="DELETE answers 405 when off")
    blobdescriptor_cache: str | None = key(
        "cache.blobdescriptor", None, doc="`inmemory` accepted (Entrepot has its own caches)"
    )
    cache_layerinfo: str | None = key(
        "cache.layerinfo", None, doc="registry:2's old name of `cache.blobdescriptor`"
    )
    s3: S3StorageConfig | None = key(
        "s3", None, present=True, doc="registry:2's S3 driver (see Storage on S3)"
    )
    redirect_disabled: bool = key(
        "redirect.disable",
        False,
        doc="S3 blob GETs stream instead of redirecting to presigned URLs "
        "(the filesystem driver never redirects)",
    )
    uploadpurging: UploadPurging = key("maintenance.uploadpurging", factory=UploadPurging, doc="")
    readonly: bool = key("maintenance.readonly.enabled", False, doc="pushes answer 405")
    driver: str = derived("filesystem")

    @classmethod
    def accept(cls, at: At) -> None:
        drivers = sorted(str(k) for k in at.raw if k not in _STORAGE_SECTIONS)
        if len(drivers) > 1:
            raise ConfigError(
                f"config key 'storage' configures more than one storage driver "
                f"({', '.join(drivers)}); configure exactly one"
            )
        if not drivers:
            raise ConfigError(
                "config key 'storage' names no storage driver; "
                f"supported: {', '.join(SUPPORTED_STORAGE_DRIVERS)}"
            )
        if drivers[0] not in SUPPORTED_STORAGE_DRIVERS:
            raise ConfigError(
                f"storage driver {drivers[0]!r} is not supported yet; "
                f"supported: {', '.join(SUPPORTED_STORAGE_DRIVERS)}"
            )

    def checked(self, at: At) -> StorageConfig:
        kind = self.blobdescriptor_cache or self.cache_layerinfo
        if kind == "redis":
            at.warn(
                "config key 'storage.cache.blobdescriptor: redis' is not implemented yet and "
                "is ignored; no blob descriptor cache is used"
            )
        elif kind not in (None, "inmemory"):
            at.warn(
                f"config key 'storage.cache.blobdescriptor': unknown cache type {kind!r}, "
                "caching disabled"
            )
        cache = "inmemory" if kind == "inmemory" else None
        driver = next(str(k) for k in at.raw if k not in _STORAGE_SECTIONS)
        return replace(self, blobdescriptor_cache=cache, cache_layerinfo=None, driver=driver)


@dataclass(frozen=True)
class StorageHealth:
    """``health.storagedriver``: an absent or 0 threshold is one failure, as in registry:2."""

    enabled: bool = key("enabled", False, doc="`/v2/` answers 503 while storage is unhealthy")
    interval_s: float = key(
        "interval",
        10.0,
        doc="between checks; a check that takes over 10 s (storage not answering) is a failure",
    )
    threshold: int = key("threshold", 1, doc="consecutive failures before unhealthy")

    def checked(self, at: At) -> StorageHealth:
        if self.threshold < 0:
            raise ConfigError("config key 'health.storagedriver.threshold' must not be negative")
        return replace(self, interval_s=self.interval_s or 10.0, threshold=self.threshold or 1)


@dataclass(frozen=True)
class HealthConfig:
    """``health``."""

    NOT_IMPLEMENTED: ClassVar = ("file", "http", "tcp")
    storagedriver: StorageHealth = key("storagedriver", factory=StorageHealth, doc="")


@dataclass(frozen=True)
class Config:
    """The whole configuration. ``warnings`` lists every key that was ignored.

    ``proxies`` are the pull-through cache's upstreams: registry:2's ``proxy`` block
    first (if configured; ``proxy`` is then None), then the entries of ``proxies`` in
    file order. ``auth`` is None when no access control is configured.
    """

    NOT_IMPLEMENTED: ClassVar = (
        "middleware",
        "reporting",
        "compatibility",
        "validation",
        "policy",
        "catalog",
    )
    version: str = key("version", "0.1", parse=lambda v, _: scalar_text(v), doc="`0.1`")
    auth: AuthConfig | None = key(
        "auth", None, doc="one access controller: `htpasswd`, `token` or `builtin` (see Security)"
    )
    loglevel: str | None = key(
        "loglevel", None, lower=True, choices=_LOG_LEVELS, doc="registry:2's old `log.level`"
    )
    log: LogConfig = key("log", factory=LogConfig, doc="")
    storage: StorageConfig = key("storage", factory=StorageConfig, doc="")
    http: HttpConfig = key("http", factory=HttpConfig, doc="")
    health: HealthConfig = key("health", factory=HealthConfig, doc="")
    proxy: ProxyBlockConfig | None = key(
        "proxy",
        None,
        doc="registry:2's upstream: the docker.io mirror among `proxies`; pushes still land",
    )
    proxies: tuple[ProxyUpstreamConfig, ...] = key(
        "proxies", (), doc="Entrepot's upstreams, each cached under `/v2/<host>/...`"
    )
    proxycache: ProxyCacheConfig = key("proxycache", factory=ProxyCacheConfig, doc="")
    notifications: NotificationsConfig = key("notifications", factory=NotificationsConfig, doc="")
    redis: RedisConfig | None = key(
        "redis",
        None,
        doc="registry:2's Redis: on S3, cache fills are coordinated across replicas through "
        "it (see Cache fills across replicas)",
    )
    garbagecollect: GarbageCollectConfig = key(
        "garbagecollect", factory=GarbageCollectConfig, doc=""
    )
    warnings: tuple[str, ...] = derived(())

    @classmethod
    def accept(cls, at: At) -> None:
        if at.raw.get("storage") in (None, ""):
            raise ConfigError("config key 'storage' is required: no storage driver is configured")

    def checked(self, at: At) -> Config:
        log = self.log
        given = at.raw.get("log")
        if self.loglevel and not (isinstance(given, dict) and given.get("level")):
            log = replace(log, level=self.loglevel)
        found = [(f"proxies[{i}]", upstream) for i, upstream in enumerate(self.proxies)]
        if self.proxy is not None:
            taken = {upstream.host for _, upstream in found}
            found.insert(0, ("proxy", self.proxy.upstream(taken)))
        check_upstreams(found)
        proxies = tuple(upstream for _, upstream in found)
        if self.proxycache.registry2store == "cache" and not any(u.mirror for u in proxies):
            raise ConfigError(
                "config key 'proxycache.registry2store' is 'cache', but no upstream serves "
                "plain names: configure registry:2's proxy block (or a proxies entry with "
                "mirror: true), or use auto or pushed"
            )
        self._warn_unshared_secret(at)
        return replace(self, log=log, loglevel=None, proxy=None, proxies=proxies)

    def _warn_unshared_secret(self, at: At) -> None:
        """registry:2's warning: on storage that replicas share, a secret of its own on each
        breaks what one replica signs and another checks."""
        if self.http.secret or (self.storage.s3 is None and self.redis is None):
            return
        fails = (
            "uploads that move between replicas (a load balancer) fail"
            if self.auth is not None
            else "once auth is configured, uploads that move between replicas (a load "
            "balancer) will fail"
        )
        at.warn(
            f"http.secret is not set: each replica makes its own, and {fails}; "
            "set the same http.secret on every replica"
        )
