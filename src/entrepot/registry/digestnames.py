"""Digests as a store names them: folder names (``<algorithm>/<encoded>``) and link files'
text, checked as Digest.parse would, without its regular expressions (a collection checks
a few hundred thousand); and as plain tuples, which a walk in another process sends back.
Imports nothing that loads asyncio (gcwalk runs in walk children).
"""

from __future__ import annotations

from entrepot.oci.digest import Digest
from entrepot.oci.errors import RegistryError


def parse_digest(text: str) -> Digest | None:
    algorithm, colon, encoded = text.partition(":")
    found = digest_at(algorithm, encoded) if colon else None
    if found is not None:  # the common case, without Digest.parse's regular expressions
        return found
    try:
        return Digest.parse(text)
    except RegistryError:
        return None


# The registered algorithms' hex lengths.
_HEX_LENGTH = {"sha256": 64, "sha512": 128}
ALGORITHMS = tuple(_HEX_LENGTH)


def digest_at(algorithm: str, encoded: str) -> Digest | None:
    """The digest ``<algorithm>/<encoded>`` folders name, or None."""
    if _HEX_LENGTH.get(algorithm) != len(encoded) or encoded.strip("0123456789abcdef"):
        return None
    return Digest.trusted(algorithm, encoded)


# A digest as a plain (algorithm, encoded) tuple: what a walk in another process sends
# (marshal takes no Digest); Digest.trusted makes it one again.
Pair = tuple[str, str]


def is_digest_at(algorithm: str, encoded: str) -> bool:
    """Whether ``<algorithm>/<encoded>`` folders name a digest (as digest_at)."""
    return _HEX_LENGTH.get(algorithm) == len(encoded) and not encoded.strip("0123456789abcdef")


def parse_pair(text: str) -> Pair | None:
    """parse_digest's digest, as a Pair."""
    algorithm, colon, encoded = text.partition(":")
    if colon and is_digest_at(algorithm, encoded):
        return (algorithm, encoded)
    digest = parse_digest(text)
    return None if digest is None else (digest.algorithm, digest.encoded)


def link_digest(raw: bytes) -> Digest | None:
    return parse_digest(raw.decode("ascii", "replace").strip())
