"""The one middleware every HTTP request passes: its request id and access-log line,
registry:2's ``registry_http_*`` metrics, and a direct call of the /v2/<name>/... route.

One layer rather than one per concern, and plain ASGI (no per-request task or body
buffering): each layer costs a coroutine and a wrapper of every message sent, which is
a large share of a manifest request. It sits inside Starlette's ServerErrorMiddleware,
so an unexpected exception is still answered by the application's last-resort handler.

The direct call: a request the /v2/<name>/... route (``api_route``) would get is given to
its endpoint here, with the exception handlers the application has, instead of through
Starlette's ExceptionMiddleware, router and route wrapper. The scope gets what the router
would put there (route, endpoint, path parameters), so handlers see the same request.
Anything else (other routes, a path below a mount) takes the ordinary way.
"""

from __future__ import annotations

import inspect
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from entrepot import requestinfo
from entrepot.http.accesslog import SANE_ID, header, write_access_line
from entrepot.http.clientaddr import ClientAddresses
from entrepot.http.metrics import HttpMetrics, handler_of

ErrorHandler = Callable[[Request, Exception], Awaitable[Response]]


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
        routes_before: Iterable[str] = (),
        error_handlers: Mapping[Any, ErrorHandler] | None = None,
    ) -> None:
        self.app = app
        self.access_log = access_log
        self.addresses = addresses or ClientAddresses()
        self.metrics = metrics
        self.api_route = api_route
        # Literal paths of the routes listed before api_route: the router gives them
        # their own endpoints, so they take the ordinary way.
        self.routes_before = frozenset(routes_before)
        # As Starlette's ExceptionMiddleware keeps them: without the last-resort handler
        # (500 or Exception), which ServerErrorMiddleware, outside this layer, calls.
        self.error_handlers = {
            key: handler
            for key, handler in (error_handlers or {}).items()
            if key not in (500, Exception)
        }
        for handler in self.error_handlers.values():
            assert inspect.iscoroutinefunction(handler), handler
        if api_route is not None:
            assert inspect.iscoroutinefunction(api_route.endpoint), api_route.endpoint
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
        request_id = given if given and SANE_ID.match(given) else secrets.token_hex(8)
        request_id_header = (b"x-request-id", request_id.encode())
        info, token = requestinfo.begin(request_id)
        started = time.perf_counter()
        status = 0
        sent = 0
        length = "-"

        async def send_logged(message: Message) -> None:
            nonlocal status, sent, length
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                for key, value in headers:
                    if key.lower() == b"content-length":
                        length = value.decode("latin-1")
                headers.append(request_id_header)
                message = {**message, "headers": headers}
            elif kind == "http.response.body":
                sent += len(message.get("body", b""))
            elif kind == "http.response.pathsend":
                sent = -1  # a file the server sends itself: Content-Length says its size
            await send(message)

        metrics = self.metrics
        if metrics is not None:
            handler = handler_of(scope["path"])
            in_flight = metrics.in_flight_of(handler)
            in_flight.inc()
        try:
            path_param = self._api_path(scope)
            if path_param is None:
                await self.app(scope, receive, send_logged)
            else:
                await self._call_api(scope, receive, send_logged, path_param, lambda: status)
        except BaseException:
            status = status or 500  # answered by the server's last-resort handler
            raise
        finally:
            seconds = time.perf_counter() - started
            if self.access_log:
                size = length if sent < 0 else str(sent)
                write_access_line(self.addresses, scope, info, status, size, seconds)
            requestinfo.end(token)
            if metrics is not None:
                in_flight.dec()
                method = scope["method"]
                metrics.duration_of(handler, method).observe(seconds)
                metrics.requests_of(str(status), handler, method).inc()

    def _api_path(self, scope: Scope) -> str | None:
        """The route's ``path`` parameter if the router would give this request to
        api_route (and nothing before it), else None."""
        route = self.api_route
        if route is None or scope.get("root_path"):
            return None
        path: str = scope["path"]
        if path in self.routes_before or scope["method"] not in (route.methods or ()):
            return None
        match = route.path_regex.match(path)
        if match is None:
            return None
        value: str = match.group(1)
        return value

    async def _call_api(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        path_param: str,
        response_status: Callable[[], int],
    ) -> None:
        """What Starlette's ExceptionMiddleware, router, route and request_response do
        for this request, in one frame."""
        route = self.api_route
        assert route is not None
        scope.setdefault("router", scope["app"].router)
        scope["starlette.exception_handlers"] = self.handled
        scope["route"] = route
        scope["endpoint"] = route.endpoint
        scope["path_params"] = {**scope.get("path_params", {}), "path": path_param}
        request = Request(scope, receive, send)
        try:
            response: Response = await route.endpoint(request)
            await response(scope, receive, send)
        except Exception as exc:
            handler = self._error_handler(exc)
            if handler is None:
                raise
            if response_status():
                raise RuntimeError(
                    "Caught handled exception, but response already started."
                ) from exc
            answer = await handler(request, exc)
            await answer(scope, receive, send)
            exc.__traceback__ = None  # a reused exception would pile up tracebacks

    def _error_handler(self, exc: Exception) -> ErrorHandler | None:
        for cls in type(exc).__mro__:
            handler = self.error_handlers.get(cls)
            if handler is not None:
                return handler
        return None  # no status handlers: Starlette would look one up for an HTTPException
