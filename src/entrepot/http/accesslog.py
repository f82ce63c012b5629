"""The access log and request ids: one line per request, in Apache's combined format
(as registry:2 writes it, so log tools keep working) followed by what an operator asks
"what happened?" with: the duration, the request id, and what the cache did.

    127.0.0.1 - alice [29/Nov/2026:21:00:00 +0000] "GET /v2/library/nginx/manifests/1?ns=docker.io
    HTTP/1.1" 200 1234 "-" "containerd/1.6" 3.1ms id=4f0c... cache=hit upstream=docker.io

A client's ``X-Request-Id`` (if it is a sane token) is kept, else one is made; it is
returned in the response and carried by every log line written for that request.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any, TextIO

from starlette.types import Scope

from entrepot import requestinfo
from entrepot.http.clientaddr import ClientAddresses

access_log = logging.getLogger("entrepot.access")

SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Bytes a log line must not carry as they are: a CR LF would start a forged line, a '"'
# would end a quoted field. They are written percent-encoded.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f\"]")


_LINE = '%s - %s [%s] "%s %s %s" %d %s "%s" "%s" %.1fms id=%s cache=%s upstream=%s'
_PROTOCOLS = {version: f"HTTP/{version}" for version in ("1.0", "1.1", "2", "3")}


# Lines gathered before a write: at most this long after the first, and at most this many
# bytes per write (what a pipe writes whole, so workers sharing stderr never mix lines).
FLUSH_SECONDS = 0.005
WRITE_BYTES = 4096


class AccessLines(logging.StreamHandler):  # type: ignore[type-arg]
    """The access log's own handler (log_setup.py installs it): the lines
    ``write_access_line`` gives it straight are gathered and written FLUSH_SECONDS after
    the first, several per write, rather than one LogRecord and one write each (most of
    a manifest request's CPU time). On a crash at most FLUSH_SECONDS of lines are lost;
    ``flush`` (the app's shutdown, logging's at exit) writes what is left. Records logged
    the ordinary way are written at once, after the gathered lines."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)  # (None: stderr)
        self.setFormatter(logging.Formatter("%(message)s"))
        self._lines: list[str] = []

    def add(self, line: str) -> None:
        lines = self._lines
        lines.append(line)
        if len(lines) == 1:
            try:
                asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)
            except RuntimeError:  # no event loop here: nothing would flush it later
                self.flush()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            lines, self._lines = self._lines, []
            try:
                chunk = ""
                for line in lines:
                    if chunk and len(chunk) + len(line) >= WRITE_BYTES:
                        self.stream.write(chunk)
                        self.stream.flush()
                        chunk = ""
                    chunk += line + "\n"
                if chunk:
                    self.stream.write(chunk)
                super().flush()
            except (OSError, ValueError):  # (a closed stream) dropped, as logging drops them
                pass

    def emit(self, record: logging.LogRecord) -> None:
        if self._lines:
            self.flush()
        super().emit(record)


def flush_access_lines() -> None:
    """Write the gathered access lines now (the app stops)."""
    for handler in access_log.handlers:
        if isinstance(handler, AccessLines):
            handler.flush()


def _safe(text: str) -> str:
    if text.isprintable() and '"' not in text:
        return text  # (no control character: nothing to encode, without the regex)
    return _UNSAFE.sub(lambda m: f"%{ord(m.group()):02X}", text)


_stamp: list[Any] = [0, ""]  # the last second formatted, and its text


def _now() -> str:
    """Apache's timestamp, formatted once a second rather than once a request."""
    second = int(time.time())
    if _stamp[0] != second:
        _stamp[:] = [second, time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(second))]
    return str(_stamp[1])


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def write_access_line(
    addresses: ClientAddresses,
    scope: Scope,
    info: requestinfo.RequestInfo,
    status: int,
    size: str,
    seconds: float,
) -> None:
    """The request's line, if the access logger takes INFO lines."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    addr = addresses.of(scope)
    raw_path = scope.get("raw_path") or scope.get("path", "").encode()
    target = raw_path.decode("latin-1")
    query = scope.get("query_string", b"")
    if query:
        target += "?" + query.decode("latin-1")
    state: dict[str, Any] = scope.get("state", {})
    identity = state.get("identity")
    user = getattr(identity, "user", None) or "-"
    referer: bytes | None = None  # the first of each, found in one pass
    agent: bytes | None = None
    for key, value in scope.get("headers", ()):
        if key == b"referer":
            referer = value if referer is None else referer
        elif key == b"user-agent":
            agent = value if agent is None else agent
    version = scope.get("http_version", "1.1")
    args = (
        addr,
        _safe(user),
        _now(),
        scope.get("method", "-"),
        _safe(target),
        _PROTOCOLS.get(version) or f"HTTP/{version}",
        status,
        size,
        _safe(referer.decode("latin-1")) if referer else "-",
        _safe(agent.decode("latin-1")) if agent else "-",
        seconds * 1000,
        info.request_id,
        info.cache,
        info.upstream,
    )
    handlers = access_log.handlers
    if len(handlers) == 1 and not access_log.filters:
        (handler,) = handlers
        if type(handler) is AccessLines and not handler.filters and handler.level <= logging.INFO:
            handler.add(_LINE % args)  # the line the record would show, without the record
            return
    # What access_log.info does, without its walk up the stack for the caller's file
    # and line (findCaller), which no access-log format shows: a tenth of a request.
    record = access_log.makeRecord(access_log.name, logging.INFO, __file__, 0, _LINE, args, None)
    access_log.handle(record)
