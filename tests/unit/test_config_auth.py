"""``auth`` in config.yml: registry:2's htpasswd and token, Entrepot's builtin token service."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from entrepot.config import (
    AccessRuleConfig,
    AuthConfig,
    BuiltinAuthConfig,
    Config,
    ConfigError,
    HtpasswdAuthConfig,
    TokenAuthConfig,
    load_config,
)
from tests.unit.config_files import tls_pair

MINIMAL = "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /srv/registry\n"
# A bcrypt hash as ``htpasswd -nB ci`` prints it (of "secret", cost 5).
HASH = "$2y$05$nCgL4EXiF15LNaaGqU/0iemlwu9BtHdM2LApKiM.Fg/6jpr4QNUXS"
NO_USERS = "auth.builtin has no users: only anonymous access rules can apply"


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A directory holding an htpasswd file and a certificate bundle; @D in test YAML."""
    (tmp_path / "htpasswd").write_text(f"alice:{HASH}\n")
    (tmp_path / "ca.pem").write_bytes(tls_pair(tmp_path)[0].read_bytes())  # one that loads
    return tmp_path


def load(tmp_path: Path, extra: str, env: dict[str, str] | None = None) -> Config:
    path = tmp_path / "config.yml"
    path.write_text(MINIMAL + textwrap.dedent(extra).replace("@D", str(tmp_path)))
    environ = {k: v.replace("@D", str(tmp_path)) for k, v in (env or {}).items()}
    return load_config(path, environ)


def error_of(tmp_path: Path, extra: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, extra, env)
    return str(info.value)


BUILTIN = f"""\
auth:
  builtin:
    service: registry.example.com
    issuer: entrepot-test
    realm: https://registry.example.com/auth/token
    htpasswd: @D/htpasswd
    users:
      ci: {HASH}
    groups:
      team: [alice, bob]
    expiration: 5m
    maxfailures: 3
    access:
      - who: [anonymous]
        repositories: ["docker.io/*", "ghcr.io/*"]
        actions: [pull]
      - who: ["group:team", ci]
        repositories: ["team/*"]
        actions: [pull, push]
      - who: [admin]
        repositories: ["*"]
        actions: ["*"]
        catalog: true
"""


def expected_builtin(d: Path) -> BuiltinAuthConfig:
    return BuiltinAuthConfig(
        service="registry.example.com",
        issuer="entrepot-test",
        realm="https://registry.example.com/auth/token",
        htpasswd=d / "htpasswd",
        users={"ci": HASH},
        groups={"team": ("alice", "bob")},
        access=(
            AccessRuleConfig(("anonymous",), ("docker.io/*", "ghcr.io/*"), ("pull",)),
            AccessRuleConfig(("group:team", "ci"), ("team/*",), ("pull", "push")),
            AccessRuleConfig(("admin",), ("*",), ("*",), catalog=True),
        ),
        expiration_s=300.0,
        maxfailures=3,
    )


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            # registry:2's documented htpasswd sample
            "auth:\n  htpasswd:\n    realm: basic-realm\n    path: @D/htpasswd\n",
            lambda d: AuthConfig(htpasswd=HtpasswdAuthConfig("basic-realm", d / "htpasswd")),
        ),
        (
            """\
            auth:
              token:
                realm: https://auth.example.com/token
                service: registry.example.com
                issuer: auth.example.com
                rootcertbundle: @D/ca.pem
            """,
            lambda d: AuthConfig(
                token=TokenAuthConfig(
                    realm="https://auth.example.com/token",
                    service="registry.example.com",
                    issuer="auth.example.com",
                    rootcertbundle=d / "ca.pem",
                )
            ),
        ),
        (BUILTIN, lambda d: AuthConfig(builtin=expected_builtin(d))),
        ("auth:\n", lambda d: None),
        ("auth: {}\n", lambda d: None),
        ("", lambda d: None),
    ],
)
def test_each_mode_parses(files: Path, extra: str, expected: object) -> None:
    config = load(files, extra)
    assert callable(expected)
    assert config.auth == expected(files)
    assert config.warnings == ()


def test_builtin_defaults_and_warning(files: Path) -> None:
    config = load(files, "auth:\n  builtin:\n")
    assert config.auth == AuthConfig(builtin=BuiltinAuthConfig())
    builtin = BuiltinAuthConfig()
    assert (builtin.service, builtin.issuer, builtin.realm, builtin.htpasswd) == (
        "entrepot",
        "entrepot",
        None,
        None,
    )
    assert (builtin.users, builtin.groups, builtin.access) == ({}, {}, ())
    assert (builtin.expiration_s, builtin.maxfailures) == (300.0, 10)
    assert len(config.warnings) == 1
    assert config.warnings[0].startswith(NO_USERS)
    assert "every request is refused" in config.warnings[0]


