"""What a stored manifest points at (manifestrefs), read once per manifest however many
repositories link it, and the manifests of one repository a set of roots keeps (index
children, referrers).
"""

from __future__ import annotations

from collections.abc import Container, Iterable

from entrepot.oci.digest import Digest
from entrepot.registry import layout
from entrepot.registry.manifestrefs import NO_REFS, ManifestRefs, manifest_refs
from entrepot.registry.quarantine import QUARANTINE
from entrepot.registry.storecalls import Limited, each


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


class Referenced:
    """What the mark's walk read of the manifests where every manifest is kept (no
    ``--delete-untagged``, no retention rule): what they reference, together, as
    (algorithm, encoded) pairs (a Digest equals its pair, and hashes as it does), and
    the manifests they came from. A ManifestRefs per manifest, a Digest per reference in
    a frozenset each, was half of the main process's CPU reading the bench store's walks,
    where the mark needs only the union."""

    def __init__(self) -> None:
        self.pairs: set[tuple[str, str]] = set()
        self.manifests: set[Digest] = set()


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
