"""``entrepot healthcheck [CONFIG]``: asks the running server's ``/health`` on the address
the configuration names (``http.addr``, ``http.prefix``, TLS or not, a unix socket), and
exits 0 if it answers 200, else 1 with one line saying why. The container image's
HEALTHCHECK runs it, so the check follows ``REGISTRY_HTTP_ADDR`` and friends."""

from __future__ import annotations

import http.client
import socket
import ssl
import sys
from pathlib import Path
from typing import Any

from entrepot.config import Config, ConfigError, load_config

COMMAND = "healthcheck"
TIMEOUT = 5.0
UNHEALTHY_EXIT = 1


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over the unix socket of ``http.net: unix``."""

    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self.socket_path))
        self.sock = sock


def add_command(commands: Any) -> None:
    """The subcommand's parser, on ``commands`` (argparse's subparsers)."""
    check = commands.add_parser(
        COMMAND,
        help="exit 0 if the server on this configuration's address is healthy",
        description="GET /health of the server the configuration describes (http.addr, "
        "http.prefix, http.tls), on loopback; exit 0 on 200, else 1.",
    )
    check.add_argument("config", nargs="?", metavar="CONFIG", help="registry:2 config.yml")


def _connection(config: Config) -> tuple[http.client.HTTPConnection, str]:
    """A connection to the server on this machine, and how to name it in a message."""
    http_conf = config.http
    if http_conf.unix_socket is not None:
        return _UnixConnection(http_conf.unix_socket, TIMEOUT), str(http_conf.unix_socket)
    # A wildcard address is reached on loopback; a specific one as it is.
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(
        http_conf.host, http_conf.host
    )
    shown = f"[{host}]:{http_conf.port}" if ":" in host else f"{host}:{http_conf.port}"
    if http_conf.tls is None:
        return http.client.HTTPConnection(host, http_conf.port, timeout=TIMEOUT), shown
    # Our own server on loopback: its certificate names the public host, not this one.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    connection = http.client.HTTPSConnection(host, http_conf.port, timeout=TIMEOUT, context=context)
    return connection, f"https://{shown}"


def healthcheck(path: str | None) -> int:
    """The exit status: 0 when ``/health`` answers 200."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"entrepot: config error: {exc}", file=sys.stderr)
        return UNHEALTHY_EXIT
    connection, shown = _connection(config)
    target = f"{config.http.prefix}health"
    try:
        connection.request("GET", target, headers={"User-Agent": "entrepot-healthcheck"})
        response = connection.getresponse()
        body = response.read(200).decode(errors="replace").strip()
    except (OSError, http.client.HTTPException) as exc:
        print(f"entrepot: unhealthy: no answer from {shown}{target}: {exc}", file=sys.stderr)
        return UNHEALTHY_EXIT
    finally:
        connection.close()
    if response.status != 200:
        print(
            f"entrepot: unhealthy: {shown}{target} answered {response.status}: {body}",
            file=sys.stderr,
        )
        return UNHEALTHY_EXIT
    print(f"healthy: {shown}{target} {body}")
    return 0
