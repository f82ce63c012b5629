"""The one middleware every HTTP request passes: its request id and access-log line,
registry:2's ``registry_http_*`` metrics, and a direct call of the /v2/<name>/... route.

One layer rather than one per concern, and plain ASGI (no per-request task or body
buffering): each layer costs a coroutine and a wrapper of every message sent, which is
a large share of a manifest request. It is the application's outermost layer (see
``RegistryApp`` in http/app.py): other requests then pass Starlette's ServerErrorMiddleware,
and the direct call answers an unexpected exception with the same last-resort handler.
A plain ``Response`` (a body in memory: manifests, HEADs, errors) is sent here as its two
ASGI messages, with the request id added to its headers, rather than through a wrapper of
``send``; streamed and file responses go through the wrapper.

The direct call: a request the /v2/<name>/... route (``api_route``) would get is given to
its endpoint here, with the exception handlers the application has, instead of through
Starlette's ExceptionMiddleware, router and route wrapper. The scope gets what the router
would put there (route, endpoint, path parameters), so handlers see the same request.
Anything else (other routes, a path below a mount) takes the ordinary way.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from random import getrandbits
from typing import Any

from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from entrepot import requestinfo
from entrepot.http.accesslog import SANE_ID, header, write_access_line
from entrepot.http.clientaddr import ClientAddresses
from entrepot.http.context import API_IN_SCOPE, ApiContext
from entrepot.http.metrics import HttpMetrics, RouteMetrics

ErrorHandler = Callable[[Request, Exception], Awaitable[Response]]

# Request paths whose route (metrics, api path parameter) is remembered, the oldest
# pushed out (uploads make new paths).
KNOWN_PATHS = 4096
# Request ids made at a time: formatting one random number per request cost more than
# the rest of the id's handling.
IDS_MADE = 512
_made_ids: list[str] = []


def _made_id() -> str:
    """A new request id: 16 hex digits from random's generator (seeded anew in each
    forked worker: made ids only tell a request's lines apart, they guard nothing)."""
    if not _made_ids:
        text = getrandbits(64 * IDS_MADE).to_bytes(8 * IDS_MADE, "big").hex()
        _made_ids.extend(text[i : i + 16] for i in range(0, len(text), 16))
    return _made_ids.pop()


# Ids made before a fork are the parent's: a worker makes its own.
os.register_at_fork(after_in_child=_made_ids.clear)


