"""What a stored manifest points at, read once per manifest however many repositories link
it, and the manifests of one repository a set of roots keeps (index children, referrers).
"""

from __future__ import annotations

import json
from collections.abc import Container, Iterable
from dataclasses import dataclass
from typing import Any

from entrepot.oci.digest import Digest
from entrepot.registry import layout
from entrepot.registry.quarantine import QUARANTINE
from entrepot.registry.storecalls import Limited, Pair, each, parse_pair


@dataclass(frozen=True, slots=True)
class ManifestRefs:
    """What a stored manifest points at: ``references`` as registry:2's ``References()``
    (config and layers, an index's children, a schema1 manifest's layers), ``children``
    (an index's manifests) and ``subject`` (the manifest it refers to)."""

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
    trusted = Digest.trusted
    return ManifestRefs(
        frozenset([trusted(*pair) for pair in references]),
        tuple([trusted(*pair) for pair in children]),
        None if subject is None else trusted(*subject),
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
    references: list[Pair] = []
    _add_pairs(references, body.get("config"))
    _add_pairs(references, body.get("layers"))
    children: list[Pair] = []
    _add_pairs(children, body.get("manifests"))
    references += children
    _add_pairs(references, body.get("fsLayers"), "blobSum")
    subject: list[Pair] = []
    _add_pairs(subject, body.get("subject"))
    return references, children, subject[0] if subject else None


def _add_pairs(found: list[Pair], value: Any, key: str = "digest") -> None:
    """Add the digest at ``key`` of a descriptor, or of each of a list of them."""
    if value is None:
        return
    for item in value if isinstance(value, list) else (value,):
        text = item.get(key) if isinstance(item, dict) else None
        if isinstance(text, str):
            pair = parse_pair(text)
            if pair is not None:
                found.append(pair)


async def read_refs(
    store: Limited,
    digests: Iterable[Digest],
    known: dict[Digest, ManifestRefs],
    aside: Container[Digest] = (),
    *,
    settle_missing: bool = True,
) -> None:
    """Add the references of every manifest in ``digests`` not in ``known`` yet (each
    manifest's bytes are read once, however many repositories link it); one in ``aside``
    (the sweep's quarantine) is read there when its ``data`` is not back. One without
    bytes has none, or without ``settle_missing`` is left out (read again later)."""

    async def read(digest: Digest) -> None:
        raw = await store.get(layout.blob_data(digest))
        if raw is None and digest in aside:
            raw = await store.get(f"{layout.blob_dir(digest)}/{QUARANTINE}")
        if raw is not None:
            known[digest] = manifest_refs(raw)
        elif settle_missing:
            known[digest] = NO_REFS

    await each([d for d in set(digests) if d not in known], read)


def keep_closure(
    valid: set[Digest], roots: Iterable[Digest], refs: dict[Digest, ManifestRefs]
) -> set[Digest]:
    """The manifests of one repository kept from ``roots``: with their index children and
    their referrers (manifests whose ``subject`` is kept), transitively."""
    referrers: dict[Digest, list[Digest]] = {}
    for digest in valid:
        subject = refs.get(digest)
        if subject is not None and subject.subject is not None:
            referrers.setdefault(subject.subject, []).append(digest)
    kept: set[Digest] = set()
    stack = [d for d in roots if d in valid]
    while stack:
        digest = stack.pop()
        if digest in kept:
            continue
        kept.add(digest)
        found = refs.get(digest)
        if found is not None:
            stack.extend(c for c in found.children if c in valid)
        stack.extend(referrers.get(digest, ()))
    return kept
