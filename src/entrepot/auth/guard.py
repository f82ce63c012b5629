"""The access guard for each auth mode: it authenticates a request from its headers and
decides whether it may have the access it needs, raising the spec's errors (with the
challenge clients need to sign in) when not."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from entrepot.auth.access import CATALOG, Access, challenge_scope, covers, repository
from entrepot.auth.htpasswd import UserDirectory, check_password
from entrepot.auth.policy import AccessPolicy
from entrepot.auth.ratelimit import FailedLoginLimiter
from entrepot.auth.tokens import BuiltinTokens, ExternalTokens, TokenExpired, TokenInvalid
from entrepot.oci.errors import ErrorCode, RegistryError

# Who failed to sign in, was locked out or was refused: WARNING lines for audits and
# fail2ban. The normal 401 challenge (every anonymous pull starts with one) logs nothing.
log = logging.getLogger("entrepot.auth")


@dataclass(frozen=True, slots=True)
class Identity:
    user: str | None  # None: anonymous
    granted: tuple[Access, ...] | None  # None: everything (no access control, htpasswd)

    def allows(self, needed: Access) -> bool:
        return self.granted is None or covers(list(self.granted), needed)


OPEN = Identity(None, None)


class Refused(RegistryError):
    """403 DENIED for a signed-in user, who the access log then names."""

    def __init__(self, identity: Identity, message: str, detail: object, challenge: str) -> None:
        super().__init__(ErrorCode.DENIED, message, detail, headers={"WWW-Authenticate": challenge})
        self.identity = identity


def quoted(name: str) -> str:
    """A name the client chose, as log lines show it: in double quotes (as registry:2's
    %q), with quotes, control characters and non-ASCII escaped, so it forges no line."""
    return json.dumps(name)


class Guard(Protocol):
    async def check(
        self,
        authorization: str | None,
        client: str,
        needed: list[Access],
        realm_base: str,
        *,
        bodyless: bool = False,
    ) -> Identity:
        """The identity, if it may have every access in ``needed``; else raise."""
        ...


class OpenGuard:
    """No ``auth`` configured: everyone may do everything, as in registry:2."""

    async def check(
        self,
        authorization: str | None,
        client: str,
        needed: list[Access],
        realm_base: str,
        *,
        bodyless: bool = False,
    ) -> Identity:
        return OPEN


def _detail(needed: list[Access]) -> list[dict[str, str]]:
    return [
        {"Type": a.type, "Name": a.name, "Action": action}
        for a in needed
        for action in sorted(a.actions)
    ]


def _too_many(retry_after: int) -> RegistryError:
    return RegistryError(
        ErrorCode.TOOMANYREQUESTS,
        "too many failed sign-ins for this user from this address; try again later",
        headers={"Retry-After": str(retry_after)},
    )


def parse_basic(authorization: str | None) -> tuple[str, str] | None:
    if not authorization or authorization[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep and user else None


class PasswordChecker:
    """htpasswd users with a failed-login limit; a verified (user, password) pair is
    remembered (as a hash) so bcrypt runs once per client session, not per request."""

    def __init__(self, users: UserDirectory, limiter: FailedLoginLimiter) -> None:
        self.users = users
        self.limiter = limiter
        self._good: dict[bytes, bytes] = {}

    async def verify(self, user: str, password: str, client: str) -> bool:
        hashed = self.users.lookup(user)
        key = hashlib.sha256(f"{user}\0{password}".encode()).digest()
        if hashed is not None and self._good.get(key) == hashed:
            # Verified before: a guesser cannot have it, so no limit applies.
            return True
        # Per user and address: behind NAT or a proxy, one client guessing a password
        # must not lock out everyone else from that address.
        limited = f"{user}\0{client}"
        retry = self.limiter.retry_after(limited)
        if retry is not None:
            raise _too_many(retry)
        # bcrypt is slow on purpose: off the event loop.
        ok = await asyncio.to_thread(check_password, hashed, password)
        if ok and hashed is not None:
            if len(self._good) > 10_000:
                self._good.clear()
            self._good[key] = hashed
            return True
        # registry:2's words ('error authenticating user "alice"'), with the address.
        reason = "no such user" if hashed is None else "wrong password"
        log.warning("error authenticating user %s from %s: %s", quoted(user), client, reason)
        locked = self.limiter.failed(limited)
        if locked is not None:
            log.warning(
                "too many failed sign-ins for user %s from %s: refused for %d s",
                quoted(user),
                client,
                locked,
            )
        return False


class HtpasswdGuard:
    """registry:2's ``auth.htpasswd``: any listed user may do everything."""

    def __init__(self, realm: str, passwords: PasswordChecker) -> None:
        self.realm = realm
        self.passwords = passwords

    async def check(
        self,
        authorization: str | None,
        client: str,
        needed: list[Access],
        realm_base: str,
        *,
        bodyless: bool = False,
    ) -> Identity:
        creds = parse_basic(authorization)
        if creds is not None and await self.passwords.verify(creds[0], creds[1], client):
            return Identity(creds[0], None)
        raise RegistryError(
            ErrorCode.UNAUTHORIZED,
            "authentication required",
            _detail(needed) or None,
            headers={"WWW-Authenticate": f'Basic realm="{self.realm}"'},
        )


