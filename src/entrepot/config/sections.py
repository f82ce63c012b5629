"""Reading one mapping of the configuration tree, reporting the keys nobody read."""

from __future__ import annotations

from typing import Any
from urllib.parse import SplitResult, urlsplit

from entrepot.config.durations import parse_duration
from entrepot.config.errors import ConfigError

__all__ = ["NOT_IMPLEMENTED", "Section", "absolute_url", "as_str", "is_empty", "scalar_text"]

# registry:2 keys Entrepot will implement later: reported as "not implemented yet".
NOT_IMPLEMENTED: dict[str, tuple[str, ...]] = {
    "": (
        "middleware",
        "reporting",
        "notifications",
        "redis",
        "compatibility",
        "validation",
        "policy",
        "catalog",
    ),
    "log": ("hooks",),
    "storage": ("tag",),
    "storage.filesystem": ("maxthreads",),
    "storage.s3": ("objectacl", "useragent", "usedualstack", "accelerate", "loglevel"),
    "storage.cache": ("blobdescriptorsize",),
    "http": ("relativeurls", "draintimeout", "http2", "h2c"),
    "http.tls": ("ciphersuites", "clientauth", "letsencrypt"),
    "http.debug": ("prometheus",),
    "health": ("file", "http", "tcp"),
    "auth.token": ("autoredirect", "autoredirectpath", "jwks", "signingalgorithms"),
}


class Section:
    """A mapping being read: remembers which keys were used, reports the rest."""

    def __init__(self, data: Any, path: str, warnings: list[str]) -> None:
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"config key '{path}' must be a mapping, got {data!r}")
        self.data: dict[Any, Any] = data or {}
        self.path = path
        self.warnings = warnings
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def take(self, name: str) -> Any:
        self.used.add(name)
        value = self.data.get(name)
        return None if value == "" else value

    def section(self, name: str) -> Section:
        return Section(self.take(name), self.key(name), self.warnings)

    def get_str(self, name: str) -> str | None:
        value = self.take(name)
        return None if value is None else as_str(value, self.key(name))

    def get_bool(self, name: str, default: bool) -> bool:
        value = self.take(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{self.key(name)}' must be true or false, got {value!r}")
        return value

    def get_int(self, name: str, default: int) -> int:
        value = self.take(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{self.key(name)}' must be an integer, got {value!r}")
        return value

    def duration(self, name: str, default: float) -> float:
        value = self.take(name)
        if value is None:
            return default
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise ConfigError(f"config key '{self.key(name)}': {exc}") from exc
        if seconds < 0:
            raise ConfigError(f"config key '{self.key(name)}' must not be negative")
        return seconds

    def str_list(self, name: str) -> list[str]:
        value = self.take(name)
        if value is None:
            return []
        if not isinstance(value, list):
            raise ConfigError(f"config key '{self.key(name)}' must be a list, got {value!r}")
        return [as_str(item, f"{self.key(name)}[{i}]") for i, item in enumerate(value)]

    def finish(self) -> None:
        """Warn about every key of this mapping that nothing read."""
        skip = self.used
        not_implemented = NOT_IMPLEMENTED.get(self.path, ())
        for name, value in self.data.items():
            if str(name) in skip or is_empty(value):
                continue
            full = self.key(str(name))
            if name in not_implemented:
                self.warnings.append(f"config key '{full}' is not implemented yet and is ignored")
            else:
                self.warnings.append(
                    f"config key '{full}' is not a registry:2 configuration key and is ignored"
                )


def is_empty(value: Any) -> bool:
    if isinstance(value, dict):
        return all(is_empty(v) for v in value.values())
    if isinstance(value, list):
        return not value
    return value is None or value is False or value == ""


def scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def as_str(value: Any, key: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return scalar_text(value)
    raise ConfigError(f"config key '{key}' must be a single value, got {value!r}")


def absolute_url(key: str, value: str, example: str) -> SplitResult:
    """``value`` split, if it is an absolute http(s) URL with a valid port; else the
    config error naming ``key`` (with ``example`` of what is expected)."""
    parts = urlsplit(value)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"config key '{key}': {value!r} is not an absolute http or https URL "
            f"(such as {example})"
        )
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ConfigError(f"config key '{key}': {value!r} has an invalid port") from None
    return parts
