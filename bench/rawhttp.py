"""A minimal HTTP/1.1 client for the push rows: one keep-alive socket, request bodies sent
from the layer file with ``sendfile`` (the kernel copies page cache to the socket, no
Python touches the bytes). The cheapest sender there is, so a push measures the server,
not the client; the same for both servers. Responses need a Content-Length (both
registries answer upload requests with one)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import urlsplit


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


class RawClient:
    """Requests to ``base`` (``http://host:port``) on one connection, reopened if the
    server closes it."""

    def __init__(self, base: str, timeout: float = 300) -> None:
        parts = urlsplit(base)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = b""

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        target: str,
        headers: dict[str, str] | None = None,
        *,
        file: BinaryIO | None = None,
        offset: int = 0,
        count: int = 0,
    ) -> RawResponse:
        """``method target``; the body is ``count`` bytes of ``file`` from ``offset``."""
        if self._sock is None:
            self._sock = socket.create_connection((self.host, self.port), self.timeout)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._buf = b""
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        lines.append(f"Content-Length: {count}")
        self._sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        if count:
            assert file is not None
            # os.sendfile in a loop, waiting on the socket between calls (it has a timeout)
            self._sock.sendfile(file, offset, count)
        response = self._read_response(method)
        if response.headers.get("connection", "").lower() == "close":
            self.close()
        return response

    def _read_response(self, method: str) -> RawResponse:
        while b"\r\n\r\n" not in self._buf:
            self._fill()
        head, self._buf = self._buf.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", ""):
            raise RuntimeError(f"{status_line}: chunked responses are not supported here")
        length = 0 if method == "HEAD" else int(headers.get("content-length", "0"))
        while len(self._buf) < length:
            self._fill()
        body, self._buf = self._buf[:length], self._buf[length:]
        return RawResponse(status, headers, body)

    def _fill(self) -> None:
        assert self._sock is not None
        data = self._sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection mid-response")
        self._buf += data
