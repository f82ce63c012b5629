"""``proxycache``: Entrepot's own limits on the pull-through cache (not in registry:2).

``maxsize`` is an integer number of bytes or a number with a unit: B, KB, MB, GB, TB
(powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024). The unit's letters are
case-insensitive, a space may separate it from the number (``"500 MB"``) and the number
may have a fraction (``1.5GiB``; a fraction of a byte is dropped). It must be at least
one byte; absent (or empty) means no cap. ``sweepinterval`` is a duration like
registry:2's (``10m``), with a unit (Entrepot's own key) and more than 0.

``registry2store`` says what the repositories under plain names (``library/nginx``) of
a registry:2 store were, decided when Entrepot first opens the store: ``auto`` (registry:2
in proxy mode refuses pushes, so with a mirror upstream configured they were its cache),
``cache`` or ``pushed`` (see proxy/registry2_store.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar

from entrepot.config.errors import ConfigError
from entrepot.config.schema import At, key

__all__ = [
    "REGISTRY2_STORE_MODES",
    "SIZE_UNITS",
    "PrefetchConfig",
    "ProxyCacheConfig",
    "parse_size",
]
REGISTRY2_STORE_MODES = ("auto", "cache", "pushed")
# Unit (lower-cased) -> bytes.
SIZE_UNITS: dict[str, int] = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}

_SIZE = re.compile(r"([+-]?)(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)")
_EXAMPLE = "such as 100GiB, 500 MB or 1073741824"


def parse_size(value: object) -> int:
    """A size in bytes from an integer or a string with an optional unit.

    Raises ``ValueError`` with a short reason; the result is at least 1.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"expected a size {_EXAMPLE}, got {value!r}")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.fullmatch(value.strip())
        if match is None:
            raise ValueError(f"expected a size {_EXAMPLE}, got {value!r}")
        sign, number, unit = match.groups()
        if unit and unit.lower() not in SIZE_UNITS:
            raise ValueError(
                f"unknown unit {unit!r} in {value!r}; use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB"
            )
        multiplier = SIZE_UNITS[unit.lower()] if unit else 1
        size = int(Decimal(number) * multiplier)  # exact; a fraction of a byte is dropped
        if sign == "-":
            size = -size if size else -1  # "-0.1B" is still negative
    if size <= 0:
        raise ValueError(f"must be at least 1 byte, got {value!r}")
    return size


def _size(value: Any, key_path: str) -> int:
    try:
        return parse_size(value)
    except ValueError as exc:
        raise ConfigError(f"config key '{key_path}': {exc}") from None


_PLATFORM = re.compile(r"[a-z0-9_.-]+/[a-z0-9_.-]+(?:/[a-z0-9_.-]+)?")


@dataclass(frozen=True)
class PrefetchConfig:
    """``proxycache.prefetch``: images the server keeps pulled into the cache."""

    OWN: ClassVar = True
    images: tuple[str, ...] = key(
        "images", (), doc="images with their registry host, e.g. `docker.io/library/nginx:1.27`"
    )
    platforms: tuple[str, ...] = key(
        "platforms", (), doc="`OS/ARCH[/VARIANT]` children of an index to fetch (default: all)"
    )
    interval_s: float = key("interval", 3600.0, doc="how often the images are pulled again")

    def checked(self, at: At) -> PrefetchConfig:
        if self.interval_s <= 0:
            raise ConfigError(f"config key '{at.key('interval')}' must be more than 0")
        for platform in self.platforms:
            if not _PLATFORM.fullmatch(platform):
                raise ConfigError(
                    f"config key '{at.key('platforms')}': {platform!r} is not OS/ARCH or "
                    "OS/ARCH/VARIANT (such as linux/amd64)"
                )
        for image in self.images:
            host, slash, _ = image.partition("/")
            if not slash or not ("." in host or ":" in host or host == "localhost"):
                raise ConfigError(
                    f"config key '{at.key('images')}': {image!r} must start with its registry "
                    "host, such as docker.io/library/nginx:1.27"
                )
        return self


@dataclass(frozen=True)
class ProxyCacheConfig:
    """``proxycache``: limits on the pull-through cache as a whole."""

    OWN: ClassVar = True
    maxsize_bytes: int | None = key(
        "maxsize",
        None,
        parse=_size,
        doc="cap on the cache (`100GiB`, `500 MB`); the least recently pulled images are evicted",
    )
    sweepinterval_s: float = key(
        "sweepinterval", 600.0, doc="how often the cache is checked for `maxsize` and `ttl`"
    )
    registry2store: str = key(
        "registry2store",
        "auto",
        lower=True,
        choices=REGISTRY2_STORE_MODES,
        doc="what a registry:2 store's plain-name repositories were: `auto`, `cache` "
        "(registry:2's pull-through cache) or `pushed` (see Moving over)",
    )

    prefetch: PrefetchConfig | None = key("prefetch", None, doc="")

    def checked(self, at: At) -> ProxyCacheConfig:
        if self.sweepinterval_s == 0:
            raise ConfigError(f"config key '{at.key('sweepinterval')}' must be more than 0")
        return self
