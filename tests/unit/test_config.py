"""registry:2 config.yml loading: values, defaults, REGISTRY_* overrides, warnings, errors."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

from entrepot.config import (
    Config,
    ConfigError,
    load_config,
    parse_duration,
    parse_listen_addr,
)

SEED = """\
version: 0.1
log:
    fields:
        service: registry
storage:
    cache:
        blobdescriptor: inmemory
    filesystem:
        rootdirectory: /var/lib/registry
    delete:
        enabled: true
http:
    addr: :443
    host: https://registry.sky-mobi.com
    tls:
        certificate: /certs/registry.sky-mobi.com.crt
        key: /certs/registry.sky-mobi.com.key_nopwd
    headers:
        X-Content-Type-Options: [nosniff]
health:
    storagedriver:
        enabled: true
        interval: 10s
        threshold: 3
"""

MINIMAL = """\
version: 0.1
storage:
  filesystem:
    rootdirectory: /srv/registry
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yml"
    path.write_text(textwrap.dedent(text))
    return path


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Config:
    return load_config(write(tmp_path, text), env or {})


def test_seed_config_loads_unchanged(tmp_path: Path) -> None:
    config = load(tmp_path, SEED)
    assert config.version == "0.1"
    assert config.warnings == ()
    assert config.log.level == "info"
    assert config.log.formatter is None
    assert config.log.fields == {"service": "registry"}
    assert config.storage.driver == "filesystem"
    assert config.storage.rootdirectory == Path("/var/lib/registry")
    assert config.storage.delete_enabled is True
    assert config.storage.blobdescriptor_cache == "inmemory"
    assert config.storage.redirect_disabled is False
    assert config.storage.readonly is False
    assert config.storage.uploadpurging.enabled is True
    assert config.storage.uploadpurging.age_s == 168 * 3600
    assert config.storage.uploadpurging.interval_s == 24 * 3600
    assert (config.http.host, config.http.port) == ("0.0.0.0", 443)
    assert config.http.unix_socket is None
    assert config.http.host_url == "https://registry.sky-mobi.com"
    assert config.http.prefix == "/"
    assert config.http.secret is None
    assert config.http.headers == {"X-Content-Type-Options": ["nosniff"]}
    assert config.http.tls is not None
    assert config.http.tls.certificate == Path("/certs/registry.sky-mobi.com.crt")
    assert config.http.tls.key == Path("/certs/registry.sky-mobi.com.key_nopwd")
    assert config.http.tls.clientcas == []
    assert config.health.storagedriver.enabled is True
    assert config.health.storagedriver.interval_s == 10.0
    assert config.health.storagedriver.threshold == 3


def test_defaults_without_a_file() -> None:
    config = load_config(None, {})
    assert config == Config()
    assert config.storage.rootdirectory == Path("/var/lib/registry")
    assert config.http.port == 5000
    assert config.http.tls is None
    assert config.health.storagedriver.enabled is False
    assert config.health.storagedriver.threshold == 1  # registry:2: one failure is enough


def test_defaults_of_a_minimal_file(tmp_path: Path) -> None:
    config = load(tmp_path, MINIMAL)
    assert config.storage.rootdirectory == Path("/srv/registry")
    assert config.storage.delete_enabled is False
    assert config.storage.blobdescriptor_cache is None
    assert (config.http.host, config.http.port) == ("0.0.0.0", 5000)
    assert config.warnings == ()


def test_version_as_a_string(tmp_path: Path) -> None:
    assert load(tmp_path, MINIMAL.replace("0.1", '"0.1"')).version == "0.1"


@pytest.mark.parametrize(
    ("name", "value", "attr", "expected"),
    [
        ("REGISTRY_HTTP_ADDR", "127.0.0.1:6000", "http.port", 6000),
        ("REGISTRY_HTTP_ADDR", "127.0.0.1:6000", "http.host", "127.0.0.1"),
        ("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", "/x", "storage.rootdirectory", Path("/x")),
        ("REGISTRY_STORAGE_DELETE_ENABLED", "false", "storage.delete_enabled", False),
        ("REGISTRY_HTTP_TLS_CERTIFICATE", "/o.crt", "http.tls.certificate", Path("/o.crt")),
        ("REGISTRY_LOG_LEVEL", "debug", "log.level", "debug"),
        ("REGISTRY_LOG_FIELDS_ENV", "prod", "log.fields", {"service": "registry", "env": "prod"}),
        ("REGISTRY_HEALTH_STORAGEDRIVER_INTERVAL", "30s", "health.storagedriver.interval_s", 30),
        ("REGISTRY_HTTP_SECRET", "s3cret", "http.secret", "s3cret"),
        ("REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR", "''", "storage.blobdescriptor_cache", None),
    ],
)
def test_env_override_wins_over_file(
    tmp_path: Path, name: str, value: str, attr: str, expected: Any
) -> None:
    found: Any = load(tmp_path, SEED, {name: value})
    for part in attr.split("."):
        found = getattr(found, part)
    assert found == expected