def test_builtin_users_are_kept_out_of_repr(files: Path) -> None:
    config = load(files, BUILTIN)
    assert HASH not in repr(config)
    assert "ci" in repr(config)  # in the access rules, not the users


@pytest.mark.parametrize(
    ("extra", "warned"),
    [
        # only anonymous rules, no users: a public read-only registry; nothing to say
        (
            'auth:\n  builtin:\n    access:\n      - {who: [anonymous], repositories: ["*"], '
            "actions: [pull]}\n",
            None,
        ),
        (
            'auth:\n  builtin:\n    access:\n      - {who: ["*"], repositories: ["*"], '
            "actions: [pull]}\n",
            None,
        ),
        # rules naming signed-in clients cannot apply without users
        (
            'auth:\n  builtin:\n    access:\n      - {who: [anonymous], repositories: ["*"], '
            'actions: [pull]}\n      - {who: [authenticated], repositories: ["*"], '
            "actions: [push]}\n",
            "never apply",
        ),
        (
            'auth:\n  builtin:\n    access:\n      - {who: [admin], repositories: ["*"], '
            'actions: ["*"]}\n',
            "every request is refused",
        ),
        # users from the file or the config: no warning
        ("auth:\n  builtin:\n    htpasswd: @D/htpasswd\n", None),
        (f"auth:\n  builtin:\n    users:\n      ci: {HASH}\n", None),
    ],
)
def test_builtin_without_users_warns(files: Path, extra: str, warned: str | None) -> None:
    warnings = load(files, extra).warnings
    if warned is None:
        assert warnings == ()
    else:
        assert len(warnings) == 1
        assert warnings[0].startswith(NO_USERS)
        assert warned in warnings[0]


@pytest.mark.parametrize(
    ("extra", "warning"),
    [
        (
            "auth:\n  htpasswd:\n    realm: r\n    path: @D/htpasswd\n    colour: red\n",
            "config key 'auth.htpasswd.colour' is not a registry:2 configuration key",
        ),
        (
            "auth:\n  token:\n    realm: https://a/t\n    service: s\n    issuer: i\n"
            "    rootcertbundle: @D/ca.pem\n    jwks: /jwks.json\n",
            "config key 'auth.token.jwks' is not implemented yet",
        ),
        (
            "auth:\n  token:\n    realm: https://a/t\n    service: s\n    issuer: i\n"
            "    rootcertbundle: @D/ca.pem\n    autoredirect: true\n",
            "config key 'auth.token.autoredirect' is not implemented yet",
        ),
        (
            "auth:\n  builtin:\n    htpasswd: @D/htpasswd\n    access:\n"
            '      - {who: ["group:tema"], repositories: ["*"], actions: [pull]}\n',
            "group 'tema' is not defined in 'auth.builtin.groups'",
        ),
        (
            "auth:\n  builtin:\n    htpasswd: @D/htpasswd\n    expiration: 30s\n",
            "config key 'auth.builtin.expiration': tokens living less than 60s",
        ),
    ],
)
def test_warnings(files: Path, extra: str, warning: str) -> None:
    warnings = load(files, extra).warnings
    assert len(warnings) == 1
    assert warning in warnings[0]


def test_autoredirect_false_asks_for_nothing(files: Path) -> None:
    extra = (
        "auth:\n  token:\n    realm: https://a/t\n    service: s\n    issuer: i\n"
        "    rootcertbundle: @D/ca.pem\n    autoredirect: false\n"
    )
    assert load(files, extra).warnings == ()


def test_env_overrides_htpasswd_path(files: Path) -> None:
    (files / "other").write_text(f"bob:{HASH}\n")
    extra = "auth:\n  htpasswd:\n    realm: basic-realm\n    path: /nonexistent/htpasswd\n"
    config = load(files, extra, {"REGISTRY_AUTH_HTPASSWD_PATH": "@D/other"})
    assert config.auth == AuthConfig(htpasswd=HtpasswdAuthConfig("basic-realm", files / "other"))
    assert config.warnings == ()


