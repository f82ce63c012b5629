"""The pull-through cache's upstreams: registry:2's ``proxy`` block and ``proxies``.

registry:2 proxies one upstream, configured by ``proxy``, and then serves nothing else.
Entrepot serves its own repositories and caches any number of upstreams (``proxies``),
each under ``/v2/<host>/...``; registry:2's ``proxy`` block becomes one more upstream,
the mirror, listed first. It stands for "docker.io" (Docker's ``registry-mirrors`` and
containerd's ``?ns=docker.io`` reach it), whether ``remoteurl`` is Docker Hub or a
mirror of it; the ``remoteurl`` host also names it (an alias). Only when a ``proxies``
entry is docker.io itself does the block stand for its ``remoteurl`` host instead.

Passwords never appear in errors or warnings, and are kept out of ``repr``. A
password, username or ``remoteurl`` must be a YAML string: ``password: 0123`` would be
read as the number 83, so it is refused rather than silently changed. ``passwordfile``
is read when the configuration is loaded (a relative path is relative to the working
directory, like registry:2's other paths); one trailing newline is dropped.
``passwordenv`` names an environment variable holding the password, used as is (no
YAML). An empty password from either is an error.

``allow`` and ``deny`` are lists of glob patterns on repository names as the upstream
knows them (proxy/access.py); ``offline`` serves cached content only (proxy/health.py).
registry:2's ``proxy`` block accepts the three too (Entrepot's additions: registry:2
does not know them).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from entrepot.config.errors import ConfigError
from entrepot.config.schema import At, absolute_url, derived, is_empty, key

__all__ = [
    "DOCKER_HUB",
    "DOCKER_HUB_NAMES",
    "ProxyBlockConfig",
    "ProxyUpstreamConfig",
    "check_upstreams",
]

DOCKER_HUB = "docker.io"
# Docker Hub's names: a remoteurl or host with one of them stands for "docker.io".
DOCKER_HUB_NAMES = (
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "registry.hub.docker.com",
)

# registry:2's default for proxy.ttl (7 days); 0 keeps cached content until evicted by size.
REGISTRY2_PROXY_TTL = 168 * 3600.0

_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
# A registry host as image references write it (distribution/reference's domain).
_HOST = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9a-f:.]+\])(?::[0-9]+)?")
# A glob over repository names: their characters and the glob's.
_NAME_GLOB = re.compile(r"[a-z0-9._/*?\[\]!-]+")


def _name_globs(value: Any, key_path: str) -> tuple[str, ...]:
    """A list of glob patterns on repository names (``library/*``, ``myorg/app*``)."""
    if not isinstance(value, list):
        raise ConfigError(
            f"config key '{key_path}' must be a list of patterns such as [\"library/*\"]"
        )
    for i, pattern in enumerate(value):
        if not isinstance(pattern, str) or not _NAME_GLOB.fullmatch(pattern):
            raise ConfigError(
                f"config key '{key_path}[{i}]': {pattern!r} is not a pattern of repository "
                "names such as library/* or myorg/app*: lower-case letters, digits, '.', '_', "
                "'-', '/' and the glob characters * ? [ ]"
            )
    return tuple(value)


def _remote_url(value: Any, key_path: str) -> str:
    """An absolute http(s) URL, without a trailing "/" or "/v2" (the client adds that);
    never with credentials in it."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(
            f"config key '{key_path}' must be an absolute http or https URL "
            "(such as https://registry-1.docker.io)"
        )
    text = value.strip()
    if "@" in text:
        # Do not echo it: what precedes "@" is likely a password.
        raise ConfigError(
            f"config key '{key_path}': the URL must not hold credentials ('@'); "
            "use username and password"
        )
    parts = absolute_url(key_path, text, "https://registry-1.docker.io")
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise ConfigError(f"config key '{key_path}': {text!r} must not have a query or fragment")
    base = f"{parts.scheme.lower()}://{parts.netloc}{parts.path.rstrip('/')}"
    if base.endswith("/v2"):  # the client's /v2/ would be doubled: /v2/v2/...
        raise ConfigError(
            f"config key '{key_path}': ends in /v2; give the registry's base URL, "
            f"e.g. {base.removesuffix('/v2')}"
        )
    return base


def _remote_urls(value: Any, key_path: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"config key '{key_path}' must be a list of URLs (or use remoteurl)")
    return tuple(_remote_url(url, f"{key_path}[{i}]") for i, url in enumerate(value))


def _string(value: Any, key_path: str) -> str:
    """A string value, never echoed in the error (it may be a secret)."""
    if isinstance(value, str):
        return value
    raise ConfigError(
        f"config key '{key_path}' must be a string: quote it in YAML "
        "(a number such as 0123 would otherwise change)"
    )


@dataclass(frozen=True)
class ProxyUpstreamConfig:
    """One upstream of the pull-through cache: an entry of Entrepot's ``proxies`` list,
    or registry:2's ``proxy`` block (the mirror). After loading, ``host`` is lower-case
    with Docker Hub's other names made "docker.io", ``remoteurls`` holds the URL(s)
    (``remoteurl`` is folded into it) and ``password`` the password from whichever source."""

    OWN: ClassVar = True
    host: str = key(
        "host", "", doc="the registry host this upstream stands for, as in image references"
    )
    remoteurl: str | None = key(
        "remoteurl", None, parse=_remote_url, doc="the upstream's base URL (or `remoteurls`)"
    )
    remoteurls: tuple[str, ...] = key(
        "remoteurls", (), parse=_remote_urls, doc="base URLs, the next tried when one fails"
    )
    username: str | None = key("username", None, parse=_string, doc="upstream user name")
    password: str | None = key(
        "password", None, parse=_string, secret=True, doc="upstream password (or the next two)"
    )
    passwordfile: Path | None = key("passwordfile", None, doc="a file holding the password")
    passwordenv: str | None = key("passwordenv", None, doc="a variable holding the password")
    mirror: bool = key(
        "mirror", False, doc="serve plain names with no local repository from here (one at most)"
    )
    allow_push: bool = key("allowpush", False, doc="accept pushes into `/v2/<host>/...`")
    tag_ttl_s: float = key("tagttl", 60.0, doc="serve a cached tag without asking upstream")
    negative_ttl_s: float = key("negativettl", 15.0, doc="remember an upstream 404")
    ttl_s: float = key(
        "ttl",
        0.0,
        doc="a cached image not pulled for this long is evicted (registry:2's `proxy.ttl`); "
        "`0`: kept until `proxycache.maxsize` evicts it",
    )
    fill_wait_s: float = key(
        "fillwait",
        2.0,
        doc="a client of a blob being downloaded waits up to this long for the verified "
        "file (sent from the file, as a cached blob), then streams it as it arrives; at "
        "once when the download's pace, after a second, says it needs more than twice this",
    )
    connect_timeout_s: float = key("connecttimeout", 3.0, doc="connecting to the upstream")
    read_timeout_s: float = key("readtimeout", 30.0, doc="waiting for upstream bytes")
    ratelimit_reserve: int | None = key(
        "ratelimitreserve",
        None,
        doc="pulls left (per the upstream's `ratelimit-remaining`) at which cached tags stop "
        "being re-fetched; default 10% of its `ratelimit-limit`",
    )
    allow: tuple[str, ...] = key(
        "allow",
        (),
        parse=_name_globs,
        doc="globs on upstream repository names that may be pulled (`library/*`); none: all",
    )
    deny: tuple[str, ...] = key(
        "deny", (), parse=_name_globs, doc="globs refused even when allowed (`library/secret*`)"
    )
    offline: bool = key("offline", False, doc="serve cached content only; never connect")
    offline_after: int = key(
        "offlineafter",
        5,
        doc="failed connections in a row that make the upstream offline until a "
        "`GET /v2/` health check answers; 0: never",
    )
    probe_interval_s: float = key(
        "probeinterval", 5.0, doc="first wait between health checks (then doubling, to 5m)"
    )
    # Other hosts this upstream answers for (registry:2's proxy block: its remoteurl host).
    aliases: tuple[str, ...] = derived(())

    def checked(self, at: At) -> ProxyUpstreamConfig:
        host = _host(at, self.host)
        if self.remoteurl is not None and "remoteurls" in at.raw:
            raise ConfigError(
                f"config key '{at.key('remoteurls')}': set remoteurl or remoteurls, not both"
            )
        urls = (self.remoteurl,) if self.remoteurl is not None else self.remoteurls
        if self.remoteurl is None and at.raw.get("remoteurls") is None:
            raise ConfigError(
                f"config key '{at.key('remoteurl')}' is required (or remoteurls, a list): "
                "the upstream's URL, such as https://ghcr.io"
            )
        if not urls:
            raise ConfigError(f"config key '{at.key('remoteurls')}' must list at least one URL")
        timeouts = (
            ("connecttimeout", self.connect_timeout_s),
            ("readtimeout", self.read_timeout_s),
        )
        for name, seconds in timeouts:
            if seconds == 0:
                raise ConfigError(f"config key '{at.key(name)}' must be more than 0")
        if self.ratelimit_reserve is not None and self.ratelimit_reserve < 0:
            raise ConfigError(f"config key '{at.key('ratelimitreserve')}' must not be negative")
        if self.offline_after < 0:
            raise ConfigError(f"config key '{at.key('offlineafter')}' must not be negative")
        if self.probe_interval_s <= 0:
            raise ConfigError(f"config key '{at.key('probeinterval')}' must be more than 0")
        password = _password(at, self)
        return replace(self, host=host, remoteurl=None, remoteurls=urls, password=password)


@dataclass(frozen=True)
class ProxyBlockConfig:
    """registry:2's ``proxy``: one upstream, the mirror of Docker Hub (see the module)."""

    remoteurl: str | None = key(
        "remoteurl",
        None,
        parse=_remote_url,
        doc="Docker Hub's URL or a Docker Hub mirror's; its host also names the upstream",
    )
    username: str | None = key("username", None, parse=_string, doc="upstream user name")
    password: str | None = key(
        "password", None, parse=_string, secret=True, doc="upstream password"
    )
    ttl: float = key(
        "ttl",
        REGISTRY2_PROXY_TTL,
        doc="a cached image not pulled for this long is evicted; `0`: never (as registry:2)",
    )
    allow: tuple[str, ...] = key(
        "allow", (), parse=_name_globs, doc="(Entrepot) as `proxies[N].allow`"
    )
    deny: tuple[str, ...] = key(
        "deny", (), parse=_name_globs, doc="(Entrepot) as `proxies[N].deny`"
    )
    offline: bool = key("offline", False, doc="(Entrepot) as `proxies[N].offline`")

    def checked(self, at: At) -> ProxyBlockConfig | None:
        if is_empty(at.raw):
            return None
        if self.remoteurl is None:
            raise ConfigError(
                "config key 'proxy.remoteurl' is required when 'proxy' is configured "
                "(such as https://registry-1.docker.io)"
            )
        _pair(at, self.username, self.password)
        return self

    def upstream(self, taken: set[str]) -> ProxyUpstreamConfig:
        """The mirror upstream; ``taken``: the hosts of the ``proxies`` entries, which keep
        them (a docker.io entry leaves the block its ``remoteurl`` host, as before)."""
        assert self.remoteurl is not None  # checked
        remote_host = _host_of(self.remoteurl)
        host = remote_host if DOCKER_HUB in taken else DOCKER_HUB
        aliases = () if remote_host in taken | {host} else (remote_host,)
        return ProxyUpstreamConfig(
            host=host,
            remoteurls=(self.remoteurl,),
            username=self.username,
            password=self.password,
            mirror=True,
            aliases=aliases,
            allow=self.allow,
            deny=self.deny,
            offline=self.offline,
            ttl_s=self.ttl,
        )


def _host(at: At, host: str) -> str:
    where = at.key("host")
    if not host.strip():
        raise ConfigError(
            f"config key '{where}' is required: the registry this upstream stands for, "
            "such as docker.io, ghcr.io or localhost:5000"
        )
    if "/" in host:
        raise ConfigError(
            f"config key '{where}': {host!r} must be a registry host such as ghcr.io or "
            "localhost:5000, without a scheme or path (put the URL in remoteurl)"
        )
    if host != host.lower():
        raise ConfigError(f"config key '{where}': {host!r} must be lower-case")
    if not _HOST.fullmatch(host):
        raise ConfigError(
            f"config key '{where}': {host!r} is not a registry host such as ghcr.io or "
            "localhost:5000"
        )
    if host in DOCKER_HUB_NAMES:
        return DOCKER_HUB
    if "." not in host and ":" not in host and host != "localhost":
        at.warn(
            f"config key '{where}': {host!r} has no '.' or ':' and is not 'localhost'; "
            f"Docker clients read '{host}/name' as a Docker Hub repository, not as this "
            "registry"
        )
    return host


def _host_of(url: str) -> str:
    """The host a registry:2 ``proxy.remoteurl`` stands for."""
    parts = urlsplit(url)
    hostname = parts.hostname or ""
    if hostname in DOCKER_HUB_NAMES:
        return DOCKER_HUB
    if ":" in hostname:
        hostname = f"[{hostname}]"
    return hostname if parts.port is None else f"{hostname}:{parts.port}"


def _password(at: At, entry: ProxyUpstreamConfig) -> str | None:
    """The password from ``password``, ``passwordfile`` or ``passwordenv`` (one of them)."""
    given = {
        "password": entry.password,
        "passwordfile": entry.passwordfile,
        "passwordenv": entry.passwordenv,
    }
    sources = [name for name, value in given.items() if value is not None]
    if len(sources) > 1:
        raise ConfigError(f"config key '{at.path}': set only one of {', '.join(sources)}")
    password = entry.password
    if entry.passwordfile is not None:
        password = _read_password_file(entry.passwordfile, at.key("passwordfile"))
    if entry.passwordenv is not None:
        password = _read_password_env(entry.passwordenv, at.environ, at.key("passwordenv"))
    _pair(at, entry.username, password)
    return password


def _pair(at: At, username: str | None, password: str | None) -> None:
    if username is not None and password is None:
        raise ConfigError(
            f"config key '{at.key('username')}' is set but no password is; set both or neither"
        )
    if password is not None and username is None:
        raise ConfigError(
            f"config key '{at.key('username')}' is required with a password; set both or neither"
        )


def _read_password_file(path: Path, key_path: str) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"config key '{key_path}': cannot read {path}: {exc.strerror or type(exc).__name__}"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"config key '{key_path}': {path} is not UTF-8 text") from None
    text = text.removesuffix("\n").removesuffix("\r") if text.endswith("\n") else text
    if not text:
        raise ConfigError(f"config key '{key_path}': {path} is empty")
    return text


def _read_password_env(variable: str, environ: Mapping[str, str], key_path: str) -> str:
    value = environ.get(variable)
    if value is None:
        raise ConfigError(f"config key '{key_path}': environment variable {variable} is not set")
    if not value:
        raise ConfigError(f"config key '{key_path}': environment variable {variable} is empty")
    return value


def check_upstreams(found: list[tuple[str, ProxyUpstreamConfig]]) -> None:
    """Each host once; at most one mirror (registry:2's ``proxy`` is one)."""
    hosts: dict[str, str] = {}
    mirror: str | None = None
    for where, upstream in found:
        if upstream.host in hosts:
            raise ConfigError(
                f"config key '{where}': host {upstream.host!r} is already configured "
                f"by '{hosts[upstream.host]}'; each host can have one upstream entry "
                "(list several URLs in remoteurls)"
            )
        hosts[upstream.host] = where
        if upstream.mirror:
            if mirror is not None:
                raise ConfigError(
                    f"config key '{where}.mirror': only one upstream can be the mirror for "
                    f"unprefixed names, and '{mirror}' already is"
                )
            mirror = where
