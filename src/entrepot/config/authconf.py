"""The ``auth`` section: registry:2's access controllers and Entrepot's token service.

As in registry:2, ``auth`` names exactly one access controller (``auth: htpasswd``, a
bare name, is ``auth: {htpasswd: {}}``): ``htpasswd`` (HTTP basic auth, any listed user
may do everything) or ``token`` (bearer tokens from an external token server); Entrepot
adds ``builtin``, its own token service with access rules (the README shows an example;
the keys are declared below).

Differences from registry:2, all refusing rather than starting more open than asked:

* the files (``htpasswd.path``, ``token.rootcertbundle``, ``builtin.htpasswd``) must
  exist and be readable when the configuration is loaded, and an htpasswd file must hold
  only bcrypt entries; registry:2 creates a missing htpasswd file with a random password
  for a user "docker".
* ``auth.silly`` (registry:2's development mode: any credentials get in) is refused, and
  so is an access controller Entrepot does not know (registry:2 fails to start then).
* realms and ``service`` must not hold '"', '\\' or control characters: they are sent
  in the WWW-Authenticate header.
* ``token.autoredirect``, ``autoredirectpath``, ``jwks`` and ``signingalgorithms`` are
  reported as not implemented yet.

Paths are kept as written: a relative path is relative to the working directory, like
``storage.filesystem.rootdirectory``. Password hashes never appear in errors or warnings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from entrepot.config.errors import ConfigError
from entrepot.config.pemfiles import require_certificates
from entrepot.config.schema import At, absolute_url, key, scalar_text

__all__ = [
    "ACCESS_CONTROLLERS",
    "ACTIONS",
    "NO_USERS_WARNING",
    "AccessRuleConfig",
    "AuthConfig",
    "BuiltinAuthConfig",
    "HtpasswdAuthConfig",
    "TokenAuthConfig",
]

ACCESS_CONTROLLERS = ("htpasswd", "token", "builtin")
ACTIONS = ("pull", "push", "delete", "*")
_ANONYMOUS_SUBJECTS = ("anonymous", "*")
_RESERVED_USERS = ("anonymous", "authenticated", "*")
NO_USERS_WARNING = "auth.builtin has no users: only anonymous access rules can apply"
# The token specification: older clients assume a token lives at least 60 seconds.
_MIN_TOKEN_LIFETIME_S = 60.0
_BCRYPT = re.compile(r"\$2[aby]\$(?:0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
_HEADER_UNSAFE = re.compile(r'["\\\x00-\x1f\x7f]')


@dataclass(frozen=True)
class HtpasswdAuthConfig:
    """registry:2's ``auth.htpasswd``: HTTP basic auth; any listed user may do everything."""

    realm: str = key("realm", "", doc="the basic-auth realm (required)")
    path: Path = key("path", Path(), doc="the htpasswd file, bcrypt entries (required)")

    def checked(self, at: At) -> HtpasswdAuthConfig:
        realm = _header_value(
            at, "realm", _required(at, "realm", self.realm, "such as basic-realm")
        )
        what = "the htpasswd file, with bcrypt entries (htpasswd -B)"
        path = _readable_file(at.key("path"), _required(at, "path", self.path, what), htpasswd=True)
        return HtpasswdAuthConfig(realm=realm, path=path)


@dataclass(frozen=True)
class TokenAuthConfig:
    """registry:2's ``auth.token``: bearer tokens from an external token server, signed
    by a key certified in ``rootcertbundle``."""

    NOT_IMPLEMENTED: ClassVar = ("autoredirect", "autoredirectpath", "jwks", "signingalgorithms")
    realm: str = key("realm", "", doc="the token server's absolute URL (required)")
    service: str = key("service", "", doc="this registry's name in tokens (required)")
    issuer: str = key("issuer", "", doc="the token server's name in tokens (required)")
    rootcertbundle: Path = key(
        "rootcertbundle", Path(), doc="PEM certificates of the signers: x5c chain or kid (required)"
    )

    def checked(self, at: At) -> TokenAuthConfig:
        realm = _required(at, "realm", self.realm, "the token server's URL")
        realm = _header_value(at, "realm", _absolute_url(at.key("realm"), realm))
        service = _required(at, "service", self.service, "this registry")
        service = _header_value(at, "service", service)
        issuer = _required(at, "issuer", self.issuer, "the token server's name in its tokens")
        what = "a PEM file of the certificates that sign the tokens"
        bundle = _required(
            at,
            "rootcertbundle",
            self.rootcertbundle,
            what + ("; jwks is not implemented yet" if at.raw.get("jwks") else ""),
        )
        where = at.key("rootcertbundle")
        path = _readable_file(where, bundle)
        require_certificates(where, path, "it must hold the certificates that sign the tokens")
        return TokenAuthConfig(realm=realm, service=service, issuer=issuer, rootcertbundle=path)


