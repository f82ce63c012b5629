"""The ``http`` section: listen address, TLS, headers."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

from entrepot.config.errors import ConfigError
from entrepot.config.schema import At, derived, key

__all__ = ["DebugConfig", "HttpConfig", "PrometheusConfig", "TlsConfig", "parse_listen_addr"]

_TLS_VERSIONS = ("tls1.0", "tls1.1", "tls1.2", "tls1.3")


def parse_listen_addr(addr: str, net: str = "tcp") -> tuple[str, int]:
    """Split a Go listen address ("host:port", ":port", "[v6]:port") into host and port.

    An empty host means all interfaces: "0.0.0.0", or "::" for ``net="tcp6"``. The port
    may be a service name ("https"), as Go allows. Raises ``ValueError``.
    """
    if addr.startswith("["):
        end = addr.find("]")
        if end < 0 or addr[end + 1 : end + 2] != ":":
            raise ValueError(f"invalid address {addr!r}: expected [host]:port")
        host, port_text = addr[1:end], addr[end + 2 :]
    else:
        if ":" not in addr:
            raise ValueError(f"invalid address {addr!r}: missing port (use host:port or :port)")
        host, port_text = addr.rsplit(":", 1)
        if ":" in host:
            raise ValueError(f"invalid address {addr!r}: put an IPv6 host in brackets")
    if not host:
        host = "::" if net == "tcp6" else "0.0.0.0"
    if port_text.isdigit():
        port = int(port_text)
        if port > 65535:
            raise ValueError(f"invalid address {addr!r}: port {port} is out of range")
        return host, port
    try:
        return host, socket.getservbyname(port_text, "tcp")
    except OSError:
        raise ValueError(f"invalid address {addr!r}: port {port_text!r} is not a number") from None


@dataclass(frozen=True)
class TlsConfig:
    """``http.tls``; kept only when a certificate is configured (as in registry:2).
    A non-empty ``clientcas`` means client certificates are required and verified."""

    NOT_IMPLEMENTED: ClassVar = ("ciphersuites", "clientauth", "letsencrypt")
    certificate: Path = key("certificate", Path(), doc="PEM certificate (chain) file")
    clientcas: list[Path] = key("clientcas", factory=list, doc="CA files for client certificates")
    minimumtls: str | None = key(
        "minimumtls",
        None,
        choices=_TLS_VERSIONS,
        doc="lowest TLS version; TLS 1.2 is the lowest Granian offers",
    )
    # Last: from here on "key" in this class body is the field, not the function.
    key: Path = key("key", Path(), doc="its unencrypted PEM private key file")

    @classmethod
    def accept(cls, at: At) -> None:
        letsencrypt = at.raw.get("letsencrypt")
        if isinstance(letsencrypt, dict) and letsencrypt.get("cachefile"):
            raise ConfigError(
                "config key 'http.tls.letsencrypt' is not supported yet; "
                "configure http.tls.certificate and http.tls.key instead"
            )

    def checked(self, at: At) -> TlsConfig | None:
        has_key = at.raw.get("key") not in (None, "")
        if at.raw.get("certificate") in (None, ""):
            if has_key:
                at.warn(
                    "config key 'http.tls.key' is set but 'http.tls.certificate' is not; "
                    "TLS is disabled (as in registry:2)"
                )
            return None
        if not has_key:
            raise ConfigError(
                "config key 'http.tls.key' is required when 'http.tls.certificate' is set"
            )
        if self.minimumtls in ("tls1.0", "tls1.1"):
            at.warn(
                f"config key 'http.tls.minimumtls': {self.minimumtls} is not supported; "
                "TLS 1.2 is the minimum"
            )
        return self


@dataclass(frozen=True)
class PrometheusConfig:
    """``http.debug.prometheus``."""

    enabled: bool = key("enabled", False, doc="serve Prometheus metrics on `http.debug.addr`")
    path: str = key("path", "/metrics", doc="their path there")

    def checked(self, at: At) -> PrometheusConfig:
        if not self.path.startswith("/"):
            raise ConfigError(
                f"config key '{at.key('path')}' must start with '/', got {self.path!r}"
            )
        return self


@dataclass(frozen=True)
class DebugConfig:
    """``http.debug``: a second listener, for operators (registry:2's debug server).
    ``host``/``port`` are derived from ``addr``; None without one."""

    addr: str = key("addr", "", doc="the debug server's address (`host:port`); none when empty")
    prometheus: PrometheusConfig = key("prometheus", factory=PrometheusConfig, present=True, doc="")
    host: str = derived("")
    port: int = derived(0)

    def checked(self, at: At) -> DebugConfig | None:
        if not self.addr:
            if self.prometheus.enabled:
                at.warn(
                    "config key 'http.debug.prometheus.enabled' is set but 'http.debug.addr' "
                    "is not: no metrics are served there (set http.debug.addr, e.g. :5001)"
                )
            return None
        try:
            host, port = parse_listen_addr(self.addr)
        except ValueError as exc:
            raise ConfigError(f"config key 'http.debug.addr': {exc}") from exc
        if not self.prometheus.enabled:
            at.warn(
                "config key 'http.debug.addr' is set but 'http.debug.prometheus.enabled' is "
                "not: the debug server serves only Prometheus metrics (registry:2's expvar "
                "and pprof are Go's), so it is not started"
            )
            return None
        return replace(self, host=host, port=port)


@dataclass(frozen=True)
class HttpConfig:
    """``http``. ``host``/``port`` are derived from ``http.addr`` (an empty host, as in
    ":5000", means all IPv4 interfaces, "::" with ``net: tcp6``); with ``net: unix``,
    ``unix_socket`` is the socket path and ``host``/``port`` are "" and 0."""

    NOT_IMPLEMENTED: ClassVar = ("relativeurls", "draintimeout", "http2", "h2c")
    addr: str = key("addr", ":5000", doc="listen address: `host:port`, `:port`, a socket path")
    net: str = key(
        "net",
        "tcp",
        lower=True,
        choices=("tcp", "tcp4", "tcp6", "unix"),
        doc="`tcp`, `tcp6`, `unix`; with `unix`, a socket file at `http.addr` that nothing "
        "listens on (a crashed run's) is removed at start, where registry:2 refuses to start",
    )
    host_url: str | None = key("host", None, doc="the externally reachable base URL")
    secret: str | None = key(
        "secret",
        None,
        secret=True,
        doc="signs tokens and upload state (default: random, shared by the workers of one "
        "server only: replicas need the same one, and start-up warns on `storage.s3` or with "
        "`redis` without it)",
    )
    prefix: str = key("prefix", "/", doc="serve the API below this path")
    headers: dict[str, list[str]] = key("headers", factory=dict, doc="headers added to responses")
    trustedproxies: list[str] = key(
        "trustedproxies",
        factory=list,
        doc="Entrepot's own: addresses or networks of reverse proxies whose X-Forwarded-For "
        "names the client (for sign-in limits and logs); none by default",
    )
    tls: TlsConfig | None = key("tls", None, doc="")
    debug: DebugConfig | None = key("debug", None, doc="")
    host: str = derived("0.0.0.0")
    port: int = derived(5000)
    unix_socket: Path | None = derived(None)

    def checked(self, at: At) -> HttpConfig:
        host, port, unix_socket = "", 0, None
        if self.net == "unix":
            unix_socket = Path(self.addr)
        else:
            try:
                host, port = parse_listen_addr(self.addr, self.net)
            except ValueError as exc:
                raise ConfigError(f"config key 'http.addr': {exc}") from exc
        host_url = self.host_url
        if host_url is not None:
            parts = urlsplit(host_url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                at.warn(
                    f"config key 'http.host': {host_url!r} is not an absolute http(s) URL "
                    "and is ignored"
                )
                host_url = None
        prefix = "/" + self.prefix.strip("/") + "/" if self.prefix.strip("/") else "/"
        for index, network in enumerate(self.trustedproxies):
            try:
                ipaddress.ip_network(str(network), strict=False)
            except ValueError:
                raise ConfigError(
                    f"config key 'http.trustedproxies[{index}]': {network!r} is not an IP "
                    "address or network (such as 10.0.0.5 or 10.0.0.0/8)"
                ) from None
        return replace(
            self, host=host, port=port, unix_socket=unix_socket, host_url=host_url, prefix=prefix
        )
