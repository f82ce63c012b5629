"""Signing in to an upstream registry (not to be confused with ``entrepot.auth``, which
controls our own clients): WWW-Authenticate challenges, Basic credentials, and Docker token
auth (distribution's docs/content/spec/auth/token.md) with a token cache that fetches each
token once however many requests need it. No HTTP here: ``upstream_client.py`` sends.

Failures are AuthError carrying the token endpoint's status; ``upstream_client.py`` turns
them into its error types. No message here contains a password, token or Authorization.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

# RFC 9110 token characters, and an auth-param value: a token or a quoted string.
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_SCHEME_RE = re.compile(rf"[\s,]*({_TOKEN})(?=\s|,|$)")
_PARAM_RE = re.compile(rf'[\s,]*({_TOKEN})\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]*)')
_ESCAPE_RE = re.compile(r"\\(.)")

DEFAULT_EXPIRES_IN = 60.0  # token spec: expires_in defaults to 60 seconds
EXPIRY_MARGIN = 10.0  # stop using a token this long before it expires
MAX_CACHED = 1024  # tokens (one per repository scope) kept at most


@dataclass(frozen=True, slots=True)
class Challenge:
    """One challenge of a WWW-Authenticate header; ``scheme`` is lower-cased."""

    scheme: str
    params: dict[str, str]


def parse_challenges(value: str) -> list[Challenge]:
    """Parse a WWW-Authenticate value, which may hold several challenges."""
    challenges: list[Challenge] = []
    pos = 0
    while pos < len(value):
        scheme = _SCHEME_RE.match(value, pos)
        if scheme is None:
            break
        pos = scheme.end()
        params: dict[str, str] = {}
        while (param := _PARAM_RE.match(value, pos)) is not None:
            raw = param.group(2)
            if raw.startswith('"'):
                raw = _ESCAPE_RE.sub(r"\1", raw[1:-1])
            params[param.group(1).lower()] = raw
            pos = param.end()
        challenges.append(Challenge(scheme.group(1).lower(), params))
    return challenges


def pick_challenge(values: list[str]) -> Challenge | None:
    """The challenge to answer among all WWW-Authenticate headers: Bearer over Basic."""
    found = [c for v in values for c in parse_challenges(v) if c.scheme in ("bearer", "basic")]
    bearer = [c for c in found if c.scheme == "bearer" and c.params.get("realm")]
    if bearer:
        return bearer[0]
    basic = [c for c in found if c.scheme == "basic"]
    return basic[0] if basic else None


def basic_authorization(username: str, password: str) -> str:
    encoded = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {encoded}"


def pull_scope(name: str) -> str:
    return f"repository:{name}:pull"


@dataclass(frozen=True, slots=True)
class TokenKey:
    realm: str
    service: str
    scope: str


@dataclass(frozen=True, slots=True)
class Token:
    value: str
    expires_in: float

    def __repr__(self) -> str:  # never show the secret
        return f"Token(expires_in={self.expires_in})"


def parse_token_response(body: bytes) -> Token:
    """The token endpoint's JSON: ``token`` or ``access_token``, optional ``expires_in``.

    ``issued_at`` is ignored: it is on the auth server's clock, and counting the lifetime
    from when the request was sent is never later than counting from the issue time.
    Raises ValueError for anything unusable (the message never contains the body).
    """
    try:
        data = json.loads(body)
    except ValueError:
        raise ValueError("token response is not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("token response is not a JSON object")
    value = data.get("token") or data.get("access_token")
    if not isinstance(value, str) or not value:
        raise ValueError("token response has no token")
    expires_in = data.get("expires_in")
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float) or expires_in <= 0:
        expires_in = DEFAULT_EXPIRES_IN
    return Token(value, float(expires_in))


@dataclass(slots=True)
class _Entry:
    value: str
    valid_until: float


class TokenCache:
    """Bearer tokens per (realm, service, scope), used until shortly before they expire.

    Concurrent callers needing the same missing token share one fetch; the fetch runs in
    its own task, so one caller being cancelled does not cancel it for the others.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._tokens: dict[TokenKey, _Entry] = {}
        self._inflight: dict[TokenKey, asyncio.Task[str]] = {}

    def cached(self, key: TokenKey) -> str | None:
        entry = self._tokens.get(key)
        if entry is None or self._clock() >= entry.valid_until:
            return None
        return entry.value

    async def get(
        self,
        key: TokenKey,
        fetch: Callable[[], Awaitable[Token]],
        *,
        rejected: str | None = None,
    ) -> str:
        """A valid token for ``key``, fetching one if needed. ``rejected`` is a token the
        upstream just refused: it is dropped rather than returned again."""
        value = self.cached(key)
        if value is not None and value != rejected:
            return value
        if value is not None:
            del self._tokens[key]
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._fetch(key, fetch))
            task.add_done_callback(_consume_exception)
            self._inflight[key] = task
        return await asyncio.shield(task)

    async def _fetch(self, key: TokenKey, fetch: Callable[[], Awaitable[Token]]) -> str:
        try:
            started = self._clock()
            token = await fetch()
            lifetime = max(token.expires_in - EXPIRY_MARGIN, token.expires_in / 2)
            self._store(key, _Entry(token.value, started + lifetime))
            return token.value
        finally:
            self._inflight.pop(key, None)

    def _store(self, key: TokenKey, entry: _Entry) -> None:
        self._tokens.pop(key, None)
        self._tokens[key] = entry
        if len(self._tokens) > MAX_CACHED:
            now = self._clock()
            for stale in [k for k, e in self._tokens.items() if now >= e.valid_until]:
                del self._tokens[stale]
            while len(self._tokens) > MAX_CACHED:
                del self._tokens[next(iter(self._tokens))]

    async def aclose(self) -> None:
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tokens.clear()


