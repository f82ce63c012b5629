"""The pull-through cache's upstreams: registry:2's ``proxy`` block and ``proxies``.

registry:2 proxies one upstream, configured by ``proxy`` (``remoteurl``, ``username``,
``password``, ``ttl``), and then serves nothing else. Entrepot serves its own
repositories and caches any number of upstreams, each under ``/v2/<host>/...``:

```yaml
proxies:
  - host: docker.io                  # the registry this upstream stands for
    remoteurls:                      # or remoteurl: one URL; tried in order
      - https://mirror.gcr.io
      - https://registry-1.docker.io
    username: me
    passwordfile: /run/secrets/hub   # or password: ..., or passwordenv: HUB_TOKEN
    mirror: true                     # unprefixed names with no local repository
    allowpush: false                 # accept pushes into /v2/docker.io/...
    tagttl: 1m                       # serve a cached tag without asking upstream
    negativettl: 15s                 # remember an upstream 404
    connecttimeout: 3s
    readtimeout: 30s
```

registry:2's ``proxy`` block becomes one more upstream, the mirror, whose host comes
from ``remoteurl`` (Docker Hub's URLs give "docker.io"). It is listed first.

Passwords never appear in errors or warnings, and are kept out of ``repr``. A
password, username or ``remoteurl`` must be a YAML string: ``password: 0123`` would be
read as the number 83, so it is refused rather than silently changed. ``passwordfile``
is read when the configuration is loaded (a relative path is relative to the working
directory, like registry:2's other paths); one trailing newline is dropped.
``passwordenv`` names an environment variable holding the password, used as is (no
YAML). An empty password from either is an error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from entrepot.config.errors import ConfigError
from entrepot.config.model import ProxyUpstreamConfig
from entrepot.config.sections import Section, absolute_url, is_empty

__all__ = ["DOCKER_HUB", "DOCKER_HUB_NAMES", "parse_proxies"]

DOCKER_HUB = "docker.io"
# Docker Hub's names: a remoteurl or host with one of them stands for "docker.io".
DOCKER_HUB_NAMES = (
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "registry.hub.docker.com",
)

TTL_NOT_IMPLEMENTED = (
    "proxy.ttl: cached content is kept until deleted; expiry by ttl is not implemented yet"
)

_DEFAULTS = ProxyUpstreamConfig(host="", remoteurls=())
_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
# A registry host as image references write it (distribution/reference's domain).
_HOST = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9a-f:.]+\])(?::[0-9]+)?")


def parse_proxies(root: Section, environ: Mapping[str, str]) -> tuple[ProxyUpstreamConfig, ...]:
    """Read ``proxy`` and ``proxies`` from the root section; raises ``ConfigError``."""
    found: list[tuple[str, ProxyUpstreamConfig]] = []
    proxy = _proxy_block(root.section("proxy"))
    if proxy is not None:
        found.append(("proxy", proxy))
    entries = root.take("proxies")
    if entries is not None:
        if not isinstance(entries, list):
            raise ConfigError(
                "config key 'proxies' must be a list of upstreams (each with host and remoteurl)"
            )
        for index, entry in enumerate(entries):
            section = Section(entry, f"proxies[{index}]", root.warnings)
            found.append((section.path, _entry(section, environ)))
    _check_together(found)
    return tuple(upstream for _, upstream in found)


def _proxy_block(section: Section) -> ProxyUpstreamConfig | None:
    """registry:2's ``proxy``: the mirror, its host taken from ``remoteurl``."""
    if is_empty(section.data):
        section.finish()
        return None
    remoteurl = section.take("remoteurl")
    if remoteurl is None:
        raise ConfigError(
            "config key 'proxy.remoteurl' is required when 'proxy' is configured "
            "(such as https://registry-1.docker.io)"
        )
    url = _remote_url(remoteurl, section.key("remoteurl"))
    username, password = _credentials(section, None)
    if section.duration("ttl", 0.0) > 0:
        section.warnings.append(TTL_NOT_IMPLEMENTED)
    section.finish()
    return ProxyUpstreamConfig(
        host=_host_of(url),
        remoteurls=(url,),
        username=username,
        password=password,
        mirror=True,
    )


def _entry(section: Section, environ: Mapping[str, str]) -> ProxyUpstreamConfig:
    """One entry of ``proxies``."""
    host = _host(section)
    remoteurls = _remote_urls(section)
    username, password = _credentials(section, environ)
    upstream = ProxyUpstreamConfig(
        host=host,
        remoteurls=remoteurls,
        username=username,
        password=password,
        mirror=section.get_bool("mirror", False),
        allow_push=section.get_bool("allowpush", False),
        tag_ttl_s=section.duration("tagttl", _DEFAULTS.tag_ttl_s),
        negative_ttl_s=section.duration("negativettl", _DEFAULTS.negative_ttl_s),
        connect_timeout_s=section.duration("connecttimeout", _DEFAULTS.connect_timeout_s),
        read_timeout_s=section.duration("readtimeout", _DEFAULTS.read_timeout_s),
    )
    for name, seconds in (
        ("connecttimeout", upstream.connect_timeout_s),
        ("readtimeout", upstream.read_timeout_s),
    ):
        if seconds == 0:
            raise ConfigError(f"config key '{section.key(name)}' must be more than 0")
    section.finish()
    return upstream