@pytest.mark.parametrize(
    ("extra", "env", "expected"),
    [
        (  # the whole section from the environment, as registry:2's docs show it
            "",
            {
                "REGISTRY_AUTH": "htpasswd",
                "REGISTRY_AUTH_HTPASSWD_REALM": "Registry Realm",
                "REGISTRY_AUTH_HTPASSWD_PATH": "@D/htpasswd",
            },
            lambda d: AuthConfig(htpasswd=HtpasswdAuthConfig("Registry Realm", d / "htpasswd")),
        ),
        (  # REGISTRY_AUTH replaces what the file configured
            "auth:\n  token:\n    realm: https://a/t\n",
            {
                "REGISTRY_AUTH": "htpasswd",
                "REGISTRY_AUTH_HTPASSWD_REALM": "r",
                "REGISTRY_AUTH_HTPASSWD_PATH": "@D/htpasswd",
            },
            lambda d: AuthConfig(htpasswd=HtpasswdAuthConfig("r", d / "htpasswd")),
        ),
        (
            "",
            {
                "REGISTRY_AUTH_TOKEN_REALM": "https://auth.example.com/token",
                "REGISTRY_AUTH_TOKEN_SERVICE": "2024",  # a string field: stays text
                "REGISTRY_AUTH_TOKEN_ISSUER": "issuer",
                "REGISTRY_AUTH_TOKEN_ROOTCERTBUNDLE": "@D/ca.pem",
            },
            lambda d: AuthConfig(
                token=TokenAuthConfig(
                    "https://auth.example.com/token", "2024", "issuer", d / "ca.pem"
                )
            ),
        ),
        (
            "auth:\n  builtin:\n    groups:\n      team: [alice]\n",
            {
                "REGISTRY_AUTH_BUILTIN_USERS_CI": HASH,
                "REGISTRY_AUTH_BUILTIN_GROUPS_TEAM_1": "bob",
                "REGISTRY_AUTH_BUILTIN_ACCESS_0_WHO": "[ci, 'group:team']",
                "REGISTRY_AUTH_BUILTIN_ACCESS_0_REPOSITORIES_0": "team/*",
                "REGISTRY_AUTH_BUILTIN_ACCESS_0_ACTIONS": "[pull, push]",
                "REGISTRY_AUTH_BUILTIN_ACCESS_0_CATALOG": "true",
                "REGISTRY_AUTH_BUILTIN_EXPIRATION": "10m",
                "REGISTRY_AUTH_BUILTIN_MAXFAILURES": "5",
            },
            lambda d: AuthConfig(
                builtin=BuiltinAuthConfig(
                    users={"ci": HASH},
                    groups={"team": ("alice", "bob")},
                    access=(
                        AccessRuleConfig(
                            ("ci", "group:team"), ("team/*",), ("pull", "push"), catalog=True
                        ),
                    ),
                    expiration_s=600.0,
                    maxfailures=5,
                )
            ),
        ),
    ],
)
def test_env_overrides(files: Path, extra: str, env: dict[str, str], expected: object) -> None:
    config = load(files, extra, env)
    assert callable(expected)
    assert config.auth == expected(files)
    assert config.warnings == ()