class TokenGuard:
    """Bearer tokens: from an external token server (registry:2's ``auth.token``) or
    Entrepot's own token service. ``realm`` None means "<this registry>/auth/token".
    ``policy`` (the built-in service's rules) tells a token that is merely too narrow
    (401: fetch a wider one) from a user the rules refuse (403 DENIED)."""

    def __init__(
        self,
        verifier: BuiltinTokens | ExternalTokens,
        realm: str | None,
        service: str,
        policy: AccessPolicy | None = None,
    ) -> None:
        self.verifier = verifier
        self.realm = realm
        self.service = service
        self.policy = policy

    def _challenge(
        self,
        needed: list[Access],
        realm_base: str,
        error: str | None,
        description: str | None = None,
    ) -> str:
        realm = self.realm or f"{realm_base}/auth/token"
        parts = [f'Bearer realm="{realm}"', f'service="{self.service}"']
        if needed:
            parts.append(f'scope="{challenge_scope(needed)}"')
        if error:
            parts.append(f'error="{error}"')
        if description:
            # RFC 6750's error_description: what clients show for a HEAD, which has no body.
            parts.append(f'error_description="{description}"')
        return ",".join(parts)

    def _refusals(self, identity: Identity, missing: list[Access]) -> list[str]:
        """What of ``missing`` the rules refuse the user, one phrase an access ("push
        alice/x (allowed: pull)"); none when the client only asked for a narrower token.
        Without the rules (external tokens) the token says what is allowed."""
        phrases = []
        for access in missing:
            if self.policy is not None:
                granted = self.policy.grant(identity.user, access)
                allowed = granted.actions if granted is not None else frozenset()
            else:
                allowed = frozenset(
                    action
                    for g in identity.granted or ()
                    if (g.type, g.name) == (access.type, access.name)
                    for action in g.actions & access.actions
                )
            refused = frozenset() if "*" in allowed else access.actions - allowed
            if not refused:
                continue
            what = ",".join(sorted(refused))
            phrase = "list the catalog" if access == CATALOG else f"{what} {access.name}"
            if allowed:
                phrase += f" (allowed: {','.join(sorted(allowed))})"
            phrases.append(phrase)
        return phrases

    async def check(
        self,
        authorization: str | None,
        client: str,
        needed: list[Access],
        realm_base: str,
        *,
        bodyless: bool = False,
    ) -> Identity:
        token = None
        if authorization and authorization[:7].lower() == "bearer ":
            token = authorization[7:].strip()
        if not token:
            raise RegistryError(
                ErrorCode.UNAUTHORIZED,
                "authentication required",
                _detail(needed) or None,
                headers={"WWW-Authenticate": self._challenge(needed, realm_base, None)},
            )
        try:
            claims = self.verifier.verify(token)
        except TokenInvalid as exc:
            # A token that never was trustworthy says the token service and this
            # registry disagree (keys, issuer, service) or someone forges tokens; one
            # whose time is up is routine (the client fetches another).
            level = logging.INFO if isinstance(exc, TokenExpired) else logging.WARNING
            log.log(level, "token from %s refused: %s", client, exc)
            raise RegistryError(
                ErrorCode.UNAUTHORIZED,
                str(exc),
                headers={"WWW-Authenticate": self._challenge(needed, realm_base, "invalid_token")},
            ) from exc
        identity = Identity(claims.subject or None, claims.access)
        missing = [a for a in needed if not identity.allows(a)]
        if not missing:
            return identity
        if identity.user is not None and (refusals := self._refusals(identity, missing)):
            # A signed-in user asked for what the rules do not give them: 403 DENIED,
            # GET and HEAD alike; the challenge header repeats the reason for a HEAD.
            log.warning(
                "access denied: user %s from %s may not %s",
                quoted(identity.user),
                client,
                "; ".join(refusals),
            )
            actions = ", ".join(f"{a.name}: {','.join(sorted(a.actions))}" for a in missing)
            message = f"user {identity.user!r} may not do this ({actions})"
            raise Refused(
                identity,
                message,
                _detail(missing),
                self._challenge(
                    needed, realm_base, "insufficient_scope", message.replace('"', "'")
                ),
            )
        # Anonymous, or a token narrower than the rules allow: the challenge, so the
        # client signs in or fetches a token for the scope it needs.
        raise RegistryError(
            ErrorCode.UNAUTHORIZED,
            "authentication required",
            _detail(missing),
            headers={"WWW-Authenticate": self._challenge(needed, realm_base, "insufficient_scope")},
        )


