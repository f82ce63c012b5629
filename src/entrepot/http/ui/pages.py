"""The web UI's pages, server-rendered from the package's Jinja2 templates: repositories,
a repository's tags, a manifest, deletes, the cache counters, storage use and sign-in."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import cached_property, wraps
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from entrepot.auth.guard import parse_basic, quoted
from entrepot.http.bodies import read_body
from entrepot.http.context import context
from entrepot.http.repositories import writes_for
from entrepot.http.ui.access import SESSION_COOKIE, SESSION_SECONDS, Sessions, UiAccess
from entrepot.http.ui.store import Browser, cache_counters
from entrepot.oci.errors import ErrorCode, RegistryError
from entrepot.oci.names import validate_name
from entrepot.proxy.upstreams import Upstream
from entrepot.registry.api import RepositoryResolver
from entrepot.registry.usage import INTERVAL as USAGE_INTERVAL

if TYPE_CHECKING:  # Jinja2 loads with the first page shown: a worker nobody browses skips it
    from starlette.templating import Jinja2Templates
from entrepot.registry.usage import StorageUsage

log = logging.getLogger("entrepot.auth")

PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
FORM_LIMIT = 64 * 1024
# Pages load nothing from elsewhere and run no script; no other site may frame them (a
# framed delete button could be clicked by a trick), and they show what one user may see.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "private, no-store",
}


@dataclass
class UiSettings:
    store: RepositoryResolver  # the local store: pushed and cached repositories as held
    upstreams: Sequence[Upstream]
    access: UiAccess
    session_key: bytes
    delete_enabled: bool
    # The last storage use figure (registry.usage), read per view: one small object.
    storage_use: Callable[[], Awaitable[StorageUsage | None]]


class SignInRequired(Exception):
    pass


def human_size(size: int | None) -> str:
    if size is None:
        return "—"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def short_digest(digest: object) -> str:
    algorithm, _, hexpart = str(digest).partition(":")
    return f"{algorithm}:{hexpart[:12]}"


def _templates() -> Jinja2Templates:
    from jinja2 import Environment, PackageLoader, select_autoescape
    from starlette.templating import Jinja2Templates

    env = Environment(
        loader=PackageLoader("entrepot.http.ui", "templates"),
        autoescape=select_autoescape(default=True),
    )
    env.filters["size"] = human_size
    env.filters["short"] = short_digest
    env.filters["utc"] = lambda seconds: time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(seconds))
    return Jinja2Templates(env=env)


Page = Callable[["Ui", Request], Awaitable[Response]]


def page(handler: Page) -> Callable[[Ui, Request], Awaitable[Response]]:
    """Errors as pages: a registry error becomes an error page with its status; a page
    anonymous may not see sends the browser to the sign-in form."""

    @wraps(handler)
    async def run(self: Ui, request: Request) -> Response:
        try:
            return await handler(self, request)
        except SignInRequired:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(self.url(request, "login", next=target), status_code=303)
        except RegistryError as exc:
            return await self.render(
                request, "error.html", {"error": exc}, status=exc.status, headers=exc.headers
            )

    return run


class Ui:
    def __init__(self, settings: UiSettings) -> None:
        self.settings = settings
        self.access = settings.access
        self.sessions = Sessions(settings.session_key)
        self.browser = Browser(settings.store, settings.upstreams)

    @cached_property
    def templates(self) -> Jinja2Templates:
        return _templates()

    # -- who is looking ---------------------------------------------------------------

    async def viewer(self, request: Request) -> str | None:
        """The signed-in user (session cookie or Basic credentials), None for anonymous."""
        if hasattr(request.state, "ui_user"):
            known: str | None = request.state.ui_user
            return known
        user = self.sessions.user(request.cookies.get(SESSION_COOKIE))
        creds = parse_basic(request.headers.get("authorization"))
        if user is None and creds is not None and self.access.sign_in:
            client = context(request).client_addresses.of(request.scope)
            if not await self.access.verify(creds[0], creds[1], client):
                # Anonymous for the error page, which must not check (count, log) again.
                request.state.ui_user = None
                raise RegistryError(
                    ErrorCode.UNAUTHORIZED,
                    f"wrong password for user {creds[0]!r}, or no such user",
                    headers={"WWW-Authenticate": 'Basic realm="entrepot"'},
                )
            user = creds[0]
        request.state.ui_user = user
        return user

    async def require(self, request: Request, name: str, action: str) -> str | None:
        user = await self.viewer(request)
        if self.access.may(user, name, action):
            return user
        if user is None and self.access.sign_in:
            raise SignInRequired
        if user:  # as the registry's API logs a signed-in user's refusal
            client = context(request).client_addresses.of(request.scope)
            log.warning(
                "access denied: user %s from %s may not %s %s (web UI)",
                quoted(user),
                client,
                action,
                name,
            )
        who = f"user {user!r}" if user else "anonymous"
        raise RegistryError(ErrorCode.DENIED, f"{who} may not {action} {name}")

    # -- rendering --------------------------------------------------------------------

    @staticmethod
    def url(request: Request, path: str = "", **query: str | None) -> str:
        base = request.scope.get("root_path", "") + "/ui/" + path
        params = {k: v for k, v in query.items() if v is not None}
        return f"{base}?{urlencode(params)}" if params else base

    async def render(
        self,
        request: Request,
        template: str,
        values: dict[str, Any],
        *,
        status: int = 200,
        headers: dict[str, str] | None = None,
    ) -> Response:
        try:
            user = await self.viewer(request)
        except RegistryError:
            user = None  # the error page for bad credentials itself
        values = {
            "root": request.scope.get("root_path", "") + "/ui/",
            "user": user,
            "sign_in": self.access.sign_in,
            "form_token": self.sessions.form_token(user),
            "upstreams": self.settings.upstreams,
            **values,
        }
        return self.templates.TemplateResponse(
            request,
            template,
            values,
            status_code=status,
            headers={**PAGE_HEADERS, **(headers or {})},
        )

    def may_delete(self, user: str | None, name: str) -> bool:
        if not self.settings.delete_enabled or not self.access.may(user, name, "delete"):
            return False
        group = self.browser.group_of(name)
        return not group or self.browser.upstreams[group].allow_push

    # -- pages ------------------------------------------------------------------------

    @page
    async def repositories(self, request: Request) -> Response:
        user = await self.viewer(request)
        query = request.query_params.get("q", "").strip().lower()
        group = request.query_params.get("group")
        if group is not None and group and group not in self.browser.upstreams:
            raise RegistryError(ErrorCode.NAME_UNKNOWN, f"no upstream is cached as {group!r}")
        found = await self.browser.find(
            lambda name: self.access.may(user, name, "pull"),
            query,
            group,
            request.query_params.get("last") or None,
            _page_size(request),
        )
        rows = [(name, self.browser.group_of(name)) for name in found.names]
        next_url = None
        if found.next_last is not None:
            next_url = self.url(request, q=query or None, group=group, last=found.next_last)
        values = {"rows": rows, "query": query, "group": group, "next_url": next_url}
        return await self.render(request, "repositories.html", values)

    @page
    async def repository(self, request: Request) -> Response:
        name = validate_name(request.path_params["name"])
        user = await self.require(request, name, "pull")
        last = request.query_params.get("last") or None
        rows, next_last = await self.browser.tag_rows(name, last, _page_size(request))
        next_url = None if next_last is None else self.url(request, f"r/{name}", last=next_last)
        values = {
            "name": name,
            "group": self.browser.group_of(name),
            "rows": rows,
            "next_url": next_url,
            "can_delete": self.may_delete(user, name),
        }
        return await self.render(request, "repository.html", values)

    @page
    async def manifest(self, request: Request) -> Response:
        name, _, reference = request.path_params["ref"].rpartition("@")
        name = validate_name(name)
        user = await self.require(request, name, "pull")
        view = await self.browser.manifest_view(name, reference)
        values = {"view": view, "name": name, "can_delete": self.may_delete(user, name)}
        return await self.render(request, "manifest.html", values)

    @page
    async def delete(self, request: Request) -> Response:
        form = await _form(request)
        name = validate_name(form.get("name", ""))
        reference = form.get("reference", "")
        user = await self.require(request, name, "delete")
        if not self.sessions.check_form_token(user, form.get("form_token", "")):
            raise RegistryError(ErrorCode.DENIED, "the form expired; reload the page and retry")
        # The API's DELETE path: storage.delete.enabled, read-only mode and caches that
        # refuse writes apply here as they do there.
        writes = await writes_for(request, name)
        await writes.manifests.delete(reference)
        return RedirectResponse(self.url(request, f"r/{name}", deleted=reference), 303)

    @page
    async def cache(self, request: Request) -> Response:
        counters = cache_counters(context(request).metrics())
        sections = [(u, counters.get(u.host, {})) for u in self.settings.upstreams]
        values = {
            "sections": sections,
            "usage": await self.settings.storage_use(),
            "usage_minutes": int(USAGE_INTERVAL // 60),
        }
        return await self.render(request, "cache.html", values)

    @page
    async def login(self, request: Request) -> Response:
        target = request.query_params.get("next") or ""
        if request.method == "GET":
            return await self.render(request, "login.html", {"next": target, "failed": False})
        form = await _form(request)
        user, password = form.get("username", ""), form.get("password", "")
        target = form.get("next", "")
        client = context(request).client_addresses.of(request.scope)
        if not user or not await self.access.verify(user, password, client):
            values = {"next": target, "failed": True, "username": user}
            return await self.render(request, "login.html", values, status=401)
        root = self.url(request)
        destination = target if target.startswith(root) and "//" not in target else root
        response = RedirectResponse(destination, status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            self.sessions.issue(user),
            max_age=SESSION_SECONDS,
            path=root,
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
        )
        return response

    @page
    async def logout(self, request: Request) -> Response:
        form = await _form(request)
        user = await self.viewer(request)
        if not self.sessions.check_form_token(user, form.get("form_token", "")):
            raise RegistryError(ErrorCode.DENIED, "the form expired; reload the page and retry")
        response = RedirectResponse(self.url(request), status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=self.url(request))
        return response


async def _form(request: Request) -> dict[str, str]:
    """A small url-encoded form (the UI's forms are a few fields; no multipart)."""
    body = await read_body(request, FORM_LIMIT)
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


def _page_size(request: Request) -> int:
    raw = request.query_params.get("n", "")
    return min(int(raw), MAX_PAGE_SIZE) if raw.isdigit() and int(raw) > 0 else PAGE_SIZE


def ui_routes(settings: UiSettings) -> list[BaseRoute]:
    """The UI under /ui/, and / sending browsers there."""
    ui = Ui(settings)

    async def to_ui(request: Request) -> Response:
        return RedirectResponse(ui.url(request), status_code=307)

    return [
        Route("/", to_ui, methods=["GET"]),
        Route("/ui", to_ui, methods=["GET"]),
        Route("/ui/", ui.repositories, methods=["GET"]),
        Route("/ui/r/{name:path}", ui.repository, methods=["GET"]),
        Route("/ui/m/{ref:path}", ui.manifest, methods=["GET"]),
        Route("/ui/delete", ui.delete, methods=["POST"]),
        Route("/ui/cache", ui.cache, methods=["GET"]),
        Route("/ui/login", ui.login, methods=["GET", "POST"]),
        Route("/ui/logout", ui.logout, methods=["POST"]),
        # Pages are plain routes: a Mount would change root_path, which links are built from.
        Mount("/ui/static", StaticFiles(packages=[("entrepot.http.ui", "static")])),
    ]