def _host(section: Section) -> str:
    key = section.key("host")
    host = section.get_str("host")
    if host is None or not host.strip():
        raise ConfigError(
            f"config key '{key}' is required: the registry this upstream stands for, "
            "such as docker.io, ghcr.io or localhost:5000"
        )
    if "/" in host:
        raise ConfigError(
            f"config key '{key}': {host!r} must be a registry host such as ghcr.io or "
            "localhost:5000, without a scheme or path (put the URL in remoteurl)"
        )
    if host != host.lower():
        raise ConfigError(f"config key '{key}': {host!r} must be lower-case")
    if not _HOST.fullmatch(host):
        raise ConfigError(
            f"config key '{key}': {host!r} is not a registry host such as ghcr.io or localhost:5000"
        )
    if host in DOCKER_HUB_NAMES:
        return DOCKER_HUB
    if "." not in host and ":" not in host and host != "localhost":
        section.warnings.append(
            f"config key '{key}': {host!r} has no '.' or ':' and is not 'localhost'; "
            f"Docker clients read '{host}/name' as a Docker Hub repository, not as this "
            "registry"
        )
    return host


def _remote_urls(section: Section) -> tuple[str, ...]:
    single = section.take("remoteurl")
    many = section.take("remoteurls")
    if single is not None and many is not None:
        raise ConfigError(
            f"config key '{section.key('remoteurls')}': set remoteurl or remoteurls, not both"
        )
    if single is not None:
        return (_remote_url(single, section.key("remoteurl")),)
    if many is None:
        raise ConfigError(
            f"config key '{section.key('remoteurl')}' is required (or remoteurls, a list): "
            "the upstream's URL, such as https://ghcr.io"
        )
    key = section.key("remoteurls")
    if not isinstance(many, list):
        raise ConfigError(f"config key '{key}' must be a list of URLs (or use remoteurl)")
    if not many:
        raise ConfigError(f"config key '{key}' must list at least one URL")
    return tuple(_remote_url(url, f"{key}[{i}]") for i, url in enumerate(many))


def _remote_url(value: Any, key: str) -> str:
    """An absolute http(s) URL, without a trailing "/"; never with credentials in it."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(
            f"config key '{key}' must be an absolute http or https URL "
            "(such as https://registry-1.docker.io)"
        )
    text = value.strip()
    if "@" in text:
        # Do not echo it: what precedes "@" is likely a password.
        raise ConfigError(
            f"config key '{key}': the URL must not hold credentials ('@'); "
            "use username and password"
        )
    parts = absolute_url(key, text, "https://registry-1.docker.io")
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise ConfigError(f"config key '{key}': {text!r} must not have a query or fragment")
    return f"{parts.scheme.lower()}://{parts.netloc}{parts.path.rstrip('/')}"


def _host_of(url: str) -> str:
    """The host a registry:2 ``proxy.remoteurl`` stands for."""
    parts = urlsplit(url)
    hostname = parts.hostname or ""
    if hostname in DOCKER_HUB_NAMES:
        return DOCKER_HUB
    if ":" in hostname:
        hostname = f"[{hostname}]"
    return hostname if parts.port is None else f"{hostname}:{parts.port}"


def _credentials(
    section: Section, environ: Mapping[str, str] | None
) -> tuple[str | None, str | None]:
    """``username`` and the password from ``password``, or from ``passwordfile`` or
    ``passwordenv`` (read only with ``environ``: not in registry:2's ``proxy``)."""
    username = _string(section, "username")
    password = _string(section, "password")
    path = variable = None
    if environ is not None:
        path = section.get_str("passwordfile")
        variable = section.get_str("passwordenv")
    given = {"password": password, "passwordfile": path, "passwordenv": variable}
    sources = [name for name, value in given.items() if value is not None]
    if len(sources) > 1:
        raise ConfigError(f"config key '{section.path}': set only one of {', '.join(sources)}")
    if path is not None:
        password = _read_password_file(Path(path), section.key("passwordfile"))
    if variable is not None and environ is not None:
        password = _read_password_env(variable, environ, section.key("passwordenv"))
    if username is not None and password is None:
        raise ConfigError(
            f"config key '{section.key('username')}' is set but no password is; set both or neither"
        )
    if password is not None and username is None:
        raise ConfigError(
            f"config key '{section.key('username')}' is required with a password; "
            "set both or neither"
        )
    return username, password


def _string(section: Section, name: str) -> str | None:
    """A string value, never echoed in the error (it may be a secret)."""
    value = section.take(name)
    if value is None or isinstance(value, str):
        return value
    raise ConfigError(
        f"config key '{section.key(name)}' must be a string: quote it in YAML "
        "(a number such as 0123 would otherwise change)"
    )


def _read_password_file(path: Path, key: str) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"config key '{key}': cannot read {path}: {exc.strerror or type(exc).__name__}"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"config key '{key}': {path} is not UTF-8 text") from None
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise ConfigError(f"config key '{key}': {path} is empty")
    return text


def _read_password_env(variable: str, environ: Mapping[str, str], key: str) -> str:
    value = environ.get(variable)
    if value is None:
        raise ConfigError(f"config key '{key}': environment variable {variable} is not set")
    if not value:
        raise ConfigError(f"config key '{key}': environment variable {variable} is empty")
    return value


def _check_together(found: list[tuple[str, ProxyUpstreamConfig]]) -> None:
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
