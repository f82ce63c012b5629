"""One declaration per configuration key: the models' fields say everything.

A model is a frozen dataclass whose fields are declared with ``key(path, default,
doc=...)``; from these declarations alone ``parse_section`` reads YAML (the type from the
annotation: bool, int, str, Path, float = a registry:2 duration (a bare integer: an
error in ``OWN`` models, see ``_duration``), lists, maps, models,
``X | None``; an empty value is the default, as in registry:2), unknown keys are reported
with a "did you mean" (a warning in registry:2's sections, an error in models marked
``OWN``; keys in ``NOT_IMPLEMENTED`` warn "not implemented yet"), ``environ`` derives the
``REGISTRY_*`` schema, ``effective`` gives the configuration with secrets masked and
``key_table`` the README's table. A model's optional ``checked(self, at)`` returns what is
stored (cross-field rules, derived fields); its optional classmethod ``accept(at)`` sees
the raw mapping before any field is read.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints
from urllib.parse import SplitResult, urlsplit

from entrepot.config.durations import format_duration, parse_duration, with_unit
from entrepot.config.errors import ConfigError

__all__ = [
    "At",
    "Key",
    "absolute_url",
    "as_str",
    "derived",
    "effective",
    "fields_of",
    "format_duration",
    "is_empty",
    "key",
    "key_table",
    "nest",
    "optional_of",
    "parse_section",
    "scalar_text",
]

MASK = "********"


@dataclass(frozen=True)
class Key:
    """What a field declares about its key (see ``key``)."""

    path: str
    doc: str
    secret: bool = False
    parse: Callable[[Any, str], Any] | None = None
    present: bool = False
    choices: tuple[str, ...] = ()
    lower: bool = False


def key(
    path: str,
    default: Any = dataclasses.MISSING,
    *,
    doc: str,
    factory: Callable[[], Any] | None = None,
    secret: bool = False,
    parse: Callable[[Any, str], Any] | None = None,
    present: bool = False,
    choices: tuple[str, ...] = (),
    lower: bool = False,
) -> Any:
    """Declare a field read from the key ``path``. ``parse(value, key_path)`` replaces
    the type's own parsing; ``present``: a key given with an empty value still counts
    (for a model: it is read from an empty mapping); ``choices``: the allowed values
    (after lower-casing when ``lower``); a ``secret`` never appears in output."""
    meta = {"key": Key(path, doc, secret, parse, present, choices, lower)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta, repr=not secret)
    return field(default=default, metadata=meta, repr=not secret)


def derived(default: Any = None) -> Any:
    """A field computed by the model's ``checked`` from its keys, not a key itself."""
    return field(default=default)


@dataclass
class At:
    """Where parsing is: the key path of the mapping being read, and what it reports."""

    path: str
    warnings: list[str]
    environ: Mapping[str, str]
    raw: dict[Any, Any] = field(default_factory=dict)
    own: bool = False  # in a model marked ``OWN``: Entrepot's own keys

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def below(self, path: str, raw: dict[Any, Any] | None = None) -> At:
        return At(path, self.warnings, self.environ, raw or {})


@dataclass(frozen=True)
class _Field:
    name: str
    key: Key
    hint: Any


def fields_of(cls: type) -> Iterator[_Field]:
    """The declared key fields of model ``cls`` (derived fields are left out)."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if "key" in f.metadata:
            yield _Field(f.name, f.metadata["key"], hints[f.name])


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def nest(tree: dict[str, Any], path: str, value: Any) -> None:
    """Set ``tree[a][b][c] = value`` for ``path`` "a.b.c", making the mappings between."""
    *parents, last = path.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[last] = value


def optional_of(hint: Any) -> Any:
    """``X`` for ``X | None``, else ``hint``."""
    if get_origin(hint) in (Union, types.UnionType):
        return next(a for a in get_args(hint) if a is not type(None))
    return hint


@functools.cache
def _tree(cls: type) -> dict[str, Any]:
    """Key name -> _Field, or a dict for an intermediate mapping (``delete.enabled``)."""
    tree: dict[str, Any] = {}
    for f in fields_of(cls):
        nest(tree, f.key.path, f)
    return tree


def _flag(cls: type, name: str) -> Any:
    return getattr(cls, name, ())


def parse_section(cls: type, raw: Any, at: At) -> Any:
    """Read the mapping ``raw`` at ``at.path`` into model ``cls``; raises ``ConfigError``."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config key '{at.path}' must be a mapping, got {raw!r}")
    at = at.below(at.path, raw)
    at.own = bool(_flag(cls, "OWN"))
    accept = getattr(cls, "accept", None)
    if accept is not None:
        accept(at)
    values: dict[str, Any] = {}
    _read(cls, _tree(cls), raw, at, "", values)
    model = cls(**values)
    checked = getattr(model, "checked", None)
    return model if checked is None else checked(at)


