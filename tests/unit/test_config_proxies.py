"""The cache's upstreams in config.yml: registry:2's ``proxy`` and Entrepot's ``proxies``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from entrepot.config import ConfigError, ProxyUpstreamConfig, load_config
from tests.unit.config_files import error_of, load

SECRET = "hunter2-S3cret"
WEEK = 168 * 3600.0


@pytest.mark.parametrize(
    ("remoteurl", "alias", "stored"),
    [
        ("https://registry-1.docker.io", None, "https://registry-1.docker.io"),
        ("https://index.docker.io/", None, "https://index.docker.io"),
        ("https://docker.io", None, "https://docker.io"),
        # Docker Hub mirrors, as the seed's operator used them.
        ("https://so8cv4zt.mirror.aliyuncs.com", "so8cv4zt.mirror.aliyuncs.com", None),
        ("https://registry.docker-cn.com", "registry.docker-cn.com", None),
        ("https://ghcr.io", "ghcr.io", "https://ghcr.io"),
        ("http://localhost:5000", "localhost:5000", "http://localhost:5000"),
        ("HTTPS://Quay.IO:8443/", "quay.io:8443", "https://Quay.IO:8443"),
        ("https://[::1]:5000", "[::1]:5000", "https://[::1]:5000"),
    ],
)
def test_registry2_proxy_block_is_the_docker_hub_mirror(
    tmp_path: Path, remoteurl: str, alias: str | None, stored: str | None
) -> None:
    """Docker's registry-mirrors and containerd's ?ns=docker.io reach registry:2's proxy
    block whatever its remoteurl; the remoteurl's host still names it too."""
    config = load(tmp_path, f"proxy:\n  remoteurl: {remoteurl}\n")
    aliases = (alias,) if alias else ()
    assert config.proxies == (
        ProxyUpstreamConfig(
            host="docker.io",
            remoteurls=(stored or remoteurl,),
            mirror=True,
            ttl_s=WEEK,  # registry:2's default proxy.ttl
            aliases=aliases,
        ),
    )
    assert config.warnings == ()


@pytest.mark.parametrize(
    ("remoteurl", "entries", "expected"),
    [
        # A docker.io entry keeps docker.io: the block stands for its remoteurl host.
        (
            "https://mirror.example",
            ["docker.io", "quay.io"],
            [("mirror.example", True, ()), ("docker.io", False, ()), ("quay.io", False, ())],
        ),
        # An entry for the remoteurl's host keeps that host: the block has no alias.
        ("https://ghcr.io", ["ghcr.io"], [("docker.io", True, ()), ("ghcr.io", False, ())]),
    ],
)
def test_proxies_entries_keep_their_hosts_beside_the_proxy_block(
    tmp_path: Path, remoteurl: str, entries: list[str], expected: list[tuple[Any, ...]]
) -> None:
    listed = "".join(f"  - {{host: {h}, remoteurl: 'https://{h}'}}\n" for h in entries)
    config = load(tmp_path, f"proxy:\n  remoteurl: {remoteurl}\nproxies:\n{listed}")
    assert [(u.host, u.mirror, u.aliases) for u in config.proxies] == expected


def test_registry2_proxy_block_with_credentials_and_ttl(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        f"""\
        proxy:
          remoteurl: https://registry-1.docker.io
          username: me
          password: {SECRET}
          ttl: 24h
        """,
    )
    (upstream,) = config.proxies
    assert (upstream.host, upstream.mirror, upstream.allow_push) == ("docker.io", True, False)
    assert (upstream.username, upstream.password) == ("me", SECRET)
    assert (upstream.tag_ttl_s, upstream.negative_ttl_s) == (60.0, 15.0)
    assert upstream.ttl_s == 24 * 3600  # honoured: cached images not pulled for a day expire
    assert config.warnings == ()


@pytest.mark.parametrize(
    ("extra", "ttl"),
    [
        ("", 168 * 3600.0),  # registry:2's default: a week
        ("  ttl: 0\n", 0.0),  # no expiry
        ("  ttl: 90m\n", 5400.0),
    ],
)
def test_registry2_proxy_ttl_has_registry2s_default(tmp_path: Path, extra: str, ttl: float) -> None:
    config = load(tmp_path, "proxy:\n  remoteurl: https://ghcr.io\n" + extra)
    assert [u.ttl_s for u in config.proxies] == [ttl]
    assert config.warnings == ()