def _consume_exception(task: asyncio.Task[str]) -> None:
    # Every waiter may have been cancelled; retrieve the exception so asyncio does not
    # report it as never retrieved.
    if not task.cancelled():
        task.exception()


class AuthError(Exception):
    """Authentication failed. ``status`` is the HTTP status that refused us (the token
    endpoint's, or 401 when a challenge cannot be answered), None when unreachable."""

    def __init__(self, message: str, status: int | None, retry_after: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after


class Authenticator:
    """The credentials an upstream asks for. Once a url has challenged, later requests
    carry credentials up front (a warm token cache costs one request, not two); the
    client answers a 401's challenge once. Tokens come from ``fetch(key, basic)``, which
    raises AuthError."""

    def __init__(
        self,
        fetch: Callable[[TokenKey, str | None], Awaitable[Token]],
        username: str | None,
        password: str | None,
        clock: Callable[[], float],
    ) -> None:
        self._fetch = fetch
        self._basic = None
        if username is not None and password is not None:
            self._basic = basic_authorization(username, password)
        self._tokens = TokenCache(clock)
        self._challenges: dict[str, Challenge] = {}  # base url -> the challenge it sent
        self._scopes: dict[tuple[str, str], str] = {}  # (base, name) -> a non-default scope

    async def authorization(self, base: str, name: str) -> str | None:
        """The Authorization to send up front to ``base`` for repository ``name``: None
        until the url has challenged."""
        challenge = self._challenges.get(base)
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            return self._basic
        return await self._bearer(challenge, self._scopes.get((base, name)) or pull_scope(name))

    async def answer(
        self, www_authenticate: list[str], base: str, name: str, rejected: str | None
    ) -> str | None:
        """The Authorization answering a 401's WWW-Authenticate headers, after sending
        ``rejected``; None when they hold no challenge to answer. Raises AuthError."""
        challenge = pick_challenge(www_authenticate)
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            if self._basic is None:
                raise AuthError("credentials are required and none are configured", 401)
            if rejected == self._basic:
                raise AuthError("the configured credentials were rejected", 401)
            self._challenges[base] = challenge
            return self._basic
        self._challenges[base] = challenge
        scope = challenge.params.get("scope") or pull_scope(name)
        if scope != pull_scope(name):
            self._scopes.pop((base, name), None)
            self._scopes[(base, name)] = scope
            if len(self._scopes) > MAX_CACHED:
                del self._scopes[next(iter(self._scopes))]
        stale = rejected.removeprefix("Bearer ") if rejected else None
        return await self._bearer(challenge, scope, rejected=stale)

    async def aclose(self) -> None:
        await self._tokens.aclose()

    async def _bearer(self, challenge: Challenge, scope: str, rejected: str | None = None) -> str:
        key = TokenKey(challenge.params["realm"], challenge.params.get("service", ""), scope)
        fetch = functools.partial(self._fetch, key, self._basic)
        token = await self._tokens.get(key, fetch, rejected=rejected)
        return f"Bearer {token}"
