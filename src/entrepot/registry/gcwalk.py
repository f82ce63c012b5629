"""The mark's walk of ``repositories/`` where the store is a disk: a local walk (see
storage.localwalk) that knows the registry's layout, so it lists only the folders that
say something (each repository's layer, revision, tag and upload folders), reads each
revision's manifest and parses it where it walks, and sends back one record per
repository instead of a row per object: on the bench store (10,000 repositories) the
walk and its reader took half the CPU they took with the generic folded walk.

It finds what scan_store's folded walk finds (tests/unit/test_gc_walk.py holds the two
side by side): a repository is a folder with an entry whose name starts with "_" (which
no repository name component may); such an entry is never a repository's namespace.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from entrepot.oci.digest import Digest
from entrepot.registry import layout
from entrepot.registry.digestnames import ALGORITHMS, Pair, digest_names, parse_pair
from entrepot.registry.manifestrefs import RefPairs, manifest_ref_pairs
from entrepot.storage.localwalk import LocalView

# (algorithm, encoded, the link's mtime, what the manifest references: None if unread)
Revision = tuple[str, str, float, "RefPairs | None"]
# (tag, what its current link points at)
Tag = tuple[str, str, str]
# name, revisions, revision folders without a link, layer folders, tag names, tags read,
# upload folders, the newest mtime of an upload's bytes (0.0: none).
Record = tuple[str, list[Revision], list[Pair], list[Pair], list[str], list[Tag], list[str], float]

# Arguments: read each tag's current link; read each revision's manifest; send only the
# layer folders the repository's manifests read do not reference (LOOSE).
TAGS = "tags"
MANIFESTS = "manifests"
LOOSE = "loose"
# An argument naming the only algorithms whose link folders the walk lists
# (``only:sha256``), those of which the store holds a blob (see gcsweep): a link of another
# names nothing, and listing two absent folders per repository was a fifth of its walk.
# Of the re-check's (changed_records), ``skipped:sha512``: the mark skipped these.
ONLY = "only:"
SKIPPED = "skipped:"
# Walks of a tree at once, apart (storecalls.Limited.walk_shards): a collection's walk of
# ``repositories/`` took longer than the rest of its mark (both CPUs of the bench machine;
# more would only wait for the caller).
WALK_SHARDS = 2
# Records per batch sent back: the caller reads the first ones while the rest are walked.
BATCH = 256
# Top-level folders below which walks share the repositories rather than by them (see
# _repositories): listing this many folders in every walk costs nothing to speak of.
SHARE_BELOW = 64


def repository_args(
    tags: bool, manifests: bool, algorithms: tuple[str, ...] | None, loose: bool = False
) -> tuple[str, ...]:
    """repository_records' arguments: read the tags' links, the manifests; list the link
    folders of ``algorithms`` only (None: of every registered one); with ``loose`` (and
    ``manifests``), send a repository's layer folders only where no manifest of it that
    the walk read references them, or where it has uploads: the mark where every
    manifest is kept marks all those references, so the sweep looks at no other."""
    flags = ((TAGS, tags), (MANIFESTS, manifests), (LOOSE, loose and manifests))
    args = tuple(a for a, on in flags if on)
    if algorithms is not None:
        args += (ONLY + ",".join(algorithms),)
    return args


def repository_records(view: LocalView, prefix: str, args: tuple[str, ...]) -> Iterator[list[Any]]:
    """Every repository under ``prefix`` (``repositories/``) as a Record, in batches."""
    walk = _Walk(
        view,
        prefix,
        TAGS in args,
        MANIFESTS in args,
        _named(args, ONLY, ALGORITHMS),
        LOOSE in args,
    )
    records = (walk.record(name, markers) for name, markers in _repositories(view, prefix))
    return _batches(records)


def changed_records(view: LocalView, prefix: str, args: tuple[str, ...]) -> Iterator[list[Any]]:
    """For the sweep's re-check (gcrecheck): every repository under ``prefix`` as (name,
    whether a folder of it that a push adds an entry to changed at or after ``args[0]``),
    in batches. Those folders: ``_uploads``, the layer links' of the algorithms
    ``args[1:]``, the revisions' of every algorithm (see gcrecheck); the revisions of an
    algorithm the mark skipped (SKIPPED) count as changed wherever they are: the mark
    did not read them."""
    since, layer_algorithms = float(args[0]), [a for a in args[1:] if ":" not in a]
    skipped = _named(args, SKIPPED, ())

    def changed(folder: str, markers: list[str]) -> bool:
        keys = [f"{folder}/_uploads"] if "_uploads" in markers else []
        if "_layers" in markers:
            keys += [f"{folder}/_layers/{algorithm}" for algorithm in layer_algorithms]
        if "_manifests" in markers:
            for algorithm in skipped:
                if view.mtime(f"{folder}/_manifests/revisions/{algorithm}") is not None:
                    return True
            keys += [
                f"{folder}/_manifests/revisions/{algorithm}"
                for algorithm in ALGORITHMS
                if algorithm not in skipped
            ]
        return any((mtime := view.mtime(key)) is not None and mtime >= since for key in keys)

    return _batches(
        (name, changed(f"{prefix}/{name}", markers))
        for name, markers in _repositories(view, prefix)
    )


def _named(args: tuple[str, ...], kind: str, otherwise: tuple[str, ...]) -> tuple[str, ...]:
    """The registered algorithms the argument ``<kind><a>,<b>`` names; ``otherwise``
    without one."""
    for arg in args:
        if arg.startswith(kind):
            return tuple(a for a in arg[len(kind) :].split(",") if a in ALGORITHMS)
    return otherwise


def _repositories(view: LocalView, prefix: str) -> Iterator[tuple[str, list[str]]]:
    """Each repository under ``prefix`` in the walk's shard, with the names in its folder
    that start with "_", before those nested in it. The walks share the top-level folders;
    where there are fewer than SHARE_BELOW (one organisation's namespace, say), the
    folders below them: else one walk would do all the work."""

    def split(name: str) -> tuple[list[str], list[str]]:
        """The names in the folder that start with "_", and the others, sorted."""
        names = view.names(f"{prefix}/{name}")
        return [e for e in names if e[0] == "_"], sorted(e for e in names if e[0] != "_")

    def below(name: str) -> Iterator[tuple[str, list[str]]]:
        markers, entries = split(name)
        if markers:
            yield name, markers
        for entry in entries:
            yield from below(f"{name}/{entry}")

    tops = [top for top in sorted(view.names(prefix)) if top[0] != "_"]
    if len(tops) >= SHARE_BELOW:
        for top in tops:
            if view.mine(top):
                yield from below(top)
        return
    for top in tops:  # every walk lists these few folders, each takes its share below
        markers, entries = split(top)
        if markers and view.mine(top):
            yield top, markers
        for entry in entries:
            if view.mine(f"{top}/{entry}"):
                yield from below(f"{top}/{entry}")


def _batches(records: Iterator[Any]) -> Iterator[list[Any]]:
    batch = []
    for record in records:
        batch.append(record)
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def blob_records(view: LocalView, prefix: str, args: tuple[str, ...]) -> Iterator[list[Any]]:
    """Every blob folder under ``prefix`` (``blobs/``): per ``<algorithm>/<2 hex>`` folder,
    (algorithm, the encoded digests of the folders in it that name one), all in digest
    order (the collector's sorts then only check it)."""
    for algorithm in sorted(view.names(prefix)):
        top = f"{prefix}/{algorithm}"
        batch = []
        for folder in sorted(view.names(top)):
            names = view.names(f"{top}/{folder}")
            batch.append((algorithm, sorted(digest_names(algorithm, names))))
        yield batch


class _Walk:
    def __init__(
        self,
        view: LocalView,
        prefix: str,
        tags: bool,
        manifests: bool,
        algorithms: tuple[str, ...],
        loose: bool = False,
    ) -> None:
        self.view, self.prefix = view, prefix
        self.tags, self.manifests, self.loose = tags, manifests, loose
        self.algorithms = algorithms

    def record(self, name: str, markers: list[str]) -> Record:
        view, folder = self.view, f"{self.prefix}/{name}"
        revisions: list[Revision] = []
        unlinked: list[Pair] = []
        layers: list[Pair] = []
        tag_names: list[str] = []
        tags: list[Tag] = []
        uploads: list[str] = []
        upload_mtime = 0.0
        # Each registered algorithm's folder (the walk's), not a listing of the folder
        # above them: one of another algorithm names no digest (the folded walk drops it).
        if "_layers" in markers:
            for algorithm in self.algorithms:
                names = digest_names(algorithm, view.names(f"{folder}/_layers/{algorithm}"))
                layers += [(algorithm, encoded) for encoded in names]
        if "_manifests" in markers:
            revisions_folder = f"{folder}/_manifests/revisions"
            for algorithm in self.algorithms:
                names = view.names(f"{revisions_folder}/{algorithm}")
                for encoded in digest_names(algorithm, names):
                    link = view.stat(f"{revisions_folder}/{algorithm}/{encoded}/link")
                    if link is None:
                        unlinked.append((algorithm, encoded))
                        continue
                    refs = None
                    if self.manifests:
                        data = view.get(layout.blob_data(Digest.trusted(algorithm, encoded)))
                        refs = None if data is None else manifest_ref_pairs(data)
                    revisions.append((algorithm, encoded, link[1], refs))
            if self.tags:
                tags_folder = f"{folder}/_manifests/tags"
                for tag in view.names(tags_folder):
                    tag_names.append(tag)
                    raw = view.get(f"{tags_folder}/{tag}/current/link")
                    text = "" if raw is None else raw.decode("ascii", "replace").strip()
                    target = parse_pair(text) if text else None
                    if target is not None:
                        tags.append((tag, *target))
        if "_uploads" in markers:
            for upload in view.names(f"{folder}/_uploads"):
                uploads.append(upload)
                for entry in view.names(f"{folder}/_uploads/{upload}"):
                    if layout.holds_bytes(entry):
                        info = view.stat(f"{folder}/_uploads/{upload}/{entry}")
                        if info is not None:
                            upload_mtime = max(upload_mtime, info[1])
        if self.loose and layers and not uploads:
            referenced = {pair for *_, refs in revisions if refs is not None for pair in refs[0]}
            layers = [pair for pair in layers if pair not in referenced]
        return name, revisions, unlinked, layers, tag_names, tags, uploads, upload_mtime