def _read(
    cls: type, tree: dict[str, Any], raw: dict[Any, Any], at: At, rel: str, out: dict[str, Any]
) -> None:
    for name, node in tree.items():
        value = raw.get(name)
        value = None if value == "" else value
        path = at.key(f"{rel}{name}")
        if isinstance(node, dict):
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"config key '{path}' must be a mapping, got {value!r}")
            _read(cls, node, value or {}, at, f"{rel}{name}.", out)
        elif value is not None or (node.key.present and name in raw):
            out[node.name] = _value(node.hint, value, path, at, node.key)
    for name, value in raw.items():
        if str(name) not in tree and not is_empty(value):
            _unknown(cls, f"{rel}{name}", at, sorted(tree))


def _unknown(cls: type, rel: str, at: At, known: list[str]) -> None:
    full = at.key(rel)
    if rel in _flag(cls, "NOT_IMPLEMENTED"):
        at.warn(f"config key '{full}' is not implemented yet and is ignored")
        return
    if getattr(cls, "OPEN", False) and "." not in rel:  # a Go map: the model decides
        return
    *parents, last = rel.split(".")
    candidates = known + [n.rsplit(".", 1)[-1] for n in _flag(cls, "NOT_IMPLEMENTED")]
    close = difflib.get_close_matches(last, candidates, n=1)
    hint = f" (did you mean '{at.key('.'.join([*parents, close[0]]))}'?)" if close else ""
    if getattr(cls, "OWN", False):
        raise ConfigError(
            f"config key '{full}' is not an Entrepot configuration key{hint}; "
            "fix or remove it (see the README's configuration table)"
        )
    at.warn(f"config key '{full}' is not a registry:2 configuration key and is ignored{hint}")


