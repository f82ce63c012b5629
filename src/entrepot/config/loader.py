"""Reading registry:2's ``config.yml`` into the models, with ``REGISTRY_*`` overrides.

Deliberate differences from registry:2 (2.8), all refusing or reporting rather than
silently misbehaving: unknown keys are reported (a warning with a suggestion; an error in
Entrepot's own sections), values of the wrong type are errors, an absent ``http.addr`` is
":5000" (not a random port), upload purging keys left out take their defaults, ``auth``
files must be readable now and ``auth.silly`` is refused, and ``proxy`` makes the
registry a mirror beside its own repositories, not a read-only cache.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import re
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
# The key an error or warning is about, as every one names it first.
_KEY_NAMED = re.compile(r"config key '([^']+)'")

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
    origins: dict[str, str] = {}
    warnings = apply_env_overrides(tree, environ, _env_schema(), origins)
    try:
        config: Config = parse_section(Config, tree, At("", warnings, environ))
    except ConfigError as exc:
        raise ConfigError(_naming_variable(str(exc), origins)) from None
    said = tuple(_naming_variable(warning, origins) for warning in warnings)
    return dataclasses.replace(config, warnings=said)


def _naming_variable(message: str, origins: dict[str, str]) -> str:
    """``message`` about a config key, with the ``REGISTRY_*`` variable that set the key
    (or a section above it) named: the file may not even have the key."""
    found = _KEY_NAMED.search(message)
    if found is None:
        return message
    named = found[1]
    for path, variable in sorted(origins.items(), key=lambda item: -len(item[0])):
        below = named == path or named.startswith((f"{path}.", f"{path}["))
        if below and variable not in message:
            return f"{message} (from {variable})"
    return message


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
