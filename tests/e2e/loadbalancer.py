"""Debian's nginx as a round-robin load balancer in front of several registry replicas:
a config of its own in a temp dir, run as a child (``nginx -c CONF -g 'daemon off;'``).

Its access log names the replica (``$upstream_addr``) that served each request, so a test
can see a chunked upload's POST, PATCH and PUT land on different replicas.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .servers import ServerStartError, find_free_port, probe

START_TIMEOUT = 30.0

_CONF = """\
worker_processes 1;
pid {base}/nginx.pid;
error_log {base}/error.log info;
events {{ worker_connections 512; }}
http {{
    client_body_temp_path {base}/client_body;
    proxy_temp_path {base}/proxy;
    fastcgi_temp_path {base}/fastcgi;
    uwsgi_temp_path {base}/uwsgi;
    scgi_temp_path {base}/scgi;
    log_format replicas '$request_method $request_uri $status $upstream_addr';
    access_log {base}/access.log replicas;
    upstream replicas {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{port};
        # Layers of any size, streamed to the replica as they arrive (not spooled first).
        client_max_body_size 0;
        proxy_request_buffering off;
        proxy_buffering off;
        proxy_http_version 1.1;
        proxy_read_timeout 900s;
        proxy_send_timeout 900s;
        location / {{
            proxy_pass http://replicas;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
}}
"""


@dataclass(frozen=True)
class Routed:
    """One request as nginx logged it."""

    method: str
    uri: str
    status: int
    upstream: str  # host:port of the replica that answered


def nginx_binary() -> str | None:
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )


class Nginx:
    def __init__(self, base: Path, upstreams: Sequence[str]) -> None:
        self.base = base
        self.upstreams = list(upstreams)
        self.port = find_free_port()
        self.conf = base / "nginx.conf"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self) -> Nginx:
        binary = nginx_binary()
        if binary is None:
            raise ServerStartError("nginx is not installed: scripts/install-test-deps.sh")
        self.base.mkdir(parents=True, exist_ok=True)
        servers = "\n".join(f"        server {up};" for up in self.upstreams)
        self.conf.write_text(_CONF.format(base=self.base, port=self.port, servers=servers))
        log = (self.base / "stderr.log").open("ab")
        self.proc = subprocess.Popen(
            [binary, "-p", str(self.base), "-c", str(self.conf), "-g", "daemon off;"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while not isinstance(probe(f"{self.url}/v2/"), int):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise ServerStartError(f"nginx did not start:\n{self.errors()}")
            time.sleep(0.05)
        return self

    def errors(self) -> str:
        text = []
        for name in ("stderr.log", "error.log"):
            with contextlib.suppress(OSError):
                text.append((self.base / name).read_text(errors="replace")[-4000:])
        return "\n".join(text)

    def routed(self) -> list[Routed]:
        """Every request nginx has logged so far, in order."""
        entries = []
        with contextlib.suppress(FileNotFoundError):
            for line in (self.base / "access.log").read_text().splitlines():
                method, uri, status, upstream = line.split(" ", 3)
                entries.append(Routed(method, uri, int(status), upstream))
        return entries

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGQUIT)  # graceful: finish what is in flight
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # the master and its worker
            self.proc.wait(10)
