"""The validated configuration: frozen dataclasses, registry:2 defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from entrepot.config.s3conf import S3StorageConfig

__all__ = [
    "DEFAULT_ROOTDIRECTORY",
    "AccessRuleConfig",
    "AuthConfig",
    "BuiltinAuthConfig",
    "Config",
    "HealthConfig",
    "HtpasswdAuthConfig",
    "HttpConfig",
    "LogConfig",
    "ProxyCacheConfig",
    "ProxyUpstreamConfig",
    "StorageConfig",
    "StorageHealth",
    "TlsConfig",
    "TokenAuthConfig",
    "UploadPurging",
]

DEFAULT_ROOTDIRECTORY = Path("/var/lib/registry")


@dataclass(frozen=True)
class LogConfig:
    """``log``: ``level`` is one of error/warn/info/debug (lower-cased);
    ``formatter`` is text/json/logstash or None (registry:2 then uses text);
    ``accesslog_disabled`` is ``log.accesslog.disabled`` (the CLI's server honours it)."""

    level: str = "info"
    formatter: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    accesslog_disabled: bool = False


@dataclass(frozen=True)
class UploadPurging:
    """``storage.maintenance.uploadpurging``; durations in seconds."""

    enabled: bool = True
    age_s: float = 168 * 3600.0
    interval_s: float = 24 * 3600.0
    dryrun: bool = False


@dataclass(frozen=True)
class StorageConfig:
    """``storage``: the driver (always "filesystem" for now) and its options.

    ``blobdescriptor_cache`` is "inmemory" or None (no cache).
    ``readonly`` is ``storage.maintenance.readonly.enabled``.
    """

    driver: str = "filesystem"
    rootdirectory: Path = DEFAULT_ROOTDIRECTORY
    delete_enabled: bool = False
    blobdescriptor_cache: str | None = None
    redirect_disabled: bool = False
    uploadpurging: UploadPurging = field(default_factory=UploadPurging)
    readonly: bool = False
    s3: S3StorageConfig | None = None  # storage.s3, when that is the driver


@dataclass(frozen=True)
class TlsConfig:
    """``http.tls``; present only when a certificate is configured (as in registry:2).

    ``minimumtls`` is the configured value (tls1.0/tls1.1/tls1.2/tls1.3) or None;
    registry:2 2.8 defaults to tls1.0, Entrepot's server cannot go below tls1.2.
    A non-empty ``clientcas`` means client certificates are required and verified.
    """

    certificate: Path
    key: Path
    clientcas: list[Path] = field(default_factory=list)
    minimumtls: str | None = None


@dataclass(frozen=True)
class HttpConfig:
    """``http``.

    ``host``/``port`` come from ``http.addr`` (an empty host, as in ":5000", means
    all IPv4 interfaces "0.0.0.0"; "::" with ``net: tcp6``). With ``net: unix``,
    ``unix_socket`` is the socket path and ``host``/``port`` are "" and 0.
    ``host_url`` is ``http.host`` (the externally reachable base URL), ``prefix`` is
    ``http.prefix`` normalised to start and end with "/", ``debug_addr`` is
    ``http.debug.addr`` as written.
    """

    host: str = "0.0.0.0"
    port: int = 5000
    unix_socket: Path | None = None
    host_url: str | None = None
    secret: str | None = None
    prefix: str = "/"
    headers: dict[str, list[str]] = field(default_factory=dict)
    tls: TlsConfig | None = None
    debug_addr: str | None = None


@dataclass(frozen=True)
class StorageHealth:
    """``health.storagedriver``. ``threshold`` is the number of consecutive failed
    checks before the driver is reported unhealthy; registry:2 treats an absent or 0
    threshold as "a single failure", which is stored here as 1."""

    enabled: bool = False
    interval_s: float = 10.0
    threshold: int = 1


@dataclass(frozen=True)
class HealthConfig:
    """``health``."""

    storagedriver: StorageHealth = field(default_factory=StorageHealth)


@dataclass(frozen=True)
class ProxyUpstreamConfig:
    """One upstream of the pull-through cache: registry:2's ``proxy`` block or one
    entry of Entrepot's ``proxies`` list.

    ``host`` is the registry this upstream stands for, lower-case, with a port if it has
    one ("docker.io", "ghcr.io", "localhost:5000"); Docker Hub's other names
    (registry-1.docker.io, index.docker.io, registry.hub.docker.com) become "docker.io".
    ``remoteurls`` are absolute http(s) base URLs without a trailing "/", tried in order
    when one is unavailable. ``username`` and ``password`` are both set or both None;
    the password is kept out of ``repr``. ``mirror``: unprefixed names with no local
    repository are served from this upstream (Docker's registry-mirrors); at most one
    upstream is the mirror. ``allow_push``: pushes into this cache namespace
    (/v2/<host>/...) are accepted. Durations are in seconds; the timeouts are positive.
    """

    host: str
    remoteurls: tuple[str, ...]
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    mirror: bool = False
    allow_push: bool = False
    tag_ttl_s: float = 60.0
    negative_ttl_s: float = 15.0
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 30.0


@dataclass(frozen=True)
class ProxyCacheConfig:
    """``proxycache`` (Entrepot's own, not in registry:2): limits on the pull-through
    cache as a whole.

    ``maxsize_bytes`` caps the total size of the blobs cached from upstreams: beyond it
    the oldest cached blobs are evicted (pushed content never is); None means no cap,
    otherwise it is at least 1. ``sweepinterval_s`` is how often, in seconds, the size
    is checked (positive).
    """

    maxsize_bytes: int | None = None
    sweepinterval_s: float = 600.0


@dataclass(frozen=True)
class HtpasswdAuthConfig:
    """registry:2's ``auth.htpasswd``: HTTP basic auth against an htpasswd file (bcrypt
    entries, as ``htpasswd -B`` writes them); any listed user may do everything.
    ``path`` existed and was readable when the configuration was loaded."""

    realm: str
    path: Path


@dataclass(frozen=True)
class TokenAuthConfig:
    """registry:2's ``auth.token``: bearer tokens from an external token server.

    ``realm`` is the token server's absolute http(s) URL, sent to clients in the
    challenge; tokens must name ``issuer`` and ``service`` and be signed by a key
    certified in ``rootcertbundle`` (a PEM file, readable when the configuration was
    loaded).
    """

    realm: str
    service: str
    issuer: str
    rootcertbundle: Path


@dataclass(frozen=True)
class AccessRuleConfig:
    """One rule of ``auth.builtin.access``: ``who`` may do ``actions`` on the
    repositories matching ``repositories``.

    ``who`` holds user names, ``group:<name>``, ``anonymous`` (no credentials),
    ``authenticated`` (any signed-in user) or ``*`` (everyone); ``repositories`` are
    glob patterns such as ``team/*``, ``docker.io/*`` or ``*``; ``actions`` are pull,
    push, delete or ``*``. ``catalog`` also grants listing all repositories
    (``registry:catalog:*``). None of the tuples is empty.
    """

    who: tuple[str, ...]
    repositories: tuple[str, ...]
    actions: tuple[str, ...]
    catalog: bool = False


@dataclass(frozen=True)
class BuiltinAuthConfig:
    """``auth.builtin``: Entrepot's own token service (not in registry:2).

    ``realm`` is the absolute URL of the token endpoint clients are sent to, or None for
    "<this registry>/auth/token". Users come from ``htpasswd`` (a file, readable when
    the configuration was loaded) and ``users`` (user -> bcrypt hash, kept out of
    ``repr``); ``groups`` maps a group name to its members. ``access`` rules are
    checked in order and what they grant adds up; nothing else is allowed.
    ``expiration_s`` is the lifetime of a token in seconds (positive); ``maxfailures``
    (at least 1) is how many failed sign-ins a client address may make per minute
    before it gets 429 Too Many Requests.
    """

    service: str = "entrepot"
    issuer: str = "entrepot"
    realm: str | None = None
    htpasswd: Path | None = None
    users: dict[str, str] = field(default_factory=dict, repr=False)
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    access: tuple[AccessRuleConfig, ...] = ()
    expiration_s: float = 300.0
    maxfailures: int = 10


@dataclass(frozen=True)
class AuthConfig:
    """``auth``: exactly one of the access controllers is set."""

    htpasswd: HtpasswdAuthConfig | None = None
    token: TokenAuthConfig | None = None
    builtin: BuiltinAuthConfig | None = None


@dataclass(frozen=True)
class Config:
    """The whole configuration. ``warnings`` lists every key that was ignored.

    ``proxies`` are the pull-through cache's upstreams: registry:2's ``proxy`` block
    first (if configured), then the entries of ``proxies`` in file order; ``proxycache``
    limits what they cache all together. ``auth`` is
    None when no access control is configured (everyone may do everything).
    """

    version: str = "0.1"
    log: LogConfig = field(default_factory=LogConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    proxies: tuple[ProxyUpstreamConfig, ...] = ()
    proxycache: ProxyCacheConfig = field(default_factory=ProxyCacheConfig)
    auth: AuthConfig | None = None
    warnings: tuple[str, ...] = ()
