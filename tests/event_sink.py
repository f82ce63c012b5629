"""A notification receiver on 127.0.0.1, as operators run behind registry:2: it records
every POST (headers and JSON body) and answers 200, in a thread of its own, so that both
in-process apps and separate server processes can notify it."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Delivery:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class EventSink:
    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", "0")))
                delivery = Delivery(self.path, dict(self.headers.items()), json.loads(raw))
                with sink._lock:
                    sink.deliveries.append(delivery)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/events"

    def __enter__(self) -> EventSink:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def count(self) -> int:
        with self._lock:
            return sum(len(d.body["events"]) for d in self.deliveries)

    def take(
        self, *, count: int | None = None, quiet: float = 1.0, timeout: float = 20.0
    ) -> list[Delivery]:
        """The deliveries received so far, then forgotten: once they hold ``count`` events,
        or (without ``count``) once none has arrived for ``quiet`` seconds."""
        deadline = time.monotonic() + timeout
        seen = -1
        while time.monotonic() < deadline:
            now = self.count()
            if count is not None and now >= count:
                break
            if count is None and now == seen and now > 0:
                break
            seen = now
            time.sleep(quiet if count is None else 0.05)
        with self._lock:
            taken = list(self.deliveries)
            self.deliveries.clear()
        return taken


def events_of(deliveries: list[Delivery]) -> list[dict[str, Any]]:
    return [event for d in deliveries for event in d.body["events"]]
