"""The ``http`` section: listen address, TLS, headers."""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlsplit

from entrepot.config.errors import ConfigError
from entrepot.config.model import HttpConfig, TlsConfig
from entrepot.config.sections import Section

__all__ = ["parse_http", "parse_listen_addr"]

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


def parse_http(section: Section) -> HttpConfig:
    net = (section.get_str("net") or "tcp").lower()
    addr = section.get_str("addr") or ":5000"
    host, port, unix_socket = "", 0, None
    if net == "unix":
        unix_socket = Path(addr)
    elif net in ("tcp", "tcp4", "tcp6"):
        try:
            host, port = parse_listen_addr(addr, net)
        except ValueError as exc:
            raise ConfigError(f"config key 'http.addr': {exc}") from exc
    else:
        raise ConfigError(f"config key 'http.net': unsupported network {net!r}; use tcp or unix")

    host_url = section.get_str("host")
    if host_url is not None:
        parts = urlsplit(host_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            section.warnings.append(
                f"config key 'http.host': {host_url!r} is not an absolute http(s) URL "
                "and is ignored"
            )
            host_url = None

    prefix = section.get_str("prefix") or "/"
    prefix = "/" + prefix.strip("/") + "/" if prefix.strip("/") else "/"

    headers_section = section.section("headers")
    headers = {str(name): headers_section.str_list(str(name)) for name in headers_section.data}

    debug = section.section("debug")
    debug_addr = debug.get_str("addr")
    if debug_addr:
        section.warnings.append(
            "config key 'http.debug.addr' is not implemented yet and is ignored: no debug "
            "server is started (health is served at /health on the main address)"
        )
    debug.finish()

    secret = section.get_str("secret")
    tls = _parse_tls(section.section("tls"))
    section.finish()
    return HttpConfig(
        host=host,
        port=port,
        unix_socket=unix_socket,
        host_url=host_url,
        secret=secret,
        prefix=prefix,
        headers=headers,
        tls=tls,
        debug_addr=debug_addr,
    )


def _parse_tls(section: Section) -> TlsConfig | None:
    certificate = section.get_str("certificate")
    key = section.get_str("key")
    clientcas = section.str_list("clientcas")
    minimumtls = section.get_str("minimumtls")
    if minimumtls is not None and minimumtls not in _TLS_VERSIONS:
        raise ConfigError(
            f"config key 'http.tls.minimumtls': unknown TLS version {minimumtls!r}; "
            f"must be one of {', '.join(_TLS_VERSIONS)}"
        )
    letsencrypt = section.section("letsencrypt")
    if letsencrypt.get_str("cachefile"):
        raise ConfigError(
            "config key 'http.tls.letsencrypt' is not supported yet; "
            "configure http.tls.certificate and http.tls.key instead"
        )
    section.finish()
    if certificate is None:
        if key is not None:
            section.warnings.append(
                "config key 'http.tls.key' is set but 'http.tls.certificate' is not; "
                "TLS is disabled (as in registry:2)"
            )
        return None
    if key is None:
        raise ConfigError(
            "config key 'http.tls.key' is required when 'http.tls.certificate' is set"
        )
    if minimumtls in ("tls1.0", "tls1.1"):
        section.warnings.append(
            f"config key 'http.tls.minimumtls': {minimumtls} is not supported; "
            "TLS 1.2 is the minimum"
        )
    return TlsConfig(
        certificate=Path(certificate),
        key=Path(key),
        clientcas=[Path(ca) for ca in clientcas],
        minimumtls=minimumtls,
    )
