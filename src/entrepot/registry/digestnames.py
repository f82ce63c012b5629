"""Digests as a store names them: folder names (``<algorithm>/<encoded>``) and link files'
text, checked as Digest.parse would, without its regular expressions (a collection checks
a few hundred thousand); and as plain tuples, which a walk in another process sends back.
Imports nothing that loads asyncio (gcwalk runs in walk children).
"""

from __future__ import annotations

import re

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


# A run of "/"-separated digest texts, and of one algorithm's encoded parts: a folder's
# or a manifest's names checked in one match (no name holds a "/"; a text might: see
# _joined), where checking each one alone was a sixth of a walk child's CPU.
# (Of the algorithms whose names are _CUT long, so a text that matches splits there: a
# slice each, where a partition each cost a third more.)
_CUT = 6
_PAIR = "|".join(
    f"{algorithm}:[0-9a-f]{{{n}}}" for algorithm, n in _HEX_LENGTH.items() if len(algorithm) == _CUT
)
_PAIR_RUN = re.compile(f"(?:{_PAIR})(?:/(?:{_PAIR}))*")
_ENCODED_RUNS = {
    algorithm: re.compile(f"[0-9a-f]{{{n}}}(?:/[0-9a-f]{{{n}}})*")
    for algorithm, n in _HEX_LENGTH.items()
}


def digest_names(algorithm: str, names: list[str]) -> list[str]:
    """The names in ``names`` that name a digest of ``algorithm`` (as is_digest_at), in
    order: all of them, as a rule."""
    run = _ENCODED_RUNS.get(algorithm)
    if run is None:
        return []
    if _joined(run, names):
        return names
    return [name for name in names if is_digest_at(algorithm, name)]


def parse_pairs(texts: list[str]) -> list[Pair]:
    """parse_pair of each text, less those that name no digest, in order."""
    if not texts:  # a manifest's children and subject, as a rule: no join, no match
        return []
    if _joined(_PAIR_RUN, texts):
        return [(text[:_CUT], text[_CUT + 1 :]) for text in texts]
    return [pair for text in texts if (pair := parse_pair(text)) is not None]


def _joined(run: re.Pattern[str], texts: list[str]) -> bool:
    """Whether ``texts`` joined by "/" are ``run``, one text a match each (a text with a
    "/" in it would make two)."""
    joined = "/".join(texts)
    return run.fullmatch(joined) is not None and joined.count("/") == len(texts) - 1


def parse_pair(text: str) -> Pair | None:
    """parse_digest's digest, as a Pair."""
    algorithm, colon, encoded = text.partition(":")
    if colon and is_digest_at(algorithm, encoded):
        return (algorithm, encoded)
    digest = parse_digest(text)
    return None if digest is None else (digest.algorithm, digest.encoded)


def link_digest(raw: bytes) -> Digest | None:
    return parse_digest(raw.decode("ascii", "replace").strip())
