"""``REGISTRY_*`` environment overrides, applied the way registry:2 applies them.

registry:2 (``configuration/parser.go``) takes every variable whose name starts with
``REGISTRY_``, in name order (``REGISTRY_STORAGE`` before
``REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY``), splits the rest on ``_`` and walks the
configuration with it; how, comes from the models' key declarations (``env_schema``):

* through a fixed section (a Go struct: a model) a part must match a key, upper-cased;
  an unknown part is ignored with a warning (``REGISTRY_PORT``, which Kubernetes sets
  for a service named "registry");
* through a free-form section (a Go map: ``storage``, ``auth`` (models marked ``OPEN``),
  ``log.fields``, ``http.headers``, keys not implemented yet) an existing key matching
  the part is followed, otherwise the part is added lower-cased; a known key keeps its
  shape, so ``REGISTRY_AUTH_BUILTIN_ACCESS_0_WHO`` works;
* through a list, the part is an index (``REGISTRY_PROXIES_0_HOST``); the list's length
  appends;
* the last part is set to the value parsed as YAML (``"true"`` is a boolean, ``"[a, b]"``
  a list); a string field (``proxy.password``) keeps the text as written when YAML reads
  a number, boolean or date, as go-yaml does (``0123`` stays "0123").

``version`` cannot be overridden (registry:2 reads it first). ``REGISTRY_STORAGE=filesystem``
(a driver name alone) replaces the whole ``storage`` section, as in registry:2; likewise
``REGISTRY_AUTH=htpasswd``. ``REGISTRY_CONFIGURATION_PATH`` names the configuration file.
The value of a variable that may hold a password or a password hash (ending in
``PASSWORD`` or ``SECRET``, ``REGISTRY_AUTH``, ``REGISTRY_AUTH_BUILTIN``,
``REGISTRY_AUTH_BUILTIN_USERS...``) never appears in an error message.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml

from entrepot.config.errors import ConfigError
from entrepot.config.schema import fields_of, nest, optional_of

__all__ = [
    "CONFIGURATION_PATH_ENV",
    "CONFIG_ENV",
    "METRICS_DIR_ENV",
    "PREFIX",
    "apply_env_overrides",
    "env_schema",
    "normalize_sections",
]

PREFIX = "REGISTRY_"
# registry:2 takes the config path from this variable when no argument is given.
CONFIGURATION_PATH_ENV = "REGISTRY_CONFIGURATION_PATH"
# The CLI passes the config file's absolute path to Granian's workers in this variable.
CONFIG_ENV = "ENTREPOT_CONFIG"
# The CLI makes a directory where every worker writes its metric values (prometheus-client's
# multiprocess mode, which reads this variable) and names it here.
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The CLI puts a random secret here when http.secret is not set, so that every worker
# signs and checks tokens and upload states alike.
SECRET_ENV = "ENTREPOT_SECRET"

# A schema node is a dict (fixed section: known keys only), or one of these markers.
_LEAF = "leaf"  # a scalar field: only settable as a whole
_STR = "str"  # a string field: a scalar keeps its text as written (see module doc)
_FREE = "free"  # a free-form mapping (or whatever value the file put there)
_LIST = "list"  # a list of free-form elements


@dataclass(frozen=True)
class _ListOf:
    """A list whose elements follow ``element``."""

    element: dict[str, Any]


@dataclass(frozen=True)
class _MapOf:
    """A free-form mapping (a Go map) some of whose keys have a known shape: a name in
    ``known`` follows its schema, any other name is free-form."""

    known: dict[str, Any]


_Schema = dict[str, Any] | _ListOf | _MapOf | str


def env_schema(model: type) -> dict[str, Any] | _MapOf:
    """The override schema of ``model``, derived from its key declarations: a model is a
    fixed section (a free-form map if ``OPEN``), its ``NOT_IMPLEMENTED`` keys free-form."""
    tree: dict[str, Any] = {}
    for f in fields_of(model):
        nest(tree, f.key.path, _node(optional_of(f.hint)))
    for name in getattr(model, "NOT_IMPLEMENTED", ()):
        nest(tree, name, _FREE)
    return _MapOf(tree) if getattr(model, "OPEN", False) else tree


def _node(hint: Any) -> _Schema:
    if dataclasses.is_dataclass(hint):
        return env_schema(hint)  # type: ignore[arg-type]
    if get_origin(hint) in (tuple, list):
        element = get_args(hint)[0]
        if dataclasses.is_dataclass(element):
            schema = env_schema(element)  # type: ignore[arg-type]
            return _ListOf(schema if isinstance(schema, dict) else schema.known)
        return _LIST
    if get_origin(hint) is dict:
        return _FREE
    return _STR if hint in (str, Path) else _LEAF


class _Ignored(Exception):
    """The variable does not address anything; registry:2 ignores it with a warning."""


@dataclass(frozen=True)
class _Payload:
    """A variable's value: ``parsed`` from YAML, and the ``raw`` text; ``trail``: the keys
    and list indices the walk took to where it is set."""

    name: str
    raw: str
    parsed: Any
    trail: list[str | int] = dataclasses.field(default_factory=list)

    def key_path(self) -> str:
        """Where the value was set, written as config errors name keys: ``a.b[0].c``."""
        text = ""
        for step in self.trail:
            text += f"[{step}]" if isinstance(step, int) else f".{step}" if text else step
        return text

    def for_field(self, schema: _Schema) -> Any:
        """The value to store in a field of ``schema``: a string field keeps a scalar's
        text as written, as go-yaml does when it decodes into a Go string."""
        if schema != _STR or self.parsed is None or isinstance(self.parsed, str):
            return self.parsed
        if isinstance(self.parsed, dict | list):
            raise ConfigError(f"environment variable {self.name}: expected a single value")
        return self.raw.strip()


def apply_env_overrides(
    tree: dict[str, Any],
    environ: Mapping[str, str],
    schema: dict[str, Any],
    origins: dict[str, str] | None = None,
) -> list[str]:
    """Apply ``REGISTRY_*`` variables from ``environ`` to ``tree`` in place.

    Returns warnings for variables that were ignored; ``origins`` receives the key path
    each variable set (``storage.delete.enabled`` -> its name). Raises ``ConfigError`` for
    a value that is not valid YAML or a bad list index (registry:2 refuses to start then).
    """
    warnings: list[str] = []
    for name in sorted(environ):
        if not name.startswith(PREFIX) or name == CONFIGURATION_PATH_ENV:
            continue
        parts = name[len(PREFIX) :].split("_")
        if parts == ["VERSION"]:
            warnings.append(
                f"environment variable {name} is ignored: the config version comes "
                "from the config file"
            )
            continue
        try:
            payload = _Payload(name, environ[name], _parse_yaml(name, environ[name]))
            _overwrite(tree, schema, parts, payload)
            if origins is not None:
                origins[payload.key_path()] = name
        except _Ignored as exc:
            warnings.append(f"ignoring environment variable {name}: {exc}")
        normalize_sections(tree)
    return warnings


def normalize_sections(tree: dict[str, Any]) -> None:
    """``storage: filesystem`` (a bare driver name) means ``storage: {filesystem: {}}``,
    and ``auth: htpasswd`` means ``auth: {htpasswd: {}}``, as in registry:2."""
    for name in ("storage", "auth"):
        value = tree.get(name)
        if isinstance(value, str) and value:
            tree[name] = {value: {}}


def _is_secret(name: str) -> bool:
    """Whether the variable's value may hold a password or a password hash (users of
    ``auth.builtin``, also when the whole section is set at once)."""
    return (
        name.endswith(("PASSWORD", "SECRET"))
        or name in (f"{PREFIX}AUTH", f"{PREFIX}AUTH_BUILTIN")
        or name.startswith(f"{PREFIX}AUTH_BUILTIN_USERS")
    )


def _parse_yaml(name: str, value: str) -> Any:
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError as exc:
        # The parser's message quotes the value: not for a secret.
        detail = "" if _is_secret(name) else f": {exc}"
        raise ConfigError(f"environment variable {name}: value is not valid YAML{detail}") from None


def _overwrite(value: Any, schema: _Schema, parts: list[str], payload: _Payload) -> Any:
    """Return ``value`` with ``payload`` set at ``parts`` below it (may mutate ``value``)."""
    if not parts or not parts[0]:
        raise _Ignored("empty key name")
    if isinstance(schema, dict):
        return _overwrite_fixed(value, schema, parts, payload)
    if isinstance(schema, _ListOf):
        if value is not None and not isinstance(value, list):
            raise _Ignored("the section it points into is not a list")
        return _overwrite_list(value or [], schema.element, parts, payload)
    if isinstance(schema, _MapOf):
        return _overwrite_map(value, schema, parts, payload)
    if schema in (_LEAF, _STR):
        raise _Ignored(f"{parts[0].lower()!r} is below a single value")
    if isinstance(value, list) or (value is None and schema == _LIST):
        return _overwrite_list(value or [], _FREE, parts, payload)
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise _Ignored(f"{parts[0].lower()!r} is below a single value")
    return _overwrite_free(value, parts, payload)


def _overwrite_fixed(
    value: Any, schema: dict[str, Any], parts: list[str], payload: _Payload
) -> Any:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise _Ignored("the section it points into is not a mapping")
    key = next((k for k in schema if k.upper() == parts[0]), None)
    if key is None:
        raise _Ignored("no such configuration key")
    payload.trail.append(key)
    if len(parts) == 1:
        value[key] = payload.for_field(schema[key])
    else:
        value[key] = _overwrite(value.get(key), schema[key], parts[1:], payload)
    return value


def _overwrite_map(value: Any, schema: _MapOf, parts: list[str], payload: _Payload) -> Any:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise _Ignored("the section it points into is not a mapping")
    head, rest = parts[0], parts[1:]
    key = next((k for k in value if str(k).upper() == head), None)
    if key is None:
        key = next((k for k in schema.known if k.upper() == head), head.lower())
    element = schema.known.get(str(key).lower(), _FREE)
    payload.trail.append(str(key))
    if rest:
        value[key] = _overwrite(value.get(key), element, rest, payload)
    else:
        value[key] = payload.for_field(element)
    return value


def _overwrite_free(value: dict[Any, Any], parts: list[str], payload: _Payload) -> Any:
    head, rest = parts[0], parts[1:]
    if rest:
        for key, existing in value.items():
            if str(key).upper() == head and existing is not None:
                payload.trail.append(str(key))
                value[key] = _overwrite(existing, _FREE, rest, payload)
                return value
    payload.trail.append(head.lower())
    value[head.lower()] = _overwrite(None, _FREE, rest, payload) if rest else payload.parsed
    return value


def _overwrite_list(value: list[Any], element: _Schema, parts: list[str], payload: _Payload) -> Any:
    head, rest = parts[0], parts[1:]
    name = payload.name
    if not head.isdigit():
        raise ConfigError(f"environment variable {name}: non-numeric list index {head!r}")
    index = int(head)
    if index > len(value):
        raise ConfigError(
            f"environment variable {name}: list index {index} is past the end "
            f"(the list has {len(value)} item(s))"
        )
    if index == len(value):
        value.append(None)
    payload.trail.append(index)
    value[index] = _overwrite(value[index], element, rest, payload) if rest else payload.parsed
    return value