def test_proxies_entries_expire_only_when_asked(tmp_path: Path) -> None:
    listed = "proxies:\n  - {host: ghcr.io, remoteurl: 'https://ghcr.io', ttl: 12h}\n"
    listed += "  - {host: quay.io, remoteurl: 'https://quay.io'}\n"
    config = load(tmp_path, listed)
    assert [u.ttl_s for u in config.proxies] == [12 * 3600.0, 0.0]


@pytest.mark.parametrize(
    ("extra", "warning"),
    [
        ("  ttl: 0\n", None),
        ("  ttl: 1h\n", None),
        ("  colour: red\n", "'proxy.colour' is not a registry:2 configuration key"),
        ("  passwordfile: /x\n", "'proxy.passwordfile' is not a registry:2 configuration key"),
    ],
)
def test_registry2_proxy_block_warnings(tmp_path: Path, extra: str, warning: str | None) -> None:
    config = load(tmp_path, "proxy:\n  remoteurl: https://ghcr.io\n" + extra)
    assert len(config.proxies) == 1
    if warning is None:
        assert config.warnings == ()
    else:
        assert len(config.warnings) == 1 and warning in config.warnings[0]


def test_proxies_list_with_every_knob(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        f"""\
        proxies:
          - host: docker.io
            remoteurl: https://registry-1.docker.io/
            username: me
            password: {SECRET}
            mirror: true
            tagttl: 5m
            negativettl: 1m30s
            connecttimeout: 500ms
            readtimeout: 2m
          - host: localhost:5000
            remoteurls:
              - http://localhost:5000
              - http://backup.example:5000/base/
            allowpush: true
            tagttl: 0
            negativettl: 0
        """,
    )
    assert config.proxies == (
        ProxyUpstreamConfig(
            host="docker.io",
            remoteurls=("https://registry-1.docker.io",),
            username="me",
            password=SECRET,
            mirror=True,
            tag_ttl_s=300.0,
            negative_ttl_s=90.0,
            connect_timeout_s=0.5,
            read_timeout_s=120.0,
        ),
        ProxyUpstreamConfig(
            host="localhost:5000",
            remoteurls=("http://localhost:5000", "http://backup.example:5000/base"),
            allow_push=True,
            tag_ttl_s=0.0,
            negative_ttl_s=0.0,
        ),
    )
    assert config.warnings == ()


def test_proxies_entry_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, "proxies:\n  - host: ghcr.io\n    remoteurl: https://ghcr.io\n")
    assert config.proxies == (ProxyUpstreamConfig(host="ghcr.io", remoteurls=("https://ghcr.io",)),)
    (upstream,) = config.proxies
    assert upstream.username is None and upstream.password is None
    assert (upstream.mirror, upstream.allow_push) == (False, False)
    assert (upstream.tag_ttl_s, upstream.negative_ttl_s) == (60.0, 15.0)
    assert (upstream.connect_timeout_s, upstream.read_timeout_s) == (3.0, 30.0)


def test_no_proxies_by_default(tmp_path: Path) -> None:
    assert load(tmp_path, "").proxies == ()
    assert load(tmp_path, "proxy:\nproxies: []\n").proxies == ()
    assert load_config(None, {}).proxies == ()