def test_env_override_delete_enabled_parsed_as_yaml(tmp_path: Path) -> None:
    config = load(tmp_path, MINIMAL, {"REGISTRY_STORAGE_DELETE_ENABLED": "true"})
    assert config.storage.delete_enabled is True


def test_env_override_inserts_tls_section(tmp_path: Path) -> None:
    env = {
        "REGISTRY_HTTP_TLS_CERTIFICATE": "/c.crt",
        "REGISTRY_HTTP_TLS_KEY": "/c.key",
        "REGISTRY_HTTP_TLS_CLIENTCAS_0": "/ca.pem",
    }
    tls = load(tmp_path, MINIMAL, env).http.tls
    assert tls is not None
    assert (tls.certificate, tls.key, tls.clientcas) == (
        Path("/c.crt"),
        Path("/c.key"),
        [Path("/ca.pem")],
    )


def test_env_whole_storage_section_then_parameters(tmp_path: Path) -> None:
    # Applied in name order, as registry:2 does: REGISTRY_STORAGE replaces the section first.
    env = {
        "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": "/data",
        "REGISTRY_STORAGE": "filesystem",
    }
    config = load(tmp_path, SEED, env)
    assert config.storage.rootdirectory == Path("/data")
    assert config.storage.delete_enabled is False  # the file's storage section was replaced


def test_env_applies_to_defaults_too() -> None:
    config = load_config(None, {"REGISTRY_HTTP_ADDR": ":8080"})
    assert config.http.port == 8080


def test_env_unknown_variable_warns(tmp_path: Path) -> None:
    # e.g. what Kubernetes injects for a service named "registry"
    config = load(tmp_path, MINIMAL, {"REGISTRY_PORT": "tcp://10.0.0.1:5000", "HOME": "/x"})
    assert config.warnings == (
        "ignoring environment variable REGISTRY_PORT: no such configuration key",
    )


def test_env_configuration_path_is_not_an_override(tmp_path: Path) -> None:
    config = load(tmp_path, MINIMAL, {"REGISTRY_CONFIGURATION_PATH": "/etc/x.yml"})
    assert config.warnings == ()


def test_env_value_must_be_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="REGISTRY_HTTP_ADDR"):
        load(tmp_path, MINIMAL, {"REGISTRY_HTTP_ADDR": "[unclosed"})


@pytest.mark.parametrize(
    ("extra", "key_path"),
    [
        (
            "notifications:\n  endpoints:\n    - {name: a, url: 'http://l.test/e', tiemout: 1s}\n",
            "'notifications.endpoints[0].tiemout' is not a registry:2 configuration key and is "
            "ignored (did you mean 'notifications.endpoints[0].timeout'?)",
        ),
        ("middleware:\n  registry:\n    - name: cloudfront\n", "'middleware' is not implemented"),
        ("redis:\n  addr: r:6379\n  addrs: [r:6379]\n", "'redis.addrs' is not implemented yet"),
        ("http:\n  addr: :5000\n  draintimeout: 60s\n", "'http.draintimeout' is not implemented"),
        ("http:\n  addr: :5000\n  http2:\n    disabled: true\n", "'http.http2' is not implemented"),
        ("bogus: 1\n", "'bogus' is not a registry:2 configuration key"),
        ("http:\n  adress: :5000\n", "'http.adress' is not a registry:2 configuration key"),
        (
            "http:\n  adr: :5000\n",
            "config key 'http.adr' is not a registry:2 configuration key and is ignored "
            "(did you mean 'http.addr'?)",
        ),
        ("storage:\n  filesystem: {}\n  delete: {enabeld: true}\n", "'storage.delete.enabled'?"),
        ("log:\n  level: info\n  colour: red\n", "'log.colour' is not a registry:2"),
        ("health:\n  file:\n    - file: /x\n", "'health.file' is not implemented yet"),
    ],
)
def test_unknown_or_unimplemented_key_warns_with_its_path(
    tmp_path: Path, extra: str, key_path: str
) -> None:
    config = load(tmp_path, MINIMAL + extra, {"REGISTRY_HTTP_SECRET": "s"})  # as replicas do
    assert len(config.warnings) == 1
    assert key_path in config.warnings[0]


