"""What a manifest points at, parsed leniently from its bytes: garbage collection must not
stop at a manifest another registry accepted. Imports nothing that loads asyncio (gcwalk
parses manifests in walk children).
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from entrepot.oci.digest import Digest, trusted_pair
from entrepot.registry.digestnames import Pair, parse_pairs


class ManifestRefs(NamedTuple):
    """What a stored manifest points at: ``references`` as registry:2's ``References()``
    (config and layers, an index's children, a schema1 manifest's layers), ``children``
    (an index's manifests) and ``subject`` (the manifest it refers to). A tuple: a
    collection makes one per manifest (10,000 on the bench store), and a frozen dataclass
    cost three attribute sets each; and walk children, which parse manifests, start
    without importing dataclasses (14 ms of each one's start)."""

    references: frozenset[Digest]
    children: tuple[Digest, ...]
    subject: Digest | None


NO_REFS = ManifestRefs(frozenset(), (), None)


# What a manifest points at as plain tuples (see manifest_ref_pairs): references,
# children, subject.
RefPairs = tuple[list[Pair], list[Pair], "Pair | None"]


def manifest_refs(raw: bytes) -> ManifestRefs:
    """Leniently: garbage collection must not stop at a manifest another registry accepted."""
    return refs_of(manifest_ref_pairs(raw))


def refs_of(pairs: RefPairs) -> ManifestRefs:
    references, children, subject = pairs
    return ManifestRefs(
        frozenset(map(trusted_pair, references)),
        tuple(map(trusted_pair, children)),
        None if subject is None else trusted_pair(subject),
    )


def manifest_ref_pairs(raw: bytes) -> RefPairs:
    """manifest_refs as plain tuples: what a walk in another process sends back."""
    try:
        # A str parses without json's guess at the encoding; other encodings it guesses.
        body = json.loads(raw.decode() if raw[:1] == b"{" else raw)
    except (ValueError, UnicodeDecodeError):
        return [], [], None
    if not isinstance(body, dict):
        return [], [], None
    references = _texts(body.get("config"))
    references += _texts(body.get("layers"))
    children = _texts(body.get("manifests"))
    references += children
    references += _texts(body.get("fsLayers"), "blobSum")
    subject = parse_pairs(_texts(body.get("subject")))
    return parse_pairs(references), parse_pairs(children), subject[0] if subject else None


def _texts(value: Any, key: str = "digest") -> list[str]:
    """The text at ``key`` of a descriptor, or of each of a list of them, where it is one."""
    if value is None:
        return []
    found = []
    for item in value if isinstance(value, list) else (value,):
        text = item.get(key) if isinstance(item, dict) else None
        if isinstance(text, str):
            found.append(text)
    return found
