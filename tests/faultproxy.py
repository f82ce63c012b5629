"""A fault-injecting HTTP proxy for tests: put it in front of an S3 server and make chosen
requests fail with a 5xx, stall until released, or lose their connection mid-body.

Each request is read up to the end of its head and matched against the rules (method, a
regular expression on the target, a header); the first match decides. The proxy asks the
server to close the connection after each request (``Connection: close``), so every
request of a keep-alive client passes the rules. Requests pass through unchanged
otherwise: AWS signatures cover the Host header, which the proxy does not touch.
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Literal

Action = Literal["fail", "stall", "drop"]
STALL_LIMIT = 120.0  # a stalled request goes on by itself after this long
_HEAD_LIMIT = 64 * 1024


@dataclass
class Rule:
    action: Action
    method: str | None = None  # None: any
    target: str = ""  # a regular expression searched in the request target
    header: str = ""  # a header name the request must carry (case-insensitive)
    times: int | None = None  # None: until removed
    status: int = 503  # fail: the status answered
    after_bytes: int = 0  # drop: body bytes forwarded before the connection is cut
    hits: int = 0

    def matches(self, method: str, target: str, headers: dict[str, str]) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method is not None and method != self.method:
            return False
        if self.header and self.header.lower() not in headers:
            return False
        return re.search(self.target, target) is not None


@dataclass
class FaultProxy:
    upstream: tuple[str, int]
    rules: list[Rule] = field(default_factory=list)
    seen: list[tuple[str, str, str]] = field(default_factory=list)  # (method, target, what)

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._stalled = threading.Condition(self._lock)
        self._stalled_count = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def add(self, rule: Rule) -> Rule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def release(self) -> None:
        """Let every stalled request go on (and those stalled later)."""
        self._released.set()

    def wait_stalled(self, count: int = 1, timeout: float = 60.0) -> bool:
        with self._stalled:
            return self._stalled.wait_for(lambda: self._stalled_count >= count, timeout)

    def stop(self) -> None:
        self._stopping = True
        self._released.set()
        with contextlib.suppress(OSError):
            self._listener.close()

    # --- serving ---

    def _accept(self) -> None:
        while not self._stopping:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _decide(self, method: str, target: str, headers: dict[str, str]) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, target, headers):
                    rule.hits += 1
                    self.seen.append((method, target, rule.action))
                    return rule
            self.seen.append((method, target, "pass"))
        return None

    def _serve(self, client: socket.socket) -> None:
        with client:
            head, rest = _read_head(client)
            if head is None:
                return
            lines = head.decode("latin-1").split("\r\n")
            method, target = [*lines[0].split(" "), "", ""][:2]
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            rule = self._decide(method, target, headers)
            if rule is not None and rule.action == "fail":
                _drain(client, rest, int(headers.get("content-length", "0") or 0))
                _answer(client, rule.status)
                return
            if rule is not None and rule.action == "stall":
                with self._stalled:
                    self._stalled_count += 1
                    self._stalled.notify_all()
                self._released.wait(STALL_LIMIT)
            upstream = socket.create_connection(self.upstream)
            with upstream:
                if rule is not None and rule.action == "drop":
                    upstream.sendall(_closing(lines) + rest[: rule.after_bytes])
                    _forward_then_cut(client, upstream, rule.after_bytes - len(rest))
                    return
                upstream.sendall(_closing(lines) + rest)
                _pipe(client, upstream)


def _read_head(sock: socket.socket) -> tuple[bytes | None, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            piece = sock.recv(65536)
        except OSError:
            return None, b""
        if not piece or len(data) > _HEAD_LIMIT:
            return None, b""
        data += piece
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _closing(lines: list[str]) -> bytes:
    kept = [line for line in lines if not line.lower().startswith("connection:")]
    return ("\r\n".join([*kept, "Connection: close"]) + "\r\n\r\n").encode("latin-1")


def _drain(sock: socket.socket, rest: bytes, length: int) -> None:
    left = length - len(rest)
    sock.settimeout(10)
    with contextlib.suppress(OSError):
        while left > 0:
            piece = sock.recv(min(left, 1 << 20))
            if not piece:
                return
            left -= len(piece)


def _answer(sock: socket.socket, status: int) -> None:
    body = b"<?xml version='1.0'?><Error><Code>ServiceUnavailable</Code>"
    body += b"<Message>injected by the test's fault proxy</Message></Error>"
    head = (
        f"HTTP/1.1 {status} Injected Fault\r\nContent-Type: application/xml\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    with contextlib.suppress(OSError):
        sock.sendall(head.encode() + body)


def _reset(sock: socket.socket) -> None:
    """Close with a TCP RST, as a crashed peer or a broken network would."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _forward_then_cut(client: socket.socket, upstream: socket.socket, left: int) -> None:
    client.settimeout(30)
    with contextlib.suppress(OSError):
        while left > 0:
            piece = client.recv(min(left, 65536))
            if not piece:
                break
            upstream.sendall(piece)
            left -= len(piece)
    _reset(client)
    _reset(upstream)


def _pipe(client: socket.socket, upstream: socket.socket) -> None:
    """Both ways until the server closes (it was asked to, after this request)."""
    sockets = [client, upstream]
    with contextlib.suppress(OSError):
        while True:
            readable, _, _ = select.select(sockets, [], [], 300)
            if not readable:
                return
            for sock in readable:
                data = sock.recv(1 << 20)
                if not data:
                    if sock is upstream:
                        return
                    sockets.remove(client)  # the client sent all; wait for the answer
                    continue
                (upstream if sock is client else client).sendall(data)
