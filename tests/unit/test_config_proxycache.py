"""Entrepot's ``proxycache`` section: the cache's total size cap and sweep interval."""

from __future__ import annotations

from pathlib import Path

import pytest

from entrepot.config import ProxyCacheConfig, load_config
from tests.unit.config_files import error_of, load

GIB = 1024**3


@pytest.mark.parametrize(
    "extra",
    [
        "",
        "proxycache:\n",
        "proxycache: {}\n",
        "proxycache:\n  maxsize:\n",
        "proxycache:\n  maxsize: ''\n",
    ],
)
def test_defaults_no_cap_ten_minutes(tmp_path: Path, extra: str) -> None:
    config = load(tmp_path, extra)
    assert config.proxycache == ProxyCacheConfig(maxsize_bytes=None, sweepinterval_s=600.0)
    assert config.warnings == ()


def test_defaults_without_a_file() -> None:
    assert load_config(None, {}).proxycache == ProxyCacheConfig()


@pytest.mark.parametrize(
    ("maxsize", "size"),
    [
        ("1", 1),
        ("1073741824", GIB),
        ("'2048'", 2048),
        ("10B", 10),
        ("1KB", 1000),
        ("1MB", 1000**2),
        ("1GB", 1000**3),
        ("1TB", 1000**4),
        ("1KiB", 1024),
        ("1MiB", 1024**2),
        ("1GiB", GIB),
        ("1TiB", 1024**4),
        ("100GiB", 100 * GIB),
        ("100gib", 100 * GIB),
        ("100GIB", 100 * GIB),
        ("5 gb", 5 * 1000**3),
        ("500 MB", 500 * 1000**2),
        ("'  7 kB '", 7000),
        ("1.5GiB", 3 * GIB // 2),
        ("0.5 KiB", 512),
        ("1.1KB", 1100),
        (".25MiB", 256 * 1024),
        ("2.TB", 2 * 1000**4),
        ("1.5B", 1),
        ("+3MB", 3 * 1000**2),
    ],
)
def test_maxsize(tmp_path: Path, maxsize: str, size: int) -> None:
    config = load(tmp_path, f"proxycache:\n  maxsize: {maxsize}\n")
    assert config.proxycache.maxsize_bytes == size
    assert config.proxycache.sweepinterval_s == 600.0
    assert config.warnings == ()


@pytest.mark.parametrize(
    ("sweepinterval", "seconds"),
    [
        ("10m", 600.0),
        ("30s", 30.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
    ],
)
def test_sweepinterval(tmp_path: Path, sweepinterval: str, seconds: float) -> None:
    config = load(tmp_path, f"proxycache:\n  sweepinterval: {sweepinterval}\n")
    assert config.proxycache == ProxyCacheConfig(sweepinterval_s=seconds)


@pytest.mark.parametrize(
    ("extra", "env", "expected"),
    [
        ("", {"REGISTRY_PROXYCACHE_MAXSIZE": "100GiB"}, ProxyCacheConfig(100 * GIB)),
        ("", {"REGISTRY_PROXYCACHE_MAXSIZE": "500 MB"}, ProxyCacheConfig(500 * 1000**2)),
        ("", {"REGISTRY_PROXYCACHE_MAXSIZE": "4096"}, ProxyCacheConfig(4096)),
        ("", {"REGISTRY_PROXYCACHE_SWEEPINTERVAL": "30s"}, ProxyCacheConfig(None, 30.0)),
        (
            "proxycache:\n  maxsize: 1GiB\n  sweepinterval: 1h\n",
            {"REGISTRY_PROXYCACHE_MAXSIZE": "2GiB"},
            ProxyCacheConfig(2 * GIB, 3600.0),
        ),
        (
            "proxycache:\n  maxsize: 1GiB\n",
            {"REGISTRY_PROXYCACHE_MAXSIZE": "1.5TB", "REGISTRY_PROXYCACHE_SWEEPINTERVAL": "5m"},
            ProxyCacheConfig(1_500_000_000_000, 300.0),
        ),
        (
            "",
            {"REGISTRY_PROXYCACHE": "{maxsize: 3MiB, sweepinterval: 2m}"},
            ProxyCacheConfig(3 * 1024**2, 120.0),
        ),
    ],
)
def test_env_overrides(
    tmp_path: Path, extra: str, env: dict[str, str], expected: ProxyCacheConfig
) -> None:
    config = load(tmp_path, extra, env)
    assert config.proxycache == expected
    assert config.warnings == ()


def test_env_unknown_key_is_ignored_with_a_warning(tmp_path: Path) -> None:
    config = load(tmp_path, "", {"REGISTRY_PROXYCACHE_COLOUR": "red"})
    assert config.proxycache == ProxyCacheConfig()
    assert config.warnings == (
        "ignoring environment variable REGISTRY_PROXYCACHE_COLOUR: no such configuration key",
    )


def test_unknown_key_is_an_error_with_a_suggestion(tmp_path: Path) -> None:
    # proxycache is Entrepot's own: a typo there cannot be a registry:2 key.
    message = error_of(tmp_path, "proxycache:\n  maxsize: 1GiB\n  sweepintervall: 5m\n")
    assert message == (
        "config key 'proxycache.sweepintervall' is not an Entrepot configuration key "
        "(did you mean 'proxycache.sweepinterval'?); fix or remove it (see the README's "
        "configuration table)"
    )
    assert "did you mean" not in error_of(tmp_path, "proxycache:\n  colour: red\n")


@pytest.mark.parametrize(
    ("extra", "env", "message"),
    [
        ("proxycache:\n  maxsize: 0\n", {}, "'proxycache.maxsize': must be at least 1 byte"),
        ("proxycache:\n  maxsize: 0GiB\n", {}, "'proxycache.maxsize': must be at least 1 byte"),
        ("proxycache:\n  maxsize: 0.1B\n", {}, "'proxycache.maxsize': must be at least 1 byte"),
        ("proxycache:\n  maxsize: -1\n", {}, "'proxycache.maxsize': must be at least 1 byte"),
        ("proxycache:\n  maxsize: -5GiB\n", {}, "'proxycache.maxsize': must be at least 1 byte"),
        ("proxycache:\n  maxsize: -0.1B\n", {}, "'proxycache.maxsize': must be at least 1 byte"),
        ("proxycache:\n  maxsize: 10GX\n", {}, "'proxycache.maxsize': unknown unit 'GX'"),
        ("proxycache:\n  maxsize: 10G\n", {}, "'proxycache.maxsize': unknown unit 'G'"),
        ("proxycache:\n  maxsize: 10 PB\n", {}, "'proxycache.maxsize': unknown unit 'PB'"),
        ("proxycache:\n  maxsize: 1.5\n", {}, "'proxycache.maxsize': expected a size"),
        ("proxycache:\n  maxsize: GiB\n", {}, "'proxycache.maxsize': expected a size"),
        ("proxycache:\n  maxsize: 1 2GiB\n", {}, "'proxycache.maxsize': expected a size"),
        ("proxycache:\n  maxsize: true\n", {}, "'proxycache.maxsize': expected a size"),
        ("proxycache:\n  maxsize: [1]\n", {}, "'proxycache.maxsize': expected a size"),
        ("proxycache:\n  sweepinterval: 0\n", {}, "'proxycache.sweepinterval' must be more"),
        ("proxycache:\n  sweepinterval: 0s\n", {}, "'proxycache.sweepinterval' must be more"),
        ("proxycache:\n  sweepinterval: -1m\n", {}, "'proxycache.sweepinterval' must not be"),
        ("proxycache:\n  sweepinterval: soon\n", {}, "'proxycache.sweepinterval': invalid"),
        ("proxycache: 100GiB\n", {}, "config key 'proxycache' must be a mapping"),
        ("", {"REGISTRY_PROXYCACHE_MAXSIZE": "0"}, "'proxycache.maxsize': must be at least"),
        ("", {"REGISTRY_PROXYCACHE_MAXSIZE": "9 XB"}, "'proxycache.maxsize': unknown unit 'XB'"),
        ("", {"REGISTRY_PROXYCACHE_SWEEPINTERVAL": "0"}, "'proxycache.sweepinterval' must be"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, extra: str, env: dict[str, str], message: str) -> None:
    assert message in error_of(tmp_path, extra, env)


PROXY_BLOCK = "proxy:\n  remoteurl: https://registry-1.docker.io\n"


@pytest.mark.parametrize(
    ("extra", "env", "mode"),
    [
        ("", {}, "auto"),
        (PROXY_BLOCK + "proxycache:\n  registry2store: cache\n", {}, "cache"),
        ("proxycache:\n  registry2store: Pushed\n", {}, "pushed"),
        (PROXY_BLOCK, {"REGISTRY_PROXYCACHE_REGISTRY2STORE": "cache"}, "cache"),
    ],
)
def test_registry2store(tmp_path: Path, extra: str, env: dict[str, str], mode: str) -> None:
    assert load(tmp_path, extra, env).proxycache.registry2store == mode


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("proxycache:\n  registry2store: cached\n", "'proxycache.registry2store'"),
        # Nothing could revalidate a cache without an upstream for plain names.
        ("proxycache:\n  registry2store: cache\n", "no upstream serves plain names"),
        (
            "proxies:\n  - {host: ghcr.io, remoteurl: 'https://ghcr.io'}\n"
            "proxycache:\n  registry2store: cache\n",
            "configure registry:2's proxy block",
        ),
    ],
)
def test_registry2store_errors(tmp_path: Path, extra: str, message: str) -> None:
    assert message in error_of(tmp_path, extra)
