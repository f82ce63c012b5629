"""Reading and validating registry:2's ``config.yml``.

Deliberate differences from registry:2 (2.8), all in the direction of refusing or
reporting rather than silently misbehaving:

* keys Entrepot does not implement, and keys registry:2 does not know, are reported in
  ``Config.warnings`` (registry:2 silently ignores unknown keys). A key whose value is
  empty, null or false is not reported: it asks for nothing.
* a value of the wrong type is an error (registry:2 sometimes panics, sometimes
  silently ignores it, e.g. a quoted ``delete: {enabled: "true"}``).
* ``http.addr`` is validated here; an absent ``http.addr`` means ":5000" (registry:2
  would listen on a random port).
* upload purging keys left out of a present ``uploadpurging`` section take their
  defaults (registry:2 panics), and integer durations are accepted there (nanoseconds).
* ``auth`` is read by ``authconf``: its files must be readable at load time,
  ``auth.silly`` and access controllers Entrepot does not know are errors (an open
  registry where the operator asked for access control is worse than none), and
  Entrepot adds ``auth.builtin``, its own token service.
* ``proxy`` (registry:2's single upstream) does not turn the registry into a read-only
  cache: it is the mirror among Entrepot's upstreams, beside ``proxies`` (see
  ``proxies``); ``proxy.ttl`` is accepted with a warning.
* ``proxycache`` (Entrepot's own) limits the cache's total size (see ``proxycache``).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from entrepot.config.authconf import parse_auth
from entrepot.config.environ import apply_env_overrides, normalize_sections
from entrepot.config.errors import ConfigError
from entrepot.config.httpconf import parse_http
from entrepot.config.model import (
    DEFAULT_ROOTDIRECTORY,
    Config,
    HealthConfig,
    LogConfig,
    StorageConfig,
    StorageHealth,
    UploadPurging,
)
from entrepot.config.proxies import parse_proxies
from entrepot.config.proxycache import parse_proxycache
from entrepot.config.s3conf import parse_s3
from entrepot.config.sections import Section, as_str, scalar_text

__all__ = ["SUPPORTED_STORAGE_DRIVERS", "load_config"]

SUPPORTED_STORAGE_DRIVERS = ("filesystem", "s3")
SUPPORTED_VERSION = "0.1"
_LOG_LEVELS = ("error", "warn", "info", "debug")
_LOG_FORMATTERS = ("text", "json", "logstash")
# Keys below ``storage`` that are not a driver name (as in registry:2).
_STORAGE_SECTIONS = ("maintenance", "cache", "delete", "redirect", "tag")

_DEFAULT_TREE: dict[str, Any] = {
    "version": SUPPORTED_VERSION,
    "storage": {"filesystem": {"rootdirectory": str(DEFAULT_ROOTDIRECTORY)}},
    "http": {"addr": ":5000"},
}


def load_config(path: str | Path | None, environ: Mapping[str, str] = os.environ) -> Config:
    """Load registry:2's config.yml at ``path`` and apply ``REGISTRY_*`` overrides.

    ``path=None`` starts from the defaults (filesystem storage in /var/lib/registry,
    port 5000) instead of a file; ``REGISTRY_*`` overrides still apply to them.
    Raises ``ConfigError``; ignored keys are listed in ``Config.warnings``.
    """
    tree = copy.deepcopy(_DEFAULT_TREE) if path is None else _read_yaml(Path(path))
    version = _version(tree.get("version"))
    normalize_sections(tree)
    warnings = apply_env_overrides(tree, environ)
    root = Section(tree, "", warnings)
    root.take("version")
    auth = parse_auth(root.section("auth"))
    log = _log(root.section("log"), root.take("loglevel"))
    storage = _storage(root, warnings)
    http = parse_http(root.section("http"))
    health = _health(root.section("health"))
    proxies = parse_proxies(root, environ)
    proxycache = parse_proxycache(root.section("proxycache"))
    root.finish()
    return Config(
        version=version,
        log=log,
        storage=storage,
        http=http,
        health=health,
        proxies=proxies,
        proxycache=proxycache,
        auth=auth,
        warnings=tuple(warnings),
    )


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read config file {path}: not UTF-8 text") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, not a list or value")
    return data


def _version(value: Any) -> str:
    if value is None or value == "":
        raise ConfigError(f"config key 'version' is required (use version: {SUPPORTED_VERSION})")
    text = scalar_text(value)
    if text != SUPPORTED_VERSION:
        raise ConfigError(
            f"config key 'version': unsupported version {text!r}; expected {SUPPORTED_VERSION}"
        )
    return text


def _log(section: Section, loglevel: Any) -> LogConfig:
    level = section.get_str("level") or (as_str(loglevel, "loglevel") if loglevel else "info")
    level = level.lower()
    if level not in _LOG_LEVELS:
        raise ConfigError(
            f"config key '{section.key('level')}': invalid level {level!r}; "
            f"must be one of {', '.join(_LOG_LEVELS)}"
        )
    formatter = section.get_str("formatter")
    if formatter is not None and formatter not in _LOG_FORMATTERS:
        raise ConfigError(
            f"config key '{section.key('formatter')}': unsupported formatter {formatter!r}; "
            f"must be one of {', '.join(_LOG_FORMATTERS)}"
        )
    fields_section = section.section("fields")
    fields = {
        str(k): scalar_text(v) if v is not None else "" for k, v in fields_section.data.items()
    }
    accesslog = section.section("accesslog")
    accesslog_disabled = accesslog.get_bool("disabled", False)
    accesslog.finish()
    section.finish()
    return LogConfig(
        level=level, formatter=formatter, fields=fields, accesslog_disabled=accesslog_disabled
    )


def _storage(root: Section, warnings: list[str]) -> StorageConfig:
    raw = root.take("storage")
    if raw is None:
        raise ConfigError("config key 'storage' is required: no storage driver is configured")
    section = Section(raw, "storage", warnings)
    drivers = sorted(str(k) for k in section.data if k not in _STORAGE_SECTIONS)
    if len(drivers) > 1:
        raise ConfigError(
            f"config key 'storage' configures more than one storage driver "
            f"({', '.join(drivers)}); configure exactly one"
        )
    if not drivers:
        raise ConfigError("config key 'storage' names no storage driver; supported: filesystem, s3")
    driver = drivers[0]
    if driver not in SUPPORTED_STORAGE_DRIVERS:
        raise ConfigError(
            f"storage driver {driver!r} is not supported yet; "
            f"supported: {', '.join(SUPPORTED_STORAGE_DRIVERS)}"
        )
    params = section.section(driver)
    s3 = parse_s3(params) if driver == "s3" else None
    root_dir = None if s3 else params.get_str("rootdirectory")
    params.finish()

    delete = section.section("delete")
    delete_enabled = delete.get_bool("enabled", False)
    delete.finish()

    redirect = section.section("redirect")
    redirect_disabled = redirect.get_bool("disable", False)
    redirect.finish()

    cache = section.section("cache")
    kind = cache.get_str("blobdescriptor")
    layerinfo = cache.get_str("layerinfo")  # registry:2's deprecated name for it
    kind = kind if kind is not None else layerinfo
    blobdescriptor_cache: str | None = None
    if kind == "inmemory":
        blobdescriptor_cache = "inmemory"
    elif kind == "redis":
        warnings.append(
            "config key 'storage.cache.blobdescriptor: redis' is not implemented yet and is "
            "ignored; no blob descriptor cache is used"
        )
    elif kind is not None:
        warnings.append(
            f"config key 'storage.cache.blobdescriptor': unknown cache type {kind!r}, "
            "caching disabled"
        )
    cache.finish()

    maintenance = section.section("maintenance")
    purging = _uploadpurging(maintenance.section("uploadpurging"))
    readonly_section = maintenance.section("readonly")
    readonly = readonly_section.get_bool("enabled", False)
    readonly_section.finish()
    maintenance.finish()
    section.finish()
    return StorageConfig(
        driver=driver,
        rootdirectory=Path(root_dir) if root_dir else DEFAULT_ROOTDIRECTORY,
        delete_enabled=delete_enabled,
        blobdescriptor_cache=blobdescriptor_cache,
        redirect_disabled=redirect_disabled,
        uploadpurging=purging,
        readonly=readonly,
        s3=s3,
    )


def _uploadpurging(section: Section) -> UploadPurging:
    default = UploadPurging()
    enabled = section.get_bool("enabled", True)
    purging = UploadPurging(
        enabled=enabled,
        age_s=section.duration("age", default.age_s),
        interval_s=section.duration("interval", default.interval_s),
        dryrun=section.get_bool("dryrun", False),
    )
    if enabled and purging.interval_s == 0:
        raise ConfigError(f"config key '{section.key('interval')}' must be more than 0")
    section.finish()
    return purging


def _health(section: Section) -> HealthConfig:
    driver = section.section("storagedriver")
    check = StorageHealth(
        enabled=driver.get_bool("enabled", False),
        interval_s=driver.duration("interval", 0.0) or 10.0,
        threshold=driver.get_int("threshold", 0) or 1,
    )
    if check.threshold < 0:
        raise ConfigError("config key 'health.storagedriver.threshold' must not be negative")
    driver.finish()
    section.finish()
    return HealthConfig(storagedriver=check)
