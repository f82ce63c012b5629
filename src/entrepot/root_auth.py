"""Part of the composition root: the access guard and token service the ``auth``
configuration asks for, and the secret the workers share."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Awaitable, Callable

from entrepot.auth.guard import (
    Guard,
    HtpasswdGuard,
    OpenGuard,
    PasswordChecker,
    TokenGuard,
    TokenService,
)
from entrepot.auth.htpasswd import HtpasswdFile, UserDirectory
from entrepot.auth.policy import AccessPolicy, AccessRule
from entrepot.auth.ratelimit import FailedLoginLimiter
from entrepot.auth.tokens import BuiltinTokens, ExternalTokens
from entrepot.config import SECRET_ENV, Config


def shared_secret(config: Config) -> bytes:
    configured = config.http.secret or os.environ.get(SECRET_ENV)
    return configured.encode() if configured else secrets.token_bytes(32)


def derive_key(secret: bytes, purpose: str) -> bytes:
    """One key per purpose, so a token key never doubles as the upload-state key."""
    return hmac.new(secret, f"entrepot:{purpose}".encode(), hashlib.sha256).digest()


def create_guard(
    config: Config,
    secret: bytes,
    mirrored_as: Callable[[str], Awaitable[str | None]] | None = None,
) -> tuple[Guard, TokenService | None]:
    """The guard of the configured auth mode, and the built-in token service if that is
    the mode; ``mirrored_as`` names the cache a plain name is pulled from (its rules apply)."""
    auth = config.auth
    if auth is None:
        return OpenGuard(), None
    if auth.htpasswd is not None:
        users = UserDirectory(HtpasswdFile(auth.htpasswd.path))
        passwords = PasswordChecker(users, FailedLoginLimiter())
        return HtpasswdGuard(auth.htpasswd.realm, passwords), None
    if auth.token is not None:
        token = auth.token
        verifier = ExternalTokens(token.rootcertbundle, token.issuer, token.service)
        return TokenGuard(verifier, token.realm, token.service), None
    builtin = auth.builtin
    assert builtin is not None  # the config allows exactly one mode
    tokens = BuiltinTokens(
        derive_key(secret, "tokens"), builtin.issuer, builtin.service, builtin.expiration_s
    )
    file = HtpasswdFile(builtin.htpasswd) if builtin.htpasswd is not None else None
    passwords = PasswordChecker(
        UserDirectory(file, builtin.users), FailedLoginLimiter(max_failures=builtin.maxfailures)
    )
    policy = AccessPolicy(
        [
            AccessRule(rule.who, rule.repositories, frozenset(rule.actions), rule.catalog)
            for rule in builtin.access
        ],
        builtin.groups,
    )
    service = TokenService(tokens, passwords, policy, mirrored_as)
    return TokenGuard(tokens, builtin.realm, builtin.service, policy), service
