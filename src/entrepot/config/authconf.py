"""The ``auth`` section: registry:2's access controllers and Entrepot's token service.

As in registry:2, ``auth`` names exactly one access controller (``auth: htpasswd``, a
bare name, is ``auth: {htpasswd: {}}``)::

    auth:
      htpasswd:                   # HTTP basic auth: any listed user may do everything
        realm: basic-realm
        path: /auth/htpasswd      # bcrypt entries, as htpasswd -B writes them

    auth:
      token:                      # bearer tokens from an external token server
        realm: https://auth.example.com/token
        service: registry.example.com
        issuer: auth.example.com
        rootcertbundle: /certs/token-signers.pem

Entrepot adds ``builtin``, its own token service with access rules::

    auth:
      builtin:
        service: entrepot                                # the defaults
        issuer: entrepot
        realm: https://registry.example.com/auth/token   # default: <registry>/auth/token
        htpasswd: /etc/entrepot/htpasswd                 # users, and/or:
        users:
          ci: $2y$05$...                                 # bcrypt hash (htpasswd -nB ci)
        groups:
          team: [alice, bob]
        expiration: 5m                                   # token lifetime
        maxfailures: 10                                  # failed sign-ins a minute per client
        access:                                          # what the rules grant adds up
          - who: [anonymous]                             # or a user, group:<name>,
            repositories: ["docker.io/*"]                #   authenticated, "*"
            actions: [pull]                              # pull, push, delete, "*"
          - who: [admin]
            repositories: ["*"]
            actions: ["*"]
            catalog: true                                # may list all repositories

Differences from registry:2, all refusing rather than starting more open than asked:

* the files (``htpasswd.path``, ``token.rootcertbundle``, ``builtin.htpasswd``) must
  exist and be readable when the configuration is loaded; registry:2 creates a missing
  htpasswd file with a random password for a user "docker".
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
from pathlib import Path

from entrepot.config.errors import ConfigError
from entrepot.config.model import (
    AccessRuleConfig,
    AuthConfig,
    BuiltinAuthConfig,
    HtpasswdAuthConfig,
    TokenAuthConfig,
)
from entrepot.config.sections import Section, absolute_url, scalar_text

__all__ = ["ACCESS_CONTROLLERS", "ACTIONS", "NO_USERS_WARNING", "parse_auth"]

ACCESS_CONTROLLERS = ("htpasswd", "token", "builtin")
ACTIONS = ("pull", "push", "delete", "*")
_ANONYMOUS_SUBJECTS = ("anonymous", "*")
_RESERVED_USERS = ("anonymous", "authenticated", "*")
NO_USERS_WARNING = "auth.builtin has no users: only anonymous access rules can apply"
# The token specification: older clients assume a token lives at least 60 seconds.
_MIN_TOKEN_LIFETIME_S = 60.0
_BCRYPT = re.compile(r"\$2[aby]\$(?:0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
_HEADER_UNSAFE = re.compile(r'["\\\x00-\x1f\x7f]')


def parse_auth(section: Section) -> AuthConfig | None:
    """Read ``auth``; None when it names no access controller. Raises ``ConfigError``."""
    kinds = ["" if k is None else scalar_text(k) for k in section.data]
    if not kinds:
        return None
    if len(kinds) > 1:
        raise ConfigError(
            f"config key 'auth' configures more than one access controller "
            f"({', '.join(sorted(kinds))}); configure exactly one, as registry:2 requires"
        )
    kind = kinds[0]
    if kind == "silly":
        raise ConfigError(
            "auth.silly is a registry:2 development mode and is not supported; "
            "configure htpasswd, token or builtin"
        )
    if kind not in ACCESS_CONTROLLERS:
        raise ConfigError(
            f"auth.{kind} is not an access controller Entrepot knows "
            f"({', '.join(ACCESS_CONTROLLERS)}): refusing to start without the access "
            "control this config asks for"
        )
    params = section.section(kind)
    if kind == "htpasswd":
        auth = AuthConfig(htpasswd=_htpasswd(params))
    elif kind == "token":
        auth = AuthConfig(token=_token(params))
    else:
        auth = AuthConfig(builtin=_builtin(params))
    params.finish()
    section.finish()
    return auth


def _htpasswd(section: Section) -> HtpasswdAuthConfig:
    realm = _header_value(section, "realm", _required(section, "realm", "such as basic-realm"))
    path = _required(section, "path", "the htpasswd file, with bcrypt entries (htpasswd -B)")
    return HtpasswdAuthConfig(
        realm=realm, path=_readable_file(section.key("path"), path, htpasswd=True)
    )


def _token(section: Section) -> TokenAuthConfig:
    realm = _required(section, "realm", "the token server's URL")
    realm = _header_value(section, "realm", _absolute_url(section.key("realm"), realm))
    service = _header_value(section, "service", _required(section, "service", "this registry"))
    issuer = _required(section, "issuer", "the token server's name in its tokens")
    jwks = section.data.get("jwks")
    bundle = _required(
        section,
        "rootcertbundle",
        "a PEM file of the certificates that sign the tokens"
        + ("; jwks is not implemented yet" if jwks else ""),
    )
    path = _readable_file(section.key("rootcertbundle"), bundle)
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"config key '{section.key('rootcertbundle')}': cannot read {path}: "
            f"{exc.strerror or type(exc).__name__}"
        ) from None
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise ConfigError(
            f"config key '{section.key('rootcertbundle')}': {path} holds no PEM certificate"
        )
    return TokenAuthConfig(realm=realm, service=service, issuer=issuer, rootcertbundle=path)


def _builtin(section: Section) -> BuiltinAuthConfig:
    default = BuiltinAuthConfig()
    service = _header_value(section, "service", _optional(section, "service", default.service))
    issuer = _optional(section, "issuer", default.issuer)
    realm = section.get_str("realm")
    if realm is not None:
        realm = _header_value(section, "realm", _absolute_url(section.key("realm"), realm))
    htpasswd_text = section.get_str("htpasswd")
    htpasswd = (
        None
        if htpasswd_text is None
        else _readable_file(section.key("htpasswd"), htpasswd_text, htpasswd=True)
    )
    users = _users(section)
    groups = _groups(section)
    access = _access(section, groups)
    expiration_s = section.duration("expiration", default.expiration_s)
    if expiration_s == 0:
        raise ConfigError(f"config key '{section.key('expiration')}' must be more than 0")
    if expiration_s < _MIN_TOKEN_LIFETIME_S:
        section.warnings.append(
            f"config key '{section.key('expiration')}': tokens living less than 60s may be "
            "used past their expiry by older clients (the token specification's minimum)"
        )
    maxfailures = section.get_int("maxfailures", default.maxfailures)
    if maxfailures < 1:
        raise ConfigError(f"config key '{section.key('maxfailures')}' must be at least 1")
    if htpasswd is None and not users:
        _warn_without_users(section, access)
    return BuiltinAuthConfig(
        service=service,
        issuer=issuer,
        realm=realm,
        htpasswd=htpasswd,
        users=users,
        groups=groups,
        access=access,
        expiration_s=expiration_s,
        maxfailures=maxfailures,
    )


def _users(section: Section) -> dict[str, str]:
    """``users``: user -> bcrypt hash. No message shows a value: it may be a hash, or a
    password written there by mistake."""
    key = section.key("users")
    raw = section.take("users")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config key '{key}' must be a mapping of user names to bcrypt hashes")
    users: dict[str, str] = {}
    for name, hashed in raw.items():
        user = "" if name is None else scalar_text(name)
        if not user or ":" in user or _HEADER_UNSAFE.search(user):
            raise ConfigError(
                f"config key '{key}': user name {user!r} must be non-empty, without ':' "
                "or control characters"
            )
        if user in _RESERVED_USERS:
            raise ConfigError(
                f"config key '{key}': {user!r} cannot be a user name: access rules use it "
                "for a kind of client"
            )
        if not isinstance(hashed, str) or not _BCRYPT.fullmatch(hashed.strip()):
            raise ConfigError(
                f"config key '{key}.{user}' must be a bcrypt hash ($2y$..., as "
                f"'htpasswd -nB {user}' prints after the ':'); the value is not shown"
            )
        users[user] = hashed.strip()
    return users


def _groups(section: Section) -> dict[str, tuple[str, ...]]:
    groups_section = section.section("groups")
    groups: dict[str, tuple[str, ...]] = {}
    for name in groups_section.data:
        group = "" if name is None else scalar_text(name)
        members = groups_section.str_list(name)
        if not group or any(not member.strip() for member in members):
            raise ConfigError(
                f"config key '{groups_section.key(group)}': group and member names must "
                "not be empty"
            )
        groups[group] = tuple(members)
    groups_section.finish()
    return groups


def _access(section: Section, groups: dict[str, tuple[str, ...]]) -> tuple[AccessRuleConfig, ...]:
    key = section.key("access")
    raw = section.take("access")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(
            f"config key '{key}' must be a list of rules, each with who, repositories and actions"
        )
    rules: list[AccessRuleConfig] = []
    for index, entry in enumerate(raw):
        rule = Section(entry, f"{key}[{index}]", section.warnings)
        who = _names(rule, "who", "user names, group:<name>, anonymous, authenticated or *")
        for subject in who:
            if not subject.startswith("group:"):
                continue
            group = subject[len("group:") :]
            if not group:
                raise ConfigError(f"config key '{rule.key('who')}': 'group:' needs a group name")
            if group not in groups:
                rule.warnings.append(
                    f"config key '{rule.key('who')}': group {group!r} is not defined in "
                    f"'{section.key('groups')}'; the rule applies to nobody through it"
                )
        repositories = _names(rule, "repositories", "glob patterns such as team/* or *")
        actions = _names(rule, "actions", "pull, push, delete or *")
        for action in actions:
            if action not in ACTIONS:
                raise ConfigError(
                    f"config key '{rule.key('actions')}': unknown action {action!r}; "
                    f"actions are {', '.join(ACTIONS)}"
                )
        rules.append(
            AccessRuleConfig(
                who=who,
                repositories=repositories,
                actions=actions,
                catalog=rule.get_bool("catalog", False),
            )
        )
        rule.finish()
    return tuple(rules)


def _names(rule: Section, name: str, what: str) -> tuple[str, ...]:
    values = rule.str_list(name)
    if not values:
        raise ConfigError(f"config key '{rule.key(name)}' is required: a non-empty list of {what}")
    if any(not value.strip() for value in values):
        raise ConfigError(f"config key '{rule.key(name)}' must not hold empty names")
    return tuple(values)


def _warn_without_users(section: Section, access: tuple[AccessRuleConfig, ...]) -> None:
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
    section.warnings.append(
        f"{NO_USERS_WARNING}{detail} (set '{section.key('htpasswd')}' or '{section.key('users')}')"
    )


def _required(section: Section, name: str, what: str) -> str:
    value = section.get_str(name)
    if value is None or not value.strip():
        raise ConfigError(f"config key '{section.key(name)}' is required: {what}")
    return value


def _optional(section: Section, name: str, default: str) -> str:
    value = section.get_str(name)
    if value is None:
        return default
    if not value.strip():
        raise ConfigError(f"config key '{section.key(name)}' must not be blank")
    return value


def _header_value(section: Section, name: str, value: str) -> str:
    if _HEADER_UNSAFE.search(value):
        raise ConfigError(
            f"config key '{section.key(name)}': {value!r} must not hold '\"', '\\' or "
            "control characters (it is sent in the WWW-Authenticate header)"
        )
    return value


def _absolute_url(key: str, value: str) -> str:
    absolute_url(key, value, "https://registry.example.com/auth/token")
    return value


def _readable_file(key: str, text: str, *, htpasswd: bool = False) -> Path:
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
            raise ConfigError(f"config key '{key}': {path} does not exist{hint}")
        if not path.is_file():
            raise ConfigError(f"config key '{key}': {path} is not a file")
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"config key '{key}': cannot read {path}: {exc.strerror or type(exc).__name__}"
        ) from None
    return path
