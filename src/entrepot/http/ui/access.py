"""Who is looking at the web UI and what they may see: the same users and access rules as
the API (auth.htpasswd, auth.builtin, or none), a signed session cookie after the sign-in
form, or HTTP Basic credentials on the request."""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import time

from entrepot.auth.access import repository
from entrepot.auth.guard import (
    Guard,
    HtpasswdGuard,
    OpenGuard,
    PasswordChecker,
    TokenService,
)
from entrepot.auth.policy import AccessPolicy

SESSION_COOKIE = "entrepot_session"
SESSION_SECONDS = 12 * 3600


class UiAccess:
    """The API's rules as the UI asks them: "may ``user`` do ``action`` on ``name``?".

    ``passwords`` None means nobody can sign in here: no auth at all (``open``), or an
    external token server (auth.token), whose users and rules Entrepot does not know.
    ``policy`` None with passwords (htpasswd): every signed-in user may do everything.
    """

    def __init__(
        self, *, open: bool, passwords: PasswordChecker | None, policy: AccessPolicy | None
    ) -> None:
        self.open = open
        self.passwords = passwords
        self.policy = policy
        # The rules never change while the server runs, and a repository list asks them
        # once per name: remember the answers.
        self.may = functools.lru_cache(maxsize=65_536)(self._decide)

    @property
    def sign_in(self) -> bool:
        return self.passwords is not None

    def _decide(self, user: str | None, name: str, action: str) -> bool:
        if self.open:
            return True
        if self.passwords is None:
            return False
        if self.policy is None:
            return user is not None
        return self.policy.grant(user, repository(name, action)) is not None

    async def verify(self, user: str, password: str, client: str) -> bool:
        """Check a password (rate-limited per client, as the API's sign-ins are)."""
        return self.passwords is not None and await self.passwords.verify(user, password, client)


def access_for(guard: Guard, token_service: TokenService | None) -> UiAccess:
    if isinstance(guard, OpenGuard):
        return UiAccess(open=True, passwords=None, policy=None)
    if isinstance(guard, HtpasswdGuard):
        return UiAccess(open=False, passwords=guard.passwords, policy=None)
    if token_service is not None:
        return UiAccess(open=False, passwords=token_service.passwords, policy=token_service.policy)
    return UiAccess(open=False, passwords=None, policy=None)


class Sessions:
    """Session cookies ``<user>.<expiry>.<hmac>`` (user base64url-encoded), signed with a
    key every worker shares, so any worker accepts a sign-in made through another."""

    def __init__(self, key: bytes) -> None:
        self.key = key

    def _sign(self, payload: str) -> str:
        mac = hmac.new(self.key, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def issue(self, user: str, now: float | None = None) -> str:
        expiry = int((now if now is not None else time.time()) + SESSION_SECONDS)
        encoded = base64.urlsafe_b64encode(user.encode()).decode().rstrip("=")
        payload = f"{encoded}.{expiry}"
        return f"{payload}.{self._sign(payload)}"

    def user(self, cookie: str | None, now: float | None = None) -> str | None:
        """The signed-in user, or None for a missing, forged or expired cookie."""
        if not cookie or cookie.count(".") != 2:
            return None
        encoded, expiry, signature = cookie.split(".")
        if not hmac.compare_digest(signature, self._sign(f"{encoded}.{expiry}")):
            return None
        if not expiry.isdigit() or int(expiry) < (now if now is not None else time.time()):
            return None
        try:
            return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None

    def form_token(self, user: str | None) -> str:
        """What a form that changes something must carry back: a forged cross-site form
        cannot know it, so the browser's cookie or Basic credentials alone do nothing."""
        return self._sign(f"form:{user or ''}")

    def check_form_token(self, user: str | None, token: str) -> bool:
        return hmac.compare_digest(token, self.form_token(user))