def test_proxy_block_comes_first_beside_proxies(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
        proxies:
          - {host: ghcr.io, remoteurl: "https://ghcr.io"}
          - {host: quay.io, remoteurl: "https://quay.io"}
        proxy:
          remoteurl: https://registry-1.docker.io
        """,
    )
    assert [(u.host, u.mirror) for u in config.proxies] == [
        ("docker.io", True),
        ("ghcr.io", False),
        ("quay.io", False),
    ]


@pytest.mark.parametrize("alias", ["index.docker.io", "registry-1.docker.io", "docker.io"])
def test_docker_hub_host_aliases_become_docker_io(tmp_path: Path, alias: str) -> None:
    extra = f"proxies:\n  - host: {alias}\n    remoteurl: https://registry-1.docker.io\n"
    assert load(tmp_path, extra).proxies[0].host == "docker.io"


def test_host_that_clients_read_as_a_hub_namespace_warns(tmp_path: Path) -> None:
    config = load(tmp_path, "proxies:\n  - host: myregistry\n    remoteurl: https://r.example\n")
    assert config.proxies[0].host == "myregistry"
    assert len(config.warnings) == 1 and "'proxies[0].host'" in config.warnings[0]


def test_unknown_key_in_an_entry_is_an_error_naming_its_path(tmp_path: Path) -> None:
    text = """\
        proxies:
          - {host: ghcr.io, remoteurl: "https://ghcr.io"}
          - {host: quay.io, remoteurl: "https://quay.io", tagtll: 1h}
        """
    assert error_of(tmp_path, text).startswith(
        "config key 'proxies[1].tagtll' is not an Entrepot configuration key "
        "(did you mean 'proxies[1].tagttl'?)"
    )


def test_unknown_key_in_the_proxy_block_warns_with_a_suggestion(tmp_path: Path) -> None:
    config = load(tmp_path, PROXY_HUB + "  usename: me\n")
    assert config.warnings == (
        "config key 'proxy.usename' is not a registry:2 configuration key and is ignored "
        "(did you mean 'proxy.username'?)",
    )


@pytest.mark.parametrize(
    ("content", "password"),
    [
        (f"{SECRET}\n", SECRET),
        (f"{SECRET}\r\n", SECRET),
        (SECRET, SECRET),
        (f"{SECRET}\n\n", f"{SECRET}\n"),  # only one trailing newline is dropped
        (f" {SECRET} ", f" {SECRET} "),
    ],
)
def test_passwordfile(tmp_path: Path, content: str, password: str) -> None:
    secret_file = tmp_path / "hub-token"
    secret_file.write_bytes(content.encode())
    extra = f"""\
        proxies:
          - host: docker.io
            remoteurl: https://registry-1.docker.io
            username: me
            passwordfile: {secret_file}
        """
    assert load(tmp_path, extra).proxies[0].password == password


def test_passwordenv_reads_the_environ_given(tmp_path: Path) -> None:
    extra = """\
        proxies:
          - host: ghcr.io
            remoteurl: https://ghcr.io
            username: me
            passwordenv: GHCR_TOKEN
        """
    # Used as is: no YAML parsing of the value.
    config = load(tmp_path, extra, {"GHCR_TOKEN": "0123 #: [x"})
    assert config.proxies[0].password == "0123 #: [x"
    assert config.warnings == ()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"REGISTRY_PROXY_REMOTEURL": "https://registry-1.docker.io"},
            ProxyUpstreamConfig(
                host="docker.io",
                remoteurls=("https://registry-1.docker.io",),
                mirror=True,
                ttl_s=WEEK,
            ),
        ),
        (
            {
                "REGISTRY_PROXY_REMOTEURL": "https://ghcr.io",
                "REGISTRY_PROXY_USERNAME": "me",
                "REGISTRY_PROXY_PASSWORD": "0123",  # a Go string field: kept as written
            },
            ProxyUpstreamConfig(
                host="docker.io",
                remoteurls=("https://ghcr.io",),
                username="me",
                password="0123",
                mirror=True,
                ttl_s=WEEK,  # registry:2's default proxy.ttl
                aliases=("ghcr.io",),
            ),
        ),
        (
            {
                "REGISTRY_PROXIES_0_HOST": "quay.io",
                "REGISTRY_PROXIES_0_REMOTEURLS": "[https://quay.io, https://q2.example]",
                "REGISTRY_PROXIES_0_USERNAME": "12345",
                "REGISTRY_PROXIES_0_PASSWORD": "true",
                "REGISTRY_PROXIES_0_TAGTTL": "10s",
            },
            ProxyUpstreamConfig(
                host="quay.io",
                remoteurls=("https://quay.io", "https://q2.example"),
                username="12345",
                password="true",
                tag_ttl_s=10.0,
            ),
        ),
    ],
)
def test_env_overrides_without_a_proxy_section(
    tmp_path: Path, env: dict[str, str], expected: ProxyUpstreamConfig
) -> None:
    config = load(tmp_path, "", env)
    assert config.proxies == (expected,)
    assert config.warnings == ()


def test_env_remoteurl_overrides_the_file(tmp_path: Path) -> None:
    extra = "proxy:\n  remoteurl: https://registry-1.docker.io\n  username: me\n"
    env = {"REGISTRY_PROXY_REMOTEURL": "https://mirror.gcr.io", "REGISTRY_PROXY_PASSWORD": SECRET}
    (upstream,) = load(tmp_path, extra, env).proxies
    assert (upstream.host, upstream.aliases) == ("docker.io", ("mirror.gcr.io",))
    assert upstream.remoteurls == ("https://mirror.gcr.io",)
    assert (upstream.username, upstream.password) == ("me", SECRET)


def test_env_overrides_an_entry_of_the_file(tmp_path: Path) -> None:
    extra = "proxies:\n  - host: ghcr.io\n    remoteurl: https://ghcr.io\n"
    config = load(tmp_path, extra, {"REGISTRY_PROXIES_0_MIRROR": "true"})
    assert config.proxies[0].mirror is True


def test_env_unknown_proxy_key_warns(tmp_path: Path) -> None:
    config = load(
        tmp_path, "", {"REGISTRY_PROXY_REMOTEURL": "https://ghcr.io", "REGISTRY_PROXY_X": "1"}
    )
    assert config.warnings == (
        "ignoring environment variable REGISTRY_PROXY_X: no such configuration key",
    )


P = "proxies:\n  - "
PROXY_HUB = "proxy:\n  remoteurl: https://registry-1.docker.io\n"


def hub(more: str = "", *, alone: bool = True) -> str:
    """A ``proxies`` entry for Docker Hub with ``more`` keys (the list too if ``alone``)."""
    entry = f"  - {{host: docker.io, remoteurl: 'https://registry-1.docker.io'{more}}}\n"
    return "proxies:\n" + entry if alone else entry


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        # remoteurl(s)
        ("proxy:\n  username: me\n", "'proxy.remoteurl' is required"),
        ("proxy:\n  remoteurl: registry-1.docker.io\n", "'proxy.remoteurl': 'registry-1.docker"),
        ("proxy:\n  remoteurl: ftp://x.example\n", "not an absolute http or https URL"),
        ("proxy:\n  remoteurl: [https://a.example]\n", "'proxy.remoteurl' must be an absolute"),
        (P + "{host: ghcr.io}", "'proxies[0].remoteurl' is required (or remoteurls"),
        (P + "{host: ghcr.io, remoteurls: []}", "'proxies[0].remoteurls' must list at least one"),
        (P + "{host: ghcr.io, remoteurls: 'https://ghcr.io'}", "'proxies[0].remoteurls' must be"),
        (P + "{host: ghcr.io, remoteurls: ['https://ghcr.io', 'ghcr.io']}", "remoteurls[1]'"),
        (
            P + "{host: ghcr.io, remoteurl: 'https://ghcr.io', remoteurls: ['https://ghcr.io']}",
            "set remoteurl or remoteurls, not both",
        ),
        (P + "{host: ghcr.io, remoteurl: 'https://ghcr.io:99x'}", "has an invalid port"),
        (P + "{host: ghcr.io, remoteurl: 'https://ghcr.io/?a=b'}", "query or fragment"),
        # host
        (P + "{remoteurl: 'https://ghcr.io'}", "'proxies[0].host' is required"),
        (P + "{host: '', remoteurl: 'https://ghcr.io'}", "'proxies[0].host' is required"),
        (P + "{host: 'https://ghcr.io', remoteurl: 'https://ghcr.io'}", "without a scheme or path"),
        (P + "{host: ghcr.io/ns, remoteurl: 'https://ghcr.io'}", "without a scheme or path"),
        (P + "{host: GHCR.io, remoteurl: 'https://ghcr.io'}", "'proxies[0].host': 'GHCR.io' must"),
        (P + "{host: ghcr_io, remoteurl: 'https://ghcr.io'}", "is not a registry host"),
        # duplicates and mirrors
        (
            PROXY_HUB + hub(),
            "config key 'proxies[0]': host 'docker.io' is already configured by 'proxy'",
        ),
        (
            hub() + "  - host: index.docker.io\n    remoteurl: https://mirror.gcr.io\n",
            "'proxies[1]': host 'docker.io' is already configured by 'proxies[0]'",
        ),
        (
            PROXY_HUB + P + "{host: ghcr.io, remoteurl: 'https://ghcr.io', mirror: true}",
            "config key 'proxies[0].mirror': only one upstream can be the mirror for "
            "unprefixed names, and 'proxy' already is",
        ),
        (
            hub(", mirror: true") + "  - {host: g.io, remoteurl: 'https://g.io', mirror: true}",
            "'proxies[1].mirror': only one upstream",
        ),
        # durations
        (hub(", tagttl: -1s"), "'proxies[0].tagttl' must not be negative"),
        (hub(", negativettl: -5m"), "'proxies[0].negativettl' must not be negative"),
        (hub(", connecttimeout: -1s"), "'proxies[0].connecttimeout' must not be neg"),
        (hub(", readtimeout: -1s"), "'proxies[0].readtimeout' must not be negative"),
        (hub(", connecttimeout: 0"), "'proxies[0].connecttimeout' must be more than 0"),
        (hub(", readtimeout: 10"), "'proxies[0].readtimeout': 10 has no unit; write 10s"),
        (hub(", tagttl: 1d"), "'proxies[0].tagttl'"),
        ("proxy:\n  remoteurl: https://ghcr.io\n  ttl: -1h\n", "'proxy.ttl' must not be negative"),
        # shapes and types
        ("proxies:\n  host: ghcr.io\n", "'proxies' must be a list"),
        ("proxies:\n  - ghcr.io\n", "'proxies[0]' must be a mapping"),
        (hub(", mirror: 'yes'"), "'proxies[0].mirror' must be true or false"),
        (hub(", allowpush: 1"), "'proxies[0].allowpush' must be true or false"),
        # credentials
        (hub(", username: me"), "'proxies[0].username' is set but no password is"),
        (hub(", password: pw"), "'proxies[0].username' is required with a password"),
        ("proxy:\n  remoteurl: https://ghcr.io\n  username: me\n", "'proxy.username' is set"),
        (hub(", username: 1234, password: pw"), "'proxies[0].username' must be a str"),
        (
            hub(", username: me, password: pw, passwordenv: X"),
            "'proxies[0]': set only one of password, passwordenv",
        ),
        (hub(", username: me, passwordenv: NOPE"), "environment variable NOPE is not"),
        (hub(", username: me, passwordenv: EMPTY"), "variable EMPTY is empty"),
        (hub(", username: me, passwordfile: /nonexistent/x"), "cannot read /nonex"),
    ],
)
def test_validation_errors_name_the_key(tmp_path: Path, extra: str, message: str | None) -> None:
    if message is None:
        load(tmp_path, extra, {"EMPTY": ""})
        return
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(tmp_path, extra, {"EMPTY": ""})


def test_passwordfile_that_is_empty_or_not_text(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "binary").write_bytes(b"\xff\xfe" + SECRET.encode())
    base = ", username: me, passwordfile: " + str(tmp_path)
    assert "is empty" in error_of(tmp_path, hub(base + "/empty"))
    message = error_of(tmp_path, hub(base + "/binary"))
    assert "is not UTF-8 text" in message and SECRET not in message


def test_password_never_shows(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    config = load(
        tmp_path,
        f"""\
        proxy:
          remoteurl: https://registry-1.docker.io
          username: me
          password: {SECRET}
          ttl: 1h
          extra: {SECRET}x
        proxies:
          - host: ghcr.io
            remoteurl: https://ghcr.io
            username: me
            passwordfile: {secret_file}
          - host: quay.io
            remoteurl: https://quay.io
            username: me
            passwordenv: QUAY
        """,
        {"QUAY": SECRET},
    )
    assert [u.password for u in config.proxies] == [SECRET] * 3
    assert len(config.warnings) == 1
    for text in (repr(config), str(config), *config.warnings):
        assert SECRET not in text
        assert "password=" not in text


@pytest.mark.parametrize(
    ("extra", "env"),
    [
        (hub(f", password: {SECRET}"), {}),  # no username
        (hub(f", username: me, password: {SECRET}, passwordenv: X"), {"X": "y"}),
        (hub(f", username: me, password: [{SECRET}]"), {}),
        (hub(", username: me, password: 12345678"), {}),
        (f"proxy:\n  remoteurl: https://me:{SECRET}@registry-1.docker.io\n", {}),
        (f"proxy:\n  remoteurl: me:{SECRET}@registry-1.docker.io\n", {}),
        (P + f"{{host: ghcr.io, remoteurls: ['https://me:{SECRET}@ghcr.io']}}\n", {}),
        ("proxy:\n  remoteurl: https://ghcr.io\n", {"REGISTRY_PROXY_PASSWORD": f"[{SECRET}"}),
        ("proxy:\n  remoteurl: https://ghcr.io\n", {"REGISTRY_PROXY_PASSWORD": f"[{SECRET}]"}),
        ("", {"REGISTRY_PROXIES_0_PASSWORD": f"{{{SECRET}"}),
        (f"proxy:\n  remoteurl: https://ghcr.io\n  password: {SECRET}\n", {}),  # no username
        (hub(f", username: me, password: x, pasword: {SECRET}"), {}),  # a typo: an error
    ],
)
def test_password_never_shows_in_errors(tmp_path: Path, extra: str, env: dict[str, str]) -> None:
    message = error_of(tmp_path, extra, env)
    assert SECRET not in message
    assert "12345678" not in message