def test_redis_section_as_registry2_writes_it(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        MINIMAL + "redis:\n  addr: redis.internal:6380\n  password: s3cret\n  db: 2\n"
        "  dialtimeout: 10ms\n  readtimeout: 1s\n  writetimeout: 2s\n"
        "  pool:\n    maxidle: 16\n    maxactive: 64\n    idletimeout: 300s\n"
        "  tls:\n    enabled: true\n",
        env={"REGISTRY_REDIS_DB": "3", "REGISTRY_HTTP_SECRET": "s"},
    )
    redis = config.redis
    assert redis is not None and config.warnings == ()
    assert (redis.host, redis.port, redis.db, redis.password) == (
        "redis.internal",
        6380,
        3,
        "s3cret",
    )
    assert (redis.dialtimeout_s, redis.readtimeout_s, redis.writetimeout_s) == (0.01, 1.0, 2.0)
    assert (redis.pool.maxactive, redis.tls.enabled) == (64, True)
    assert load(tmp_path, MINIMAL + "redis:\n  addr: r\n").redis.port == 6379  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("redis:\n  db: 1\n", "config key 'redis.addr' is required"),
        ("redis:\n  addr: r:port\n", "config key 'redis.addr': 'r:port' has no valid port"),
        ("redis:\n  addr: r:1\n  db: -1\n", "config key 'redis.db' must not be negative"),
    ],
)
def test_redis_section_errors_name_the_key(tmp_path: Path, section: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(tmp_path, MINIMAL + section)


def test_redis_blobdescriptor_cache_warns(tmp_path: Path) -> None:
    config = load(tmp_path, SEED.replace("blobdescriptor: inmemory", "blobdescriptor: redis"))
    assert config.storage.blobdescriptor_cache is None
    assert any("storage.cache.blobdescriptor: redis" in w for w in config.warnings)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        # Access control that cannot be honoured refuses to start (see test_config_auth).
        ("auth:\n  htpasswd:\n    realm: r\n    path: /p\n", "'auth.htpasswd.path': /p does not"),
        ("auth:\n  token:\n    realm: https://auth/token\n", "'auth.token.service' is required"),
        ("auth:\n  silly:\n", "auth.silly is a registry:2 development mode"),  # no parameters
    ],
)
def test_auth_that_cannot_be_honoured_is_refused(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(tmp_path, MINIMAL + extra)


def test_auth_from_the_environment_is_refused_too(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape("'auth.htpasswd.realm' is required")):
        load(tmp_path, MINIMAL, {"REGISTRY_AUTH_HTPASSWD_PATH": "/auth/htpasswd"})


def test_keys_asking_for_nothing_do_not_warn(tmp_path: Path) -> None:
    extra = "auth:\nhttp:\n  addr: :5000\n  relativeurls: false\n  http2:\n    disabled: false\n"
    assert load(tmp_path, MINIMAL + extra).warnings == ()


V = "version: 0.1\n"
VS = "version: 0.1\nstorage: filesystem\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (V + "storage: {gcs: {bucket: b}}", "storage driver 'gcs' is not supported yet; supported"),
        (V + "storage: {inmemory: }", "storage driver 'inmemory' is not supported yet"),
        (V + "storage: azure", "storage driver 'azure' is not supported yet"),
        (
            V + "storage: {filesystem: {}, gcs: {}}",
            "more than one storage driver",
        ),
        (V + "storage: {delete: {enabled: true}}", "names no storage driver"),
        (V, "'storage' is required"),
        ("storage: filesystem", "'version' is required"),
        ("version: 0.2\nstorage: filesystem", "unsupported version '0.2'"),
        (VS + "http: {addr: ':abc'}", "'http.addr'"),
        (VS + "http: {addr: localhost}", "missing port"),
        (VS + "http: {addr: ':70000'}", "out of range"),
        (VS + "http: {net: udp}", "'http.net'"),
        (VS + "http: {tls: {certificate: /c}}", "'http.tls.key' is required"),
        (VS + "http: {tls: {certificate: /c, key: /k, minimumtls: tls9}}", "http.tls.minimumtls"),
        (VS + "http: {headers: {X-A: nosniff}}", "'http.headers.X-A' must be a list"),
        (VS + "http: {tls: {letsencrypt: {cachefile: /c}}}", "'http.tls.letsencrypt'"),
        (VS + "http: [1, 2]", "'http' must be a mapping"),
        (V + "storage: {filesystem: {}, delete: {enabled: 'yes'}}", "must be true or false"),
        (VS + "health: {storagedriver: {threshold: many}}", "threshold' must be an integer"),
        (VS + "health: {storagedriver: {interval: 10 s}}", "'health.storagedriver.interval'"),
        (VS + "log: {level: verbose}", "'log.level'"),
        (VS + "log: {formatter: xml}", "'log.formatter'"),
        (V + "storage: {filesystem: {}", "not valid YAML"),
        ("- a list", "must hold a mapping"),
    ],
)
def test_errors_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(tmp_path, text)


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yml", {})