def _value(hint: Any, value: Any, path: str, at: At, decl: Key | None = None) -> Any:
    if decl is not None and decl.parse is not None:
        return decl.parse(value, path)
    hint = optional_of(hint)
    origin, args = get_origin(hint), get_args(hint)
    if dataclasses.is_dataclass(hint):
        return parse_section(hint, value, at.below(path))  # type: ignore[arg-type]
    if origin in (tuple, list):
        if value is None:
            return origin()
        if not isinstance(value, list):
            if dataclasses.is_dataclass(args[0]):
                names = ", ".join(f.key.path for f in fields_of(args[0]))  # type: ignore[arg-type]
                raise ConfigError(f"config key '{path}' must be a list, each item with {names}")
            raise ConfigError(f"config key '{path}' must be a list, got {value!r}")
        return origin(_value(args[0], item, f"{path}[{i}]", at) for i, item in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{path}' must be a mapping, got {value!r}")
        return {
            scalar_text(k): _value(
                args[1], "" if v is None and args[1] is str else v, f"{path}.{k}", at
            )
            for k, v in value.items()
        }
    return _scalar(hint, value, path, at, decl)


def _scalar(hint: Any, value: Any, path: str, at: At, decl: Key | None) -> Any:
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{path}' must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{path}' must be an integer, got {value!r}")
        return value
    if hint is float:  # every float of the configuration is a duration, in seconds
        return _duration(value, path, at)
    if decl is not None and decl.secret and isinstance(value, dict | list):
        raise ConfigError(f"config key '{path}' must be a single value (not shown: a secret)")
    text = as_str(value, path)
    if decl is not None and decl.lower:
        text = text.lower()
    if decl is not None and decl.choices and text not in decl.choices:
        raise ConfigError(
            f"config key '{path}': {text!r} is not supported; use one of {', '.join(decl.choices)}"
        )
    return Path(text) if hint is Path else text


def _duration(value: Any, path: str, at: At) -> float:
    """A duration in seconds. A bare integer (but 0) is refused in Entrepot's own keys; in
    registry:2's it is nanoseconds, as registry:2 reads it, with a warning when that is
    under a second (no one means that)."""
    bare = isinstance(value, int) and not isinstance(value, bool) and value > 0
    if bare and at.own:
        raise ConfigError(f"config key '{path}': {value} has no unit; {with_unit(value)}")
    if bare and value < 10**9:
        at.warn(
            f"config key '{path}': {value} is read as {value}ns, as registry:2 reads it; "
            f"did you mean {value}s, {value}m or {value}h?"
        )
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise ConfigError(f"config key '{path}': {exc}") from exc
    if seconds < 0:
        raise ConfigError(f"config key '{path}' must not be negative")
    return seconds


def is_empty(value: Any) -> bool:
    """Whether a value asks for nothing (then an unknown key is not reported)."""
    if isinstance(value, dict):
        return all(is_empty(v) for v in value.values())
    if isinstance(value, list):
        return not value
    return value is None or value is False or value == ""


def scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def as_str(value: Any, key_path: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return scalar_text(value)
    raise ConfigError(f"config key '{key_path}' must be a single value, got {value!r}")


def effective(model: Any) -> dict[str, Any]:
    """``model`` as the YAML mapping it stands for, defaults included, secrets masked."""
    out: dict[str, Any] = {}
    for f in fields_of(type(model)):
        value = getattr(model, f.name)
        if value is None or value == () or value == {} or value == []:
            continue
        nest(out, f.key.path, MASK if f.key.secret else _plain(value))
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return effective(value)
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not isinstance(value, bool):
        return format_duration(value)
    return value


def key_table(cls: type) -> str:
    """The Markdown table of every key of model ``cls``, for the README."""
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]
    lines += [f"| {p} | {d} | {doc} |" for p, d, doc in _rows(cls, "")]
    return "\n".join(lines) + "\n"


def _rows(cls: type, prefix: str) -> Iterator[tuple[str, str, str]]:
    defaults = {f.name: f for f in dataclasses.fields(cls)}
    for f in fields_of(cls):
        path = prefix + f.key.path
        hint = optional_of(f.hint)
        listed = get_origin(hint) in (tuple, list)
        model = get_args(hint)[0] if listed else hint
        if dataclasses.is_dataclass(model):
            suffix = "[N]" if listed else ""
            if f.key.doc:
                yield f"`{path}{suffix}`", "", f.key.doc
            yield from _rows(model, f"{path}{suffix}.")  # type: ignore[arg-type]
            continue
        yield f"`{path}`", _default_text(defaults[f.name]), f.key.doc
    missing = [f"`{prefix}{name}`" for name in _flag(cls, "NOT_IMPLEMENTED")]
    if missing:
        yield ", ".join(missing), "", "not implemented yet: a warning names the key"


def _default_text(f: dataclasses.Field[Any]) -> str:
    if f.default is dataclasses.MISSING:
        return "(required)" if f.default_factory is dataclasses.MISSING else ""
    value = f.default
    if value in (None, "", (), Path()):
        return ""
    if isinstance(value, float):
        return format_duration(value)
    return f"`{scalar_text(value)}`"


def absolute_url(key_path: str, value: str, example: str) -> SplitResult:
    """``value`` split, if it is an absolute http(s) URL with a valid port; else the
    config error naming ``key_path`` (with ``example`` of what is expected)."""
    parts = urlsplit(value)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"config key '{key_path}': {value!r} is not an absolute http or https URL "
            f"(such as {example})"
        )
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ConfigError(f"config key '{key_path}': {value!r} has an invalid port") from None
    return parts