@dataclass(frozen=True)
class AccessRuleConfig:
    """One rule of ``auth.builtin.access``: ``who`` may do ``actions`` on ``repositories``."""

    OWN: ClassVar = True
    who: tuple[str, ...] = key(
        "who", (), doc="user names, `group:<name>`, `anonymous`, `authenticated` or `*`"
    )
    repositories: tuple[str, ...] = key("repositories", (), doc="globs: `team/*`, `*`")
    actions: tuple[str, ...] = key("actions", (), doc="`pull`, `push`, `delete` or `*`")
    catalog: bool = key("catalog", False, doc="may also list all repositories")

    def checked(self, at: At) -> AccessRuleConfig:
        _names(at, "who", self.who, "user names, group:<name>, anonymous, authenticated or *")
        for subject in self.who:
            if subject == "group:":
                raise ConfigError(f"config key '{at.key('who')}': 'group:' needs a group name")
        _names(at, "repositories", self.repositories, "glob patterns such as team/* or *")
        _names(at, "actions", self.actions, "pull, push, delete or *")
        for action in self.actions:
            if action not in ACTIONS:
                raise ConfigError(
                    f"config key '{at.key('actions')}': unknown action {action!r}; "
                    f"actions are {', '.join(ACTIONS)}"
                )
        return self


