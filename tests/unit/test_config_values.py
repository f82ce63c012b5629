"""Values an operator gets wrong: durations without a unit, a remoteurl ending in /v2, and
errors from ``REGISTRY_*`` variables, which name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from entrepot.config import parse_duration
from tests.unit.config_files import error_of, load

ENTRY = "proxies:\n  - {host: a.local, remoteurl: 'http://127.0.0.1:5310'%s}\n"
PROXY = "proxy:\n  remoteurl: https://registry-1.docker.io\n"
UNITS = "units: ns, us, ms, s, m, h; e.g. 168h for 7 days"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ENTRY % ", tagttl: 300",
            "config key 'proxies[0].tagttl': 300 has no unit; write 300s (or 5m)",
        ),
        (ENTRY % ", ttl: 7", "config key 'proxies[0].ttl': 7 has no unit; write 7s"),
        (
            ENTRY % ", fillwait: 120",
            "config key 'proxies[0].fillwait': 120 has no unit; write 120s (or 2m)",
        ),
        (
            ENTRY % ", negativettl: 15",
            "config key 'proxies[0].negativettl': 15 has no unit; write 15s",
        ),
        (
            ENTRY % ", probeinterval: 2000000000",
            "config key 'proxies[0].probeinterval': 2000000000 has no unit; write 2000000000s, "
            "or 2s if nanoseconds were meant",
        ),
        (
            ENTRY % ", tagttl: '300'",
            "config key 'proxies[0].tagttl': '300' has no unit; write 300s (or 5m)",
        ),
        (
            "proxycache:\n  sweepinterval: 600\n",
            "config key 'proxycache.sweepinterval': 600 has no unit; write 600s (or 10m)",
        ),
        (
            "proxycache:\n  prefetch:\n    interval: 3600\n",
            "config key 'proxycache.prefetch.interval': 3600 has no unit; write 3600s (or 1h)",
        ),
        (
            "garbagecollect:\n  interval: 86400\n",
            "config key 'garbagecollect.interval': 86400 has no unit; write 86400s (or 24h)",
        ),
        (
            "garbagecollect:\n  grace: 60\n",
            "config key 'garbagecollect.grace': 60 has no unit; write 60s (or 1m)",
        ),
        (
            "garbagecollect:\n  retention:\n    - {repositories: ['*'], keeppulledwithin: 30}\n",
            "config key 'garbagecollect.retention[0].keeppulledwithin': 30 has no unit; write 30s",
        ),
        (
            "auth:\n  builtin:\n    users: {}\n    expiration: 300\n",
            "config key 'auth.builtin.expiration': 300 has no unit; write 300s (or 5m)",
        ),
        # registry:2 refuses a number without a unit in a string too
        (
            "health:\n  storagedriver:\n    interval: '10'\n",
            "config key 'health.storagedriver.interval': '10' has no unit; write 10s",
        ),
    ],
)
def test_a_duration_without_a_unit_is_an_error_in_entrepots_keys(
    tmp_path: Path, extra: str, message: str
) -> None:
    assert error_of(tmp_path, extra) == message


@pytest.mark.parametrize(
    "extra",
    [
        ENTRY % ", ttl: 0, tagttl: 0",  # 0 needs no unit, as in registry:2
        ENTRY % ", tagttl: 5m, fillwait: 500ms",
        "garbagecollect:\n  interval: 0\n",
        "proxycache:\n  sweepinterval: 10m\n",
    ],
)
def test_zero_and_durations_with_a_unit_are_fine(tmp_path: Path, extra: str) -> None:
    assert load(tmp_path, extra).warnings == ()


@pytest.mark.parametrize(
    ("extra", "seconds", "warning"),
    [
        (
            PROXY + "  ttl: 168\n",
            168e-9,
            "config key 'proxy.ttl': 168 is read as 168ns, as registry:2 reads it; "
            "did you mean 168s, 168m or 168h?",
        ),
        (
            "storage:\n  filesystem: {}\n  maintenance:\n"
            "    uploadpurging: {age: 168, interval: 24h}\n",
            168e-9,
            "config key 'storage.maintenance.uploadpurging.age': 168 is read as 168ns",
        ),
        (
            "health:\n  storagedriver:\n    interval: 10\n",
            10e-9,
            "config key 'health.storagedriver.interval': 10 is read as 10ns",
        ),
        (
            "notifications:\n  endpoints:\n    - {name: a, url: 'http://l.test/e', timeout: 5}\n",
            5e-9,
            "config key 'notifications.endpoints[0].timeout': 5 is read as 5ns",
        ),
        (PROXY + "  ttl: 604800000000000\n", 168 * 3600.0, None),  # nanoseconds, clearly meant
        (PROXY + "  ttl: 0\n", 0.0, None),
    ],
)
def test_a_bare_integer_in_registry2s_keys_is_nanoseconds_with_a_warning(
    tmp_path: Path, extra: str, seconds: float, warning: str | None
) -> None:
    config = load(tmp_path, extra)
    found = {
        "proxy": lambda: config.proxies[0].ttl_s,
        "storage": lambda: config.storage.uploadpurging.age_s,
        "health": lambda: config.health.storagedriver.interval_s,
        "notifications": lambda: config.notifications.endpoints[0].timeout_s,
    }[extra.split(":")[0]]()
    assert found == pytest.approx(seconds)
    if warning is None:
        assert config.warnings == ()
    else:
        assert len(config.warnings) == 1 and config.warnings[0].startswith(warning)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("7d", f"unknown unit 'd' in duration '7d'; {UNITS}"),
        ("ten seconds", f"invalid duration 'ten seconds'; {UNITS}"),
        ("1h30", f"invalid duration '1h30'; {UNITS}"),
        (True, f"expected a duration such as '10s', got True; {UNITS}"),
        ("90", "'90' has no unit; write 90s"),
        ("1.5", "'1.5' has no unit; write 1.5s"),
    ],
)
def test_duration_errors_list_the_units(value: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert str(info.value) == message


def test_a_duration_error_names_the_key_and_the_units(tmp_path: Path) -> None:
    assert error_of(tmp_path, PROXY + "  ttl: 7d\n") == (
        f"config key 'proxy.ttl': unknown unit 'd' in duration '7d'; {UNITS}"
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ENTRY.replace("5310'", "5310/v2/'") % "",
            "config key 'proxies[0].remoteurl': ends in /v2; give the registry's base URL, "
            "e.g. http://127.0.0.1:5310",
        ),
        (
            ENTRY.replace("5310'", "5310/v2'") % "",
            "config key 'proxies[0].remoteurl': ends in /v2; give the registry's base URL, "
            "e.g. http://127.0.0.1:5310",
        ),
        (
            "proxies:\n  - {host: a.local, remoteurls: ['https://a.local', 'https://b.local/x/v2']}\n",
            "config key 'proxies[0].remoteurls[1]': ends in /v2; give the registry's base URL, "
            "e.g. https://b.local/x",
        ),
        (
            "proxy:\n  remoteurl: https://registry-1.docker.io/v2/\n",
            "config key 'proxy.remoteurl': ends in /v2; give the registry's base URL, "
            "e.g. https://registry-1.docker.io",
        ),
    ],
)
def test_a_remoteurl_ending_in_v2_is_refused(tmp_path: Path, extra: str, message: str) -> None:
    assert error_of(tmp_path, extra) == message


def test_a_remoteurl_with_a_path_not_ending_in_v2_is_kept(tmp_path: Path) -> None:
    config = load(tmp_path, ENTRY.replace("5310'", "5310/v2mirror/'") % "")
    assert config.proxies[0].remoteurls == ("http://127.0.0.1:5310/v2mirror",)


@pytest.mark.parametrize(
    ("extra", "env", "message"),
    [
        (
            "",
            {"REGISTRY_STORAGE_DELETE_ENABLED": "maybe"},
            "config key 'storage.delete.enabled' must be true or false, got 'maybe' "
            "(from REGISTRY_STORAGE_DELETE_ENABLED)",
        ),
        (
            "",
            {"REGISTRY_STORAGE_DELETE": "{enabled: maybe}"},  # a section above the key
            "config key 'storage.delete.enabled' must be true or false, got 'maybe' "
            "(from REGISTRY_STORAGE_DELETE)",
        ),
        (
            ENTRY % "",
            {"REGISTRY_PROXIES_0_TAGTTL": "300"},
            "config key 'proxies[0].tagttl': 300 has no unit; write 300s (or 5m) "
            "(from REGISTRY_PROXIES_0_TAGTTL)",
        ),
        (
            "",
            {"REGISTRY_PROXIES_0_HOST": "a.local", "REGISTRY_PROXIES_0_REMOTEURL": "http://a/v2"},
            "config key 'proxies[0].remoteurl': ends in /v2; give the registry's base URL, "
            "e.g. http://a (from REGISTRY_PROXIES_0_REMOTEURL)",
        ),
        (
            "",
            {"REGISTRY_HEALTH_STORAGEDRIVER_THRESHOLD": "many"},
            "config key 'health.storagedriver.threshold' must be an integer, got 'many' "
            "(from REGISTRY_HEALTH_STORAGEDRIVER_THRESHOLD)",
        ),
        (
            "",
            {"REGISTRY_LOG_FIELDS_ENV": "[a]"},  # a free-form map
            "config key 'log.fields.env' must be a single value, got ['a'] "
            "(from REGISTRY_LOG_FIELDS_ENV)",
        ),
        # The file's own mistakes name no variable, even beside one.
        (
            "storage:\n  filesystem: {}\n  delete: {enabled: maybe}\n",
            {"REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": "/data"},
            "config key 'storage.delete.enabled' must be true or false, got 'maybe'",
        ),
    ],
)
def test_an_error_from_a_variable_names_it(
    tmp_path: Path, extra: str, env: dict[str, str], message: str
) -> None:
    assert error_of(tmp_path, extra, env) == message


def test_a_warning_from_a_variable_names_it(tmp_path: Path) -> None:
    config = load(tmp_path, PROXY, {"REGISTRY_PROXY_TTL": "168"})
    assert config.warnings == (
        "config key 'proxy.ttl': 168 is read as 168ns, as registry:2 reads it; "
        "did you mean 168s, 168m or 168h? (from REGISTRY_PROXY_TTL)",
    )