def test_tls_key_without_certificate_disables_tls_with_warning(tmp_path: Path) -> None:
    config = load(tmp_path, MINIMAL + "http:\n  tls:\n    key: /k\n")
    assert config.http.tls is None
    assert any("http.tls.key" in w for w in config.warnings)


def test_tls_minimumtls_below_12_warns(tmp_path: Path) -> None:
    text = MINIMAL + "http:\n  tls:\n    certificate: /c\n    key: /k\n    minimumtls: tls1.0\n"
    config = load(tmp_path, text)
    assert config.http.tls is not None and config.http.tls.minimumtls == "tls1.0"
    assert any("minimumtls" in w for w in config.warnings)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10s", 10.0),
        ("168h", 168 * 3600.0),
        ("1h30m", 5400.0),
        ("500ms", 0.5),
        ("1.5h", 5400.0),
        ("2h10m5s", 7805.0),
        ("250us", 250e-6),
        ("250\u00b5s", 250e-6),
        ("0", 0.0),
        ("-1s", -1.0),
        (10, 10e-9),  # a plain integer is nanoseconds, as in registry:2
        (0, 0.0),
    ],
)
def test_parse_duration(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "10", "10 s", "s", "1d", "1h30", True, 1.5, None])
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_health_interval_integer_is_nanoseconds(tmp_path: Path) -> None:
    text = MINIMAL + "health:\n  storagedriver:\n    enabled: true\n    interval: 2000000000\n"
    assert load(tmp_path, text).health.storagedriver.interval_s == 2.0


def test_uploadpurging_and_readonly(tmp_path: Path) -> None:
    text = MINIMAL + textwrap.indent(
        textwrap.dedent("""\
            maintenance:
              uploadpurging:
                enabled: true
                age: 1h
                interval: 30m
                dryrun: true
              readonly:
                enabled: true
            redirect:
              disable: true
        """),
        "  ",
    )
    storage = load(tmp_path, text).storage
    assert storage.uploadpurging.age_s == 3600.0
    assert storage.uploadpurging.interval_s == 1800.0
    assert storage.uploadpurging.dryrun is True
    assert storage.readonly is True
    assert storage.redirect_disabled is True


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        (":5000", ("0.0.0.0", 5000)),
        (":443", ("0.0.0.0", 443)),
        ("0.0.0.0:443", ("0.0.0.0", 443)),
        ("localhost:5000", ("localhost", 5000)),
        ("[::1]:5000", ("::1", 5000)),
        ("[::]:5000", ("::", 5000)),
        (":https", ("0.0.0.0", 443)),  # Go accepts service names
    ],
)
def test_parse_listen_addr(addr: str, expected: tuple[str, int]) -> None:
    assert parse_listen_addr(addr) == expected


@pytest.mark.parametrize("addr", ["5000", "localhost", ":abc", "::1:5000", "[::1]5000", ":99999"])
def test_parse_listen_addr_rejects(addr: str) -> None:
    with pytest.raises(ValueError):
        parse_listen_addr(addr)


def test_tcp6_empty_host_is_all_ipv6_interfaces(tmp_path: Path) -> None:
    config = load(tmp_path, MINIMAL + "http:\n  net: tcp6\n  addr: :5000\n")
    assert config.http.host == "::"


def test_unix_socket(tmp_path: Path) -> None:
    config = load(tmp_path, MINIMAL + "http:\n  net: unix\n  addr: /run/registry.sock\n")
    assert config.http.unix_socket == Path("/run/registry.sock")


def test_http_options(tmp_path: Path) -> None:
    text = MINIMAL + textwrap.dedent("""\
        http:
          addr: localhost:5000
          prefix: /my/nested/registry
          secret: asecretforlocaldevelopment
          host: registry.example.com
          debug:
            addr: localhost:5001
            prometheus:
              enabled: true
        log:
          level: DEBUG
          formatter: json
          accesslog:
            disabled: true
    """)
    config = load(tmp_path, text)
    assert config.http.prefix == "/my/nested/registry/"
    assert config.http.secret == "asecretforlocaldevelopment"
    assert config.http.debug is not None
    assert (config.http.debug.host, config.http.debug.port) == ("localhost", 5001)
    assert config.http.debug.prometheus.path == "/metrics"
    assert config.http.host_url is None  # not an absolute URL: ignored, with a warning
    assert any("http.host" in w for w in config.warnings)
    assert (config.log.level, config.log.formatter) == ("debug", "json")
    assert config.log.accesslog_disabled is True