def _parse_users(raw: Any, where: str) -> dict[str, str]:
    """``users``: user -> bcrypt hash. No message shows a value: it may be a hash, or a
    password written there by mistake."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config key '{where}' must be a mapping of user names to bcrypt hashes")
    users: dict[str, str] = {}
    for name, hashed in raw.items():
        user = "" if name is None else scalar_text(name)
        if not user or ":" in user or _HEADER_UNSAFE.search(user):
            raise ConfigError(
                f"config key '{where}': user name {user!r} must be non-empty, without ':' "
                "or control characters"
            )
        if user in _RESERVED_USERS:
            raise ConfigError(
                f"config key '{where}': {user!r} cannot be a user name: access rules use it "
                "for a kind of client"
            )
        if not isinstance(hashed, str) or not _BCRYPT.fullmatch(hashed.strip()):
            raise ConfigError(
                f"config key '{where}.{user}' must be a bcrypt hash ($2y$..., as "
                f"'htpasswd -nB {user}' prints after the ':'); the value is not shown"
            )
        users[user] = hashed.strip()
    return users


@dataclass(frozen=True)
class BuiltinAuthConfig:
    """``auth.builtin``: Entrepot's own token service (not in registry:2). Access rules
    are checked in order and what they grant adds up; nothing else is allowed."""

    OWN: ClassVar = True
    service: str = key("service", "entrepot", doc="this registry's name in tokens")
    issuer: str = key("issuer", "entrepot", doc="the issuer named in tokens")
    realm: str | None = key(
        "realm", None, doc="the token endpoint's absolute URL (default: `<registry>/auth/token`)"
    )
    htpasswd: Path | None = key("htpasswd", None, doc="users from an htpasswd file (bcrypt)")
    users: dict[str, str] = key(
        "users", factory=dict, secret=True, parse=_parse_users, doc="user: bcrypt hash"
    )
    groups: dict[str, tuple[str, ...]] = key("groups", factory=dict, doc="group: [members]")
    access: tuple[AccessRuleConfig, ...] = key("access", (), doc="the access rules")
    expiration_s: float = key("expiration", 300.0, doc="token lifetime")
    maxfailures: int = key(
        "maxfailures",
        10,
        doc="failed sign-ins a minute per user and client, counted by each worker process "
        "(with N workers a client may try up to N times this many before every worker "
        "refuses it)",
    )

    def checked(self, at: At) -> BuiltinAuthConfig:
        for name in ("service", "issuer"):
            if not getattr(self, name).strip():
                raise ConfigError(f"config key '{at.key(name)}' must not be blank")
        _header_value(at, "service", self.service)
        if self.realm is not None:
            _header_value(at, "realm", _absolute_url(at.key("realm"), self.realm))
        if self.htpasswd is not None:
            _readable_file(at.key("htpasswd"), self.htpasswd, htpasswd=True)
        for group, members in self.groups.items():
            if not group or any(not member.strip() for member in members):
                raise ConfigError(
                    f"config key '{at.key('groups.' + group)}': group and member names must "
                    "not be empty"
                )
        for index, rule in enumerate(self.access):
            for subject in rule.who:
                group = subject.removeprefix("group:")
                if subject.startswith("group:") and group not in self.groups:
                    at.warn(
                        f"config key '{at.key(f'access[{index}].who')}': group {group!r} is "
                        f"not defined in '{at.key('groups')}'; the rule applies to nobody "
                        "through it"
                    )
        if self.expiration_s == 0:
            raise ConfigError(f"config key '{at.key('expiration')}' must be more than 0")
        if self.expiration_s < _MIN_TOKEN_LIFETIME_S:
            at.warn(
                f"config key '{at.key('expiration')}': tokens living less than 60s may be "
                "used past their expiry by older clients (the token specification's minimum)"
            )
        if self.maxfailures < 1:
            raise ConfigError(f"config key '{at.key('maxfailures')}' must be at least 1")
        if self.htpasswd is None and not self.users:
            _warn_without_users(at, self.access)
        return self


@dataclass(frozen=True)
class AuthConfig:
    """``auth``: exactly one access controller (None when the section names none)."""

    OPEN: ClassVar = True  # a Go map in registry:2: ``accept`` refuses names it does not know
    htpasswd: HtpasswdAuthConfig | None = key("htpasswd", None, present=True, doc="")
    token: TokenAuthConfig | None = key("token", None, present=True, doc="")
    builtin: BuiltinAuthConfig | None = key("builtin", None, present=True, doc="")

    @classmethod
    def accept(cls, at: At) -> None:
        kinds = ["" if k is None else scalar_text(k) for k in at.raw]
        if len(kinds) > 1:
            raise ConfigError(
                f"config key 'auth' configures more than one access controller "
                f"({', '.join(sorted(kinds))}); configure exactly one, as registry:2 requires"
            )
        if kinds == ["silly"]:
            raise ConfigError(
                "auth.silly is a registry:2 development mode and is not supported; "
                "configure htpasswd, token or builtin"
            )
        if kinds and kinds[0] not in ACCESS_CONTROLLERS:
            raise ConfigError(
                f"auth.{kinds[0]} is not an access controller Entrepot knows "
                f"({', '.join(ACCESS_CONTROLLERS)}): refusing to start without the access "
                "control this config asks for"
            )

    def checked(self, at: At) -> AuthConfig | None:
        return None if self == AuthConfig() else self

    @property
    def mode(self) -> str:
        return next(name for name in ACCESS_CONTROLLERS if getattr(self, name) is not None)


def _names(at: At, name: str, values: tuple[str, ...], what: str) -> None:
    if not values:
        raise ConfigError(f"config key '{at.key(name)}' is required: a non-empty list of {what}")
    if any(not value.strip() for value in values):
        raise ConfigError(f"config key '{at.key(name)}' must not hold empty names")


def _warn_without_users(at: At, access: tuple[AccessRuleConfig, ...]) -> None:
    """Without users only anonymous rules can apply: say so when the rules expect more."""
    anonymous = any(s in _ANONYMOUS_SUBJECTS for rule in access for s in rule.who)
    others = any(s not in _ANONYMOUS_SUBJECTS for rule in access for s in rule.who)
    if anonymous and not others:
        return
    detail = (
        "; rules naming users, groups or authenticated clients never apply"
        if anonymous
        else "; there are none, so every request is refused"
    )
    at.warn(f"{NO_USERS_WARNING}{detail} (set '{at.key('htpasswd')}' or '{at.key('users')}')")


def _required(at: At, name: str, value: Any, what: str) -> str:
    text = str(value) if value not in ("", Path()) else ""
    if not text.strip():
        raise ConfigError(f"config key '{at.key(name)}' is required: {what}")
    return text


def _header_value(at: At, name: str, value: str) -> str:
    if _HEADER_UNSAFE.search(value):
        raise ConfigError(
            f"config key '{at.key(name)}': {value!r} must not hold '\"', '\\' or "
            "control characters (it is sent in the WWW-Authenticate header)"
        )
    return value


def _absolute_url(key_path: str, value: str) -> str:
    absolute_url(key_path, value, "https://registry.example.com/auth/token")
    return value


def _readable_file(key_path: str, text: str | Path, *, htpasswd: bool = False) -> Path:
    """The file at ``text`` (relative to the working directory), checked readable now."""
    path = Path(text)
    try:
        if not path.exists():
            hint = (
                f"; create it with: htpasswd -Bc {path} <user> (registry:2 would create it "
                "with a random password)"
                if htpasswd
                else ""
            )
            raise ConfigError(f"config key '{key_path}': {path} does not exist{hint}")
        if not path.is_file():
            raise ConfigError(f"config key '{key_path}': {path} is not a file")
        with path.open("rb") as file:
            content = file.read() if htpasswd else b""
    except OSError as exc:
        raise ConfigError(
            f"config key '{key_path}': cannot read {path}: {exc.strerror or type(exc).__name__}"
        ) from None
    if htpasswd:
        _check_htpasswd(key_path, path, content)
    return path


def _check_htpasswd(key_path: str, path: Path, content: bytes) -> None:
    """Each line is a user with a bcrypt hash, as the workers will read it (they would
    fail to start on anything else)."""
    # Here, not at the top: bcrypt, which the module imports, costs commands without auth.
    from entrepot.auth.htpasswd import HtpasswdError, parse_htpasswd

    try:
        parse_htpasswd(content, str(path))
    except HtpasswdError as exc:
        raise ConfigError(f"config key '{key_path}': {exc}") from None