class TokenService:
    """Entrepot's built-in token endpoint: signs users in (htpasswd users) and grants each
    requested scope as far as the access rules allow."""

    def __init__(
        self,
        tokens: BuiltinTokens,
        passwords: PasswordChecker | None,
        policy: AccessPolicy,
        mirrored_as: Callable[[str], Awaitable[str | None]] | None = None,
    ) -> None:
        self.tokens = tokens
        self.passwords = passwords
        self.policy = policy
        # A plain name the Docker Hub mirror serves: its cache name, whose rules
        # (``docker.io/*``) give pull on it too; Docker sends no credentials to a mirror.
        self.mirrored_as = mirrored_as

    async def _grant(self, user: str | None, scope: Access) -> Access | None:
        granted = self.policy.grant(user, scope)
        if (
            self.mirrored_as is None
            or scope.type != "repository"
            or not {"pull", "*"} & scope.actions
            or (granted is not None and "pull" in granted.actions)
        ):
            return granted
        cache_name = await self.mirrored_as(scope.name)
        if cache_name is None or self.policy.grant(user, repository(cache_name, "pull")) is None:
            return granted
        actions = (granted.actions if granted is not None else frozenset()) | {"pull"}
        return Access(scope.type, scope.name, frozenset(actions))

    async def issue(
        self, authorization: str | None, client: str, service: str | None, scopes: list[Access]
    ) -> tuple[str, float, float]:
        if service is not None and service != self.tokens.service:
            raise RegistryError(
                ErrorCode.DENIED, f"this token service is for {self.tokens.service!r}"
            )
        user: str | None = None
        creds = parse_basic(authorization)
        if authorization and creds is None:
            raise RegistryError(ErrorCode.UNAUTHORIZED, "only Basic credentials are accepted")
        if creds is not None:
            if self.passwords is None or not await self.passwords.verify(*creds, client):
                raise RegistryError(
                    ErrorCode.UNAUTHORIZED,
                    "invalid username or password",
                    headers={"WWW-Authenticate": 'Basic realm="entrepot"'},
                )
            user = creds[0]
        granted = [g for g in [await self._grant(user, s) for s in scopes] if g is not None]
        return self.tokens.issue(user or "", granted)
