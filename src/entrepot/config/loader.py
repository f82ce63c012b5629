"""Reading and validating registry:2's ``config.yml``.

Deliberate differences from registry:2 (2.8), all in the direction of refusing or
reporting rather than silently misbehaving:

* keys Entrepot does not implement, and keys registry:2 does not know, are reported in
  ``Config.warnings`` with a "did you mean" suggestion (registry:2 silently ignores
  unknown keys); an unknown key in Entrepot's own sections (``proxies``, ``proxycache``,
  ``auth.builtin``) is an error. A key whose value is empty, null or false is not
  reported: it asks for nothing.
* a value of the wrong type is an error (registry:2 sometimes panics, sometimes
  silently ignores it, e.g. a quoted ``delete: {enabled: "true"}``).
* ``http.addr`` is validated here; an absent ``http.addr`` means ":5000" (registry:2
  would listen on a random port).
* upload purging keys left out of a present ``uploadpurging`` section take their
  defaults (registry:2 panics), and integer durations are accepted there (nanoseconds).
* ``auth``: its files must be readable at load time, ``auth.silly`` and access
  controllers Entrepot does not know are errors (an open registry where the operator
  asked for access control is worse than none), and Entrepot adds ``auth.builtin``.
* ``proxy`` (registry:2's single upstream) does not turn the registry into a read-only
  cache: it is the mirror among Entrepot's upstreams, beside ``proxies``; ``proxy.ttl``
  is accepted with a warning.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from entrepot.config.environ import apply_env_overrides, env_schema, normalize_sections
from entrepot.config.errors import ConfigError
from entrepot.config.model import DEFAULT_ROOTDIRECTORY, Config
from entrepot.config.schema import At, parse_section, scalar_text

__all__ = ["load_config"]

SUPPORTED_VERSION = "0.1"

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
    _version(tree.get("version"))
    normalize_sections(tree)
    warnings = apply_env_overrides(tree, environ, _env_schema())
    config: Config = parse_section(Config, tree, At("", warnings, environ))
    return dataclasses.replace(config, warnings=tuple(warnings))


@functools.cache
def _env_schema() -> dict[str, Any]:
    schema = env_schema(Config)
    assert isinstance(schema, dict)
    return schema


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