def test_relative_paths_are_relative_to_the_working_directory(
    files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(files)
    config = load(files, "auth:\n  htpasswd:\n    realm: r\n    path: htpasswd\n")
    assert config.auth == AuthConfig(htpasswd=HtpasswdAuthConfig("r", Path("htpasswd")))
    monkeypatch.chdir("/")
    assert "does not exist" in error_of(
        files, "auth:\n  htpasswd:\n    realm: r\n    path: htpasswd\n"
    )


RULE = "auth:\n  builtin:\n    access:\n      - "
TOKEN = (
    "auth:\n  token:\n    realm: {realm}\n    service: s\n    issuer: i\n    rootcertbundle: {ca}\n"
)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        # one access controller, as registry:2 requires
        (
            "auth:\n  htpasswd: {realm: r, path: @D/htpasswd}\n  token: {realm: https://a/t}\n",
            "config key 'auth' configures more than one access controller (htpasswd, token)",
        ),
        ("auth:\n  builtin:\n  token:\n", "more than one access controller (builtin, token)"),
        ("auth:\n  silly:\n", "auth.silly is a registry:2 development mode and is not supported"),
        ("auth:\n  silly: {realm: r, service: s}\n", "auth.silly is a registry:2 development"),
        ("auth: silly\n", "auth.silly is a registry:2 development mode"),
        ("auth:\n  ldap: {url: x}\n", "auth.ldap is not an access controller Entrepot knows"),
        ("auth: [htpasswd]\n", "config key 'auth' must be a mapping"),
        # htpasswd
        ("auth: htpasswd\n", "config key 'auth.htpasswd.realm' is required"),
        ("auth:\n  htpasswd: {path: @D/htpasswd}\n", "'auth.htpasswd.realm' is required"),
        ("auth:\n  htpasswd: {realm: r}\n", "config key 'auth.htpasswd.path' is required"),
        (
            "auth:\n  htpasswd: {realm: r, path: @D/missing}\n",
            "config key 'auth.htpasswd.path': @D/missing does not exist; create it with: "
            "htpasswd -Bc @D/missing <user>",
        ),
        ("auth:\n  htpasswd: {realm: r, path: @D}\n", "'auth.htpasswd.path': @D is not a file"),
        (
            "auth:\n  htpasswd: {realm: 'a\"b', path: @D/htpasswd}\n",
            "must not hold '\"', '\\' or control characters",
        ),
        # token
        (TOKEN.format(realm="https://a/t", ca="@D/nope.pem"), "@D/nope.pem does not exist"),
        (TOKEN.format(realm="https://a/t", ca="@D/htpasswd"), "holds no PEM certificate"),
        (TOKEN.format(realm="/auth/token", ca="@D/ca.pem"), "not an absolute http or https URL"),
        (TOKEN.format(realm="https://a:x/t", ca="@D/ca.pem"), "has an invalid port"),
        ("auth:\n  token: {realm: https://a/t}\n", "'auth.token.service' is required"),
        (
            "auth:\n  token: {realm: https://a/t, service: s, issuer: i, jwks: /j}\n",
            "'auth.token.rootcertbundle' is required: a PEM file of the certificates that "
            "sign the tokens; jwks is not implemented yet",
        ),
        # builtin
        ("auth:\n  builtin: {htpasswd: @D/missing}\n", "'auth.builtin.htpasswd': @D/missing"),
        ("auth:\n  builtin: {realm: /auth/token}\n", "'auth.builtin.realm': '/auth/token' is not"),
        ("auth:\n  builtin: {service: '  '}\n", "'auth.builtin.service' must not be blank"),
        ("auth:\n  builtin: {maxfailures: 0}\n", "'auth.builtin.maxfailures' must be at least 1"),
        ("auth:\n  builtin: {maxfailures: many}\n", "'auth.builtin.maxfailures' must be an int"),
        ("auth:\n  builtin: {expiration: 0}\n", "'auth.builtin.expiration' must be more than 0"),
        ("auth:\n  builtin: {expiration: 5 min}\n", "config key 'auth.builtin.expiration'"),
        (
            "auth:\n  builtin: {groups: {team: alice}}\n",
            "'auth.builtin.groups.team' must be a list",
        ),
        ("auth:\n  builtin: {users: {anonymous: x}}\n", "'anonymous' cannot be a user name"),
        (
            "auth:\n  builtin: {users: {'a:b': x}}\n",
            "user name 'a:b' must be non-empty, without ':'",
        ),
        (
            "auth:\n  builtin: {access: {who: [a]}}\n",
            "'auth.builtin.access' must be a list, each item with who, repositories, actions",
        ),
        (
            RULE + "{who: [a], repositories: ['*'], actions: [pul]}\n",
            "config key 'auth.builtin.access[0].actions': unknown action 'pul'; "
            "actions are pull, push, delete, *",
        ),
        (
            RULE + "{who: [a], repositories: ['*'], actions: PULL}\n",
            "'auth.builtin.access[0].actions' must be a list",
        ),
        (
            RULE + "{who: [], repositories: ['*'], actions: [pull]}\n",
            "config key 'auth.builtin.access[0].who' is required: a non-empty list",
        ),
        (
            RULE + "{who: [a], actions: [pull]}\n",
            "config key 'auth.builtin.access[0].repositories' is required: a non-empty list",
        ),
        (
            RULE + "{who: [a], repositories: ['*']}\n",
            "config key 'auth.builtin.access[0].actions' is required: a non-empty list",
        ),
        (
            RULE + "{who: ['group:'], repositories: ['*'], actions: [pull]}\n",
            "'group:' needs a group name",
        ),
        (
            RULE + "{who: [a], repositories: ['*'], actions: [pull], catalog: 'yes'}\n",
            "'auth.builtin.access[0].catalog' must be true or false",
        ),
        ("auth:\n  builtin:\n    access:\n      - just-a-string\n", "access[0]' must be a mapping"),
        # auth.builtin is Entrepot's own: a typo there is an error, with a suggestion.
        (
            "auth:\n  builtin:\n    htpasswd: @D/htpasswd\n    access:\n"
            '      - {who: [a], repositories: ["*"], actons: [pull]}\n',
            "config key 'auth.builtin.access[0].actons' is not an Entrepot configuration key "
            "(did you mean 'auth.builtin.access[0].actions'?)",
        ),
        (
            "auth:\n  builtin:\n    htpasswd: @D/htpasswd\n    expiraton: 5m\n",
            "(did you mean 'auth.builtin.expiration'?)",
        ),
    ],
)
def test_errors(files: Path, extra: str, message: str) -> None:
    assert message.replace("@D", str(files)) in error_of(files, extra)