def test_deprecated_loglevel(tmp_path: Path) -> None:
    assert load(tmp_path, MINIMAL + "loglevel: warn\n").log.level == "warn"


def test_storage_as_bare_driver_name(tmp_path: Path) -> None:
    config = load(tmp_path, "version: 0.1\nstorage: filesystem\n")
    assert config.storage.rootdirectory == Path("/var/lib/registry")


def test_an_empty_header_value_is_no_value_and_a_secret_is_never_echoed(tmp_path: Path) -> None:
    assert load(tmp_path, MINIMAL + "http:\n  headers:\n    X-A:\n").http.headers == {"X-A": []}
    with pytest.raises(ConfigError) as info:
        load(tmp_path, MINIMAL + "http:\n  secret: [hunter2]\n")
    assert "'http.secret' must be a single value" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_env_override_of_a_nested_key_comes_from_the_schema(tmp_path: Path) -> None:
    env = {
        "REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_AGE": "1h",
        "REGISTRY_AUTH_BUILTIN_ACCESS_0_WHO": "[anonymous]",
        "REGISTRY_AUTH_BUILTIN_ACCESS_0_REPOSITORIES": "['*']",
        "REGISTRY_AUTH_BUILTIN_ACCESS_0_ACTIONS": "[pull]",
        "REGISTRY_HEALTH_STORAGEDRIVER_THRESHOLD": "4",
    }
    config = load(tmp_path, MINIMAL, env)
    assert config.storage.uploadpurging.age_s == 3600.0
    assert config.health.storagedriver.threshold == 4
    assert config.auth is not None and config.auth.builtin is not None
    assert config.auth.builtin.access[0].actions == ("pull",)
    assert config.warnings == ()


def test_every_declared_key_has_its_registry_variable() -> None:
    """Each key of the README's table (so of the models) can be set through REGISTRY_*."""
    from entrepot.config.environ import apply_env_overrides, env_schema
    from entrepot.config.schema import key_table

    schema = env_schema(Config)
    assert isinstance(schema, dict)
    paths = re.findall(r"^\| `([^`]+)`", key_table(Config), re.M)
    assert paths[0] == "version" and "storage.maintenance.uploadpurging.dryrun" in paths
    for path in paths[1:]:  # not version: it comes from the file only
        name = "REGISTRY_" + path.replace("[N]", ".0").replace(".", "_").upper()
        warnings = apply_env_overrides({}, {name: "x"}, schema)
        assert warnings == [], name
    assert apply_env_overrides({}, {"REGISTRY_HTTP_ADR": "x"}, schema) == [
        "ignoring environment variable REGISTRY_HTTP_ADR: no such configuration key"
    ]


def test_debug_server_needs_prometheus_enabled(tmp_path: Path) -> None:
    """registry:2's debug server also serves Go's expvar and pprof; Entrepot's serves only
    the metrics, so an address without them starts nothing, and says so."""
    config = load(tmp_path, MINIMAL + "http:\n  debug:\n    addr: :5001\n")
    assert config.http.debug is None
    assert any("http.debug.prometheus.enabled" in w for w in config.warnings)
    text = "http:\n  debug:\n    addr: 127.0.0.1:5001\n    prometheus:\n"
    text += "      enabled: true\n      path: /debug/metrics\n"
    config = load(tmp_path, MINIMAL + text)
    assert config.http.debug is not None
    assert config.http.debug.prometheus.path == "/debug/metrics"
    with pytest.raises(ConfigError, match=r"http\.debug\.addr"):
        load(tmp_path, MINIMAL + "http:\n  debug:\n    addr: nope\n")


STORAGE = "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /tmp/x\n"


def test_trusted_proxies_must_be_addresses_or_networks(tmp_path: Path) -> None:
    config = load(tmp_path, STORAGE + "http:\n  trustedproxies: [10.0.0.5, 10.1.0.0/16]\n")
    assert config.http.trustedproxies == ["10.0.0.5", "10.1.0.0/16"]
    with pytest.raises(ConfigError) as err:
        load(tmp_path, STORAGE + "http:\n  trustedproxies: [10.0.0.5, proxy.local]\n")
    assert "config key 'http.trustedproxies[1]': 'proxy.local' is not an IP" in str(err.value)
