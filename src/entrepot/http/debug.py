"""registry:2's debug server (``http.debug.addr``): a second listener, for operators,
serving the Prometheus metrics at ``http.debug.prometheus.path``.

It runs in a thread of the CLI's main process, which Granian's workers are forked from:
exactly one listener, whatever the number of workers, reading every worker's metric files
(summed) at each scrape. A small WSGI server from the standard library is enough for a
scrape every few seconds and keeps it out of the workers' event loops.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from entrepot.http.metrics import Collect, render

__all__ = ["DebugServer"]

StartResponse = Callable[..., Any]


class _Quiet(WSGIRequestHandler):
    # No access log: scrapes every few seconds would drown the registry's own.
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class DebugServer:
    """Listens on ``host:port`` once ``start`` returns (OSError if it cannot)."""

    def __init__(self, host: str, port: int, path: str, collect: Collect) -> None:
        self.host, self.port, self.path = host, port, path
        self._collect = collect
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != self.path:
            body = f"not found: metrics are at {self.path}\n".encode()
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [body]
        body, content_type = render(self._collect(), environ.get("HTTP_ACCEPT"))
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        start_response("200 OK", headers)
        return [body] if environ.get("REQUEST_METHOD") != "HEAD" else []

    def start(self) -> None:
        server_class = _Server6 if ":" in self.host else _Server
        self._server = make_server(
            self.host, self.port, self.app, server_class=server_class, handler_class=_Quiet
        )
        self.port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="entrepot-debug", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join()
