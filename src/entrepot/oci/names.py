"""The distribution spec's name and tag grammar."""

from __future__ import annotations

import functools
import re

from entrepot.oci.errors import ErrorCode, RegistryError

# distribution-spec "Pulling manifests": <name> components.
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")
# registry:2 limits repository names to 255 characters; so does the spec's guidance.
MAX_NAME_LENGTH = 255
# Validated names and tags remembered (a few hundred bytes each): the ones a fleet asks
# for again and again stay, the long tail is pushed out instead of filling memory.
VALIDATED_CACHE_SIZE = 4096


@functools.lru_cache(maxsize=VALIDATED_CACHE_SIZE)
def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid repository name, else raise NAME_INVALID.

    The grammar already refuses "..", uppercase, empty components, absolute paths,
    backslashes and NUL, so a valid name is always safe to use as a storage key prefix.
    """
    if len(name) > MAX_NAME_LENGTH:
        raise RegistryError(
            ErrorCode.NAME_INVALID,
            f"repository name is longer than {MAX_NAME_LENGTH} characters",
            {"name": name[:MAX_NAME_LENGTH] + "..."},
        )
    if not _NAME_RE.match(name):
        raise RegistryError(ErrorCode.NAME_INVALID, "invalid repository name", {"name": name})
    return name


@functools.lru_cache(maxsize=VALIDATED_CACHE_SIZE)
def is_valid_tag(tag: str) -> bool:
    return _TAG_RE.match(tag) is not None


@functools.lru_cache(maxsize=VALIDATED_CACHE_SIZE)
def validate_tag(tag: str) -> str:
    if not is_valid_tag(tag):
        raise RegistryError(ErrorCode.TAG_INVALID, "invalid tag", {"tag": tag})
    return tag