@pytest.mark.parametrize(
    ("extra", "env"),
    [
        ("auth: silly\n", {}),
        ("", {"REGISTRY_AUTH": "silly"}),
        ("", {"REGISTRY_AUTH_SILLY_REALM": "r"}),
    ],
)
def test_silly_is_refused_from_file_and_environment(
    files: Path, extra: str, env: dict[str, str]
) -> None:
    assert error_of(files, extra, env).startswith(
        "auth.silly is a registry:2 development mode and is not supported"
    )


def test_an_unknown_access_controller_from_the_environment_is_refused(files: Path) -> None:
    message = error_of(files, "", {"REGISTRY_AUTH_LDAP_URL": "ldap://x"})
    assert message.startswith("auth.ldap is not an access controller Entrepot knows")


def test_env_adding_a_second_mode_is_refused(files: Path) -> None:
    extra = "auth:\n  htpasswd:\n    realm: r\n    path: @D/htpasswd\n"
    message = error_of(files, extra, {"REGISTRY_AUTH_TOKEN_REALM": "https://a/t"})
    assert "more than one access controller (htpasswd, token)" in message


PLAINTEXT = "hunter2-S3cret"


@pytest.mark.parametrize(
    "value",
    [
        PLAINTEXT,  # a password where the hash belongs
        "$1$abcdefgh$" + "x" * 22,  # an MD5 crypt hash (htpasswd without -B)
        HASH[:-1],  # truncated
        HASH.replace("$05$", "$99$"),
        "{SHA}" + PLAINTEXT,
        "[" + PLAINTEXT + "]",  # a list
        "{x: " + PLAINTEXT + "}",  # a mapping
    ],
)
def test_a_bad_hash_is_refused_without_showing_it(files: Path, value: str) -> None:
    extra = f"auth:\n  builtin:\n    users:\n      ci: '{value}'\n"
    if value.startswith(("[", "{x")):
        extra = f"auth:\n  builtin:\n    users:\n      ci: {value}\n"
    message = error_of(files, extra)
    assert "config key 'auth.builtin.users.ci' must be a bcrypt hash" in message
    assert value not in message
    assert PLAINTEXT not in message
    assert "x" * 22 not in message


def test_a_bad_hash_from_the_environment_is_not_shown(files: Path) -> None:
    message = error_of(files, "auth:\n  builtin:\n", {"REGISTRY_AUTH_BUILTIN_USERS_CI": PLAINTEXT})
    assert "'auth.builtin.users.ci' must be a bcrypt hash" in message
    assert PLAINTEXT not in message
    # a value that is not even YAML: the parser's message would quote it
    bad_yaml = PLAINTEXT + ": [unclosed"
    message = error_of(files, "", {"REGISTRY_AUTH_BUILTIN_USERS_CI": bad_yaml})
    assert "REGISTRY_AUTH_BUILTIN_USERS_CI: value is not valid YAML" in message
    assert PLAINTEXT not in message
    for name in ("REGISTRY_AUTH", "REGISTRY_AUTH_BUILTIN", "REGISTRY_AUTH_BUILTIN_USERS"):
        message = error_of(files, "", {name: "{users: {ci: " + bad_yaml + "}"})
        assert f"{name}: value is not valid YAML" in message
        assert PLAINTEXT not in message


def test_users_that_are_not_a_mapping_are_not_shown(files: Path) -> None:
    message = error_of(files, f"auth:\n  builtin:\n    users: [ci, '{PLAINTEXT}']\n")
    assert "'auth.builtin.users' must be a mapping of user names to bcrypt hashes" in message
    assert PLAINTEXT not in message


@pytest.mark.parametrize("prefix", ["$2y$", "$2a$", "$2b$"])
def test_bcrypt_prefixes(files: Path, prefix: str) -> None:
    value = prefix + HASH[4:]
    config = load(files, f"auth:\n  builtin:\n    users:\n      ci: '{value}'\n")
    assert config.auth is not None and config.auth.builtin is not None
    assert config.auth.builtin.users == {"ci": value}