class _Answer:
    """What the client was sent, for the access-log line and the metrics."""

    __slots__ = ("length", "request_id_header", "send", "sent", "status")

    def __init__(self, send: Send, request_id_header: tuple[bytes, bytes]) -> None:
        self.send = send
        self.request_id_header = request_id_header
        self.status = 0
        self.sent = 0
        self.length = "-"

    async def send_logged(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
            headers = list(message.get("headers", ()))
            for key, value in headers:
                if key.lower() == b"content-length":
                    self.length = value.decode("latin-1")
            headers.append(self.request_id_header)
            message = {**message, "headers": headers}
        elif kind == "http.response.body":
            self.sent += len(message.get("body", b""))
        elif kind == "http.response.pathsend":
            self.sent = -1  # a file the server sends itself: Content-Length says its size
        await self.send(message)

    async def send_plain(self, response: Response) -> None:
        """What ``Response.__call__`` sends, with the request id."""
        body = response.body
        headers = [*response.raw_headers, self.request_id_header]  # (its own list unchanged)
        self.status = response.status_code
        send = self.send
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        self.sent = len(body)
        await send({"type": "http.response.body", "body": body})
        if response.background is not None:
            await response.background()

    def size(self) -> str:
        return self.length if self.sent < 0 else str(self.sent)


class FrontDoor:
    """ASGI middleware: see the module's description."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        access_log: bool = True,
        addresses: ClientAddresses | None = None,
        metrics: HttpMetrics | None = None,
        api_route: Route | None = None,
        api: ApiContext | None = None,
        routes_before: Iterable[str] = (),
        error_handlers: Mapping[Any, ErrorHandler] | None = None,
    ) -> None:
        self.app = app
        self.access_log = access_log
        self.addresses = addresses or ClientAddresses()
        self.metrics = metrics
        self.api_route = api_route
        self.api = api  # what api_route's handlers find with context()
        # Literal paths of the routes listed before api_route: the router gives them
        # their own endpoints, so they take the ordinary way.
        self.routes_before = frozenset(routes_before)
        handlers: dict[Any, ErrorHandler] = dict(error_handlers or {})
        # The last-resort handler (500 or Exception), as ServerErrorMiddleware calls it.
        self.last_resort = handlers.get(500) or handlers.get(Exception)
        # As Starlette's ExceptionMiddleware keeps them: without the last-resort handler.
        self.error_handlers: dict[Any, ErrorHandler] = {
            key: handler for key, handler in handlers.items() if key not in (500, Exception)
        }
        for handler in handlers.values():
            assert inspect.iscoroutinefunction(handler), handler
        if api_route is not None:
            assert inspect.iscoroutinefunction(api_route.endpoint), api_route.endpoint
        self._known: dict[tuple[str, str], tuple[RouteMetrics | None, str | None]] = {}
        # (by class, by status), as Starlette's ExceptionMiddleware puts them in the scope
        self.handled: tuple[dict[Any, ErrorHandler], dict[int, ErrorHandler]] = (
            self.error_handlers,
            {},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = header(scope, b"x-request-id")
        request_id = given if given and SANE_ID.match(given) else _made_id()
        answer = _Answer(send, (b"x-request-id", request_id.encode()))
        info, token = requestinfo.begin(request_id)
        started = time.perf_counter()
        key = (scope["path"], scope["method"])
        counted, path_param = self._known.get(key) or self._learn(key)
        if counted is not None:
            counted.in_flight.inc()
        if path_param is not None and scope.get("root_path"):
            path_param = None  # below a mount: the router's way
        try:
            if path_param is None:
                await self.app(scope, receive, answer.send_logged)
            else:
                await self._call_api(scope, receive, answer, path_param)
        except BaseException:
            answer.status = answer.status or 500  # answered by the last-resort handler
            raise
        finally:
            seconds = time.perf_counter() - started
            status = answer.status
            if self.access_log:
                write_access_line(self.addresses, scope, info, status, answer.size(), seconds)
            requestinfo.end(token)
            if counted is not None:
                counted.in_flight.dec()
                counted.duration.observe(seconds)
                counted.requests(status).inc()

    def _learn(self, key: tuple[str, str]) -> tuple[RouteMetrics | None, str | None]:
        """What a request of (path, method) counts, and the ``path`` parameter the router
        would give api_route (None: not api_route, or a route before it), remembered:
        a pull fleet asks for the same few paths over and over."""
        path, method = key
        counted = None if self.metrics is None else self.metrics.route_for(path, method)
        route = self.api_route
        path_param: str | None = None
        if route is not None and path not in self.routes_before and method in (route.methods or ()):
            match = route.path_regex.match(path)
            path_param = None if match is None else match.group(1)
        known = self._known
        if len(known) >= KNOWN_PATHS:
            del known[next(iter(known))]  # the oldest known
        known[key] = (counted, path_param)
        return counted, path_param

    async def _call_api(
        self, scope: Scope, receive: Receive, answer: _Answer, path_param: str
    ) -> None:
        """What Starlette's ServerErrorMiddleware, ExceptionMiddleware, router, route and
        request_response do for this request, in one frame."""
        route = self.api_route
        assert route is not None
        if "router" not in scope:
            scope["router"] = scope["app"].router
        scope["starlette.exception_handlers"] = self.handled
        scope["route"] = route
        scope["endpoint"] = route.endpoint
        if self.api is not None:
            scope[API_IN_SCOPE] = self.api
        given = scope.get("path_params")
        scope["path_params"] = {**given, "path": path_param} if given else {"path": path_param}
        request = Request(scope, receive, answer.send_logged)
        try:
            response: Response = await route.endpoint(request)
            await self._send(response, scope, receive, answer)
        except Exception as exc:
            handler = self._error_handler(exc)
            if handler is None:
                # As ServerErrorMiddleware: the last-resort answer if nothing was sent
                # yet, and the exception goes on to the server, which logs it.
                if self.last_resort is not None and not answer.status:
                    await self._send(await self.last_resort(request, exc), scope, receive, answer)
                raise
            if answer.status:
                raise RuntimeError(
                    "Caught handled exception, but response already started."
                ) from exc
            await self._send(await handler(request, exc), scope, receive, answer)
            exc.__traceback__ = None  # a reused exception would pile up tracebacks

    @staticmethod
    async def _send(response: Response, scope: Scope, receive: Receive, answer: _Answer) -> None:
        if type(response) in _PLAIN:
            await answer.send_plain(response)
        else:
            await response(scope, receive, answer.send_logged)

    def _error_handler(self, exc: Exception) -> ErrorHandler | None:
        for cls in type(exc).__mro__:
            handler = self.error_handlers.get(cls)
            if handler is not None:
                return handler
        return None  # no status handlers: Starlette would look one up for an HTTPException


# Response classes whose whole answer is their status, raw headers and body (those that
# do not override __call__): sent by _Answer.send_plain.
_PLAIN = frozenset({Response, JSONResponse, PlainTextResponse, HTMLResponse, RedirectResponse})
