"""An upstream's allow and deny lists and its offline settings: how config.yml states them,
and what the lists let through."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from entrepot.config import Config, ConfigError, load_config
from entrepot.config.check import summary
from entrepot.proxy.access import NameRules
from entrepot.proxy.health import UpstreamHealth

MINIMAL = "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /srv/registry\n"


def _load(tmp_path: Path, extra: str) -> Config:
    path = tmp_path / "config.yml"
    path.write_text(MINIMAL + textwrap.dedent(extra))
    return load_config(path, {})


def test_lists_and_offline_settings_per_upstream(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        """
        proxy:
          remoteurl: https://registry-1.docker.io
          allow: ["library/*", "myorg/*"]
          deny: ["library/secret*"]
        proxies:
          - host: ghcr.io
            remoteurl: https://ghcr.io
            deny: [org/private*]
            offline: true
          - host: quay.io
            remoteurl: https://quay.io
            offlineafter: 2
            probeinterval: 250ms
        """,
    )
    hub, ghcr, quay = config.proxies
    assert (hub.host, hub.allow, hub.deny, hub.offline) == (
        "docker.io",
        ("library/*", "myorg/*"),
        ("library/secret*",),
        False,
    )
    assert (ghcr.deny, ghcr.offline, ghcr.offline_after) == (("org/private*",), True, 5)
    assert (quay.allow, quay.offline_after, quay.probe_interval_s) == ((), 2, 0.25)
    assert not config.warnings
    # The start-up line says which upstreams serve their cache only.
    assert "upstreams docker.io (mirror), ghcr.io (offline), quay.io" in summary(config, None)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("allow: library/*", "'proxies[0].allow' must be a list of patterns"),
        ("deny: [Library/*]", "'proxies[0].deny[0]': 'Library/*' is not a pattern"),
        ("deny: ['']", "'proxies[0].deny[0]': '' is not a pattern"),
        ("allow: [ok/*, 'a b']", "'proxies[0].allow[1]': 'a b' is not a pattern"),
        ("offlineafter: -1", "'proxies[0].offlineafter' must not be negative"),
        ("probeinterval: 0s", "'proxies[0].probeinterval' must be more than 0"),
        ("ofline: true", "did you mean 'proxies[0].offline'"),
    ],
)
def test_mistakes_name_the_key(tmp_path: Path, entry: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, f"proxies:\n  - {{host: ghcr.io, remoteurl: https://ghcr.io, {entry}}}\n")
    assert message in str(info.value)


HUB = NameRules.of("docker.io", ("library/*", "myorg/*"), ("library/secret*",), docker_hub=True)


@pytest.mark.parametrize(
    ("rules", "name", "refusal"),
    [
        (HUB, "library/nginx", None),
        (HUB, "myorg/team/app", None),  # * also matches '/', as in auth.builtin's rules
        (HUB, "library/secret-db", "matches the deny rule 'library/secret*' of upstream docker.io"),
        (HUB, "other/tool", "matches no allow rule of upstream docker.io ('library/*', 'myorg/*')"),
        (NameRules("ghcr.io"), "anything/at/all", None),  # no lists: everything
        (NameRules("ghcr.io", deny=("*",)), "org/app", "deny rule '*'"),
        # Deny wins over allow.
        (NameRules("ghcr.io", ("org/*",), ("org/app",)), "org/app", "deny rule 'org/app'"),
        # On Docker Hub, one-component patterns name official images, as plain names do.
        (NameRules.of("docker.io", (), ("nginx",), docker_hub=True), "library/nginx", "deny"),
        (NameRules.of("docker.io", (), ("nginx",), docker_hub=True), "myorg/nginx", None),
        (NameRules.of("docker.io", ("py*",), (), docker_hub=True), "library/python", None),
        (NameRules.of("docker.io", ("*",), (), docker_hub=True), "myorg/app", None),
        (NameRules.of("ghcr.io", (), ("nginx",), docker_hub=False), "library/nginx", None),
    ],
)
def test_what_the_lists_let_through(rules: NameRules, name: str, refusal: str | None) -> None:
    found = rules.refusal(name)
    if refusal is None:
        assert found is None
    else:
        assert found is not None and refusal in found


def test_configured_offline_is_reported_from_the_start() -> None:
    seen: list[bool] = []
    health = UpstreamHealth("quay.io", configured_offline=True, on_change=seen.append)
    assert health.offline
    assert seen == [True]
    assert health.reason is not None and "quay.io is configured offline" in health.reason
    online = UpstreamHealth("ghcr.io", offline_after=0, on_change=seen.append)
    assert seen == [True, False]
    assert online.reason is None
