"""The sweep's second read of the repositories, cheap where folders have mtimes (a disk):
only the repositories with a folder changed since the mark began are read again.

A push adds an entry to a folder: a layer's link folder to ``_layers/<algorithm>``, a
revision's to ``_manifests/revisions/<algorithm>`` (or its link to a revision folder left
without one), an upload's to ``_uploads``, a new repository to its parent's folder. So a
repository none of whose folders changed since the mark began still holds what the mark
read, but for two things: an upload resumed (only its data grows: a repository with
uploads is read again anyway) and a link written again in a layer folder the mark saw (the
sweep stats those links anyway). Object storage has no folders: it is read again whole.
"""

from __future__ import annotations

from collections.abc import Iterable

from entrepot.oci.digest import Digest
from entrepot.registry import layout
from entrepot.registry.digestnames import ALGORITHMS
from entrepot.registry.gcscan import RepoScan, scan_repository
from entrepot.registry.storecalls import Limited, each

# A folder changed this long before the mark began counts as changed: timestamps coarser
# than the clock, a file server's clock a little off.
MARGIN = 10.0  # seconds


def _holders(names: Iterable[str]) -> set[str]:
    """The folders that hold repositories: each repository's own (a repository may hold
    another), every folder above it, and ``repositories/``."""
    folders = {layout.REPOSITORIES}
    for name in names:
        parts = name.split("/")
        folders.update(layout.repository("/".join(parts[:i])) for i in range(1, len(parts) + 1))
    return folders


def _marker_folders(scan: RepoScan, aside: set[str]) -> list[str]:
    """The folders of one repository that a push adds an entry to and the sweep cares
    about: the layer links' of the algorithms of the blobs set ``aside`` (a link of
    another cannot save one), the revisions' of every algorithm, the uploads'. One made
    since the mark is found by its own stat (new, so changed): its parent's (``_layers``,
    ``_manifests/revisions``) needs none; making ``_uploads``, ``_layers`` or
    ``_manifests`` changes the repository's folder, a holder."""
    repo = layout.repository(scan.name)
    folders = [f"{repo}/_uploads"]
    folders += [f"{repo}/_layers/{a}" for a in sorted(aside | {"sha256"})]
    folders += [f"{repo}/_manifests/revisions/{a}" for a in ALGORITHMS]
    folders += [layout.manifest_revision_dir(scan.name, d) for d in scan.unlinked_revisions]
    return folders


async def changed_repositories(
    store: Limited, scans: Iterable[RepoScan], since: float, aside: set[str]
) -> set[str] | None:
    """The repositories with a folder changed after ``since`` (the file system's time); None
    when a folder that holds repositories changed (a new one may be in it): the caller then
    reads the whole store again."""
    scans = list(scans)

    async def changed(keys: list[str]) -> list[bool]:
        infos = await store.stat_many(keys)
        return [info is not None and info.mtime >= since for info in infos]

    if any(await changed(sorted(_holders(s.name for s in scans)))):
        return None
    folders = [(s.name, key) for s in scans for key in _marker_folders(s, aside)]
    moved = await changed([key for _, key in folders])
    return {name for (name, _), yes in zip(folders, moved, strict=True) if yes}


async def recheck(
    store: Limited,
    scans: dict[str, RepoScan],
    swept: Iterable[str],
    marked_at: float,
    fresh_after: float,
    aside: Iterable[Digest],
) -> dict[str, RepoScan] | None:
    """Every repository as it is now, where folders have mtimes: those with a folder
    changed since ``marked_at`` (less MARGIN), those the sweep changed (``swept``) and
    those with uploads read again, the others as the mark read them (``scans``), as far
    as the blobs set ``aside`` go. None where the whole store must be read again (no
    folders, or maybe a new repository)."""
    if not store.driver.folder_mtimes:
        return None
    algorithms = {digest.algorithm for digest in aside}
    changed = await changed_repositories(store, scans.values(), marked_at - MARGIN, algorithms)
    if changed is None:
        return None
    uploading = {name for name, scan in scans.items() if scan.uploads}
    again = sorted(changed | set(swept) | uploading)

    async def read(name: str) -> RepoScan:
        return await scan_repository(store, name, fresh_after, layer_folders=True)

    return {**scans, **dict(zip(again, await each(again, read), strict=True))}
