"""The sweep's removal of a repository left with no manifest: object by object.

The sweep finds such repositories when it re-checks the store, and removes them after it
has deleted the blobs: a push into one in between must stay. So the repository is read
again just before (a manifest, an upload, a layer linked within the grace window keeps
it), then exactly the objects read are deleted, and its folders removed only where they
hold nothing: a push that lands after that read keeps what it wrote, with the folders
that hold it (a folder deleted whole would take that too).
"""

from __future__ import annotations

from collections.abc import Callable

from entrepot.oci.digest import Digest
from entrepot.registry import layout
from entrepot.registry.blobs import write_link
from entrepot.registry.gcrefs import read_refs
from entrepot.registry.manifestrefs import ManifestRefs
from entrepot.registry.storecalls import Limited, each
from entrepot.storage import FileInfo

# A repository's folders (a nested repository's are its own).
REPO_FOLDERS = ("_manifests", "_layers", "_referrers", "_uploads")


async def remove_repository(store: Limited, name: str, fresh: Callable[[float], bool]) -> bool:
    """Remove repository ``name`` unless it holds a manifest, an upload or a layer link
    ``fresh`` (by its mtime) now; whether it was removed."""
    repo = layout.repository(name)
    objects: list[FileInfo] = []
    folders: list[str] = []
    for marker in REPO_FOLDERS:
        await _read_tree(store, f"{repo}/{marker}", objects, folders)
    uploads = f"{repo}/_uploads/"
    if any(folder.startswith(uploads) for folder in folders) or any(
        _pushed(info.key[len(repo) + 1 :].split("/"), info, fresh) for info in objects
    ):  # an upload's folder counts before its first file (a POST that just made it)
        return False
    await store.delete_many([info.key for info in objects])
    # A manifest pushed since that read, on layer links the deletes just took (its
    # check found them): linked again, and the repository stays. The server looks at
    # them too once its manifest is linked (RepositoryManifests._confirm_references).
    if await _link_layers_back(store, name):
        return False
    path = repo
    while path != layout.REPOSITORIES:  # and up the tree, where nothing else is
        folders.append(path)
        path = path.rsplit("/", 1)[0]
    await store.driver.remove_empty_folders(folders)
    return True


def _pushed(parts: list[str], info: FileInfo, fresh: Callable[[float], bool]) -> bool:
    marker = parts[0]
    if marker == "_uploads":
        return True
    if marker == "_manifests":
        return len(parts) == 5 and parts[1] == "revisions" and parts[4] == "link"
    return marker == "_layers" and parts[-1] == "link" and fresh(info.mtime)


async def _read_tree(store: Limited, key: str, objects: list[FileInfo], folders: list[str]) -> None:
    """The objects under ``key`` into ``objects``, its folders into ``folders`` (each
    after those in it). A few dozen entries: a repository with no manifest."""
    children = await store.children(key)
    for child in children:
        await _read_tree(store, f"{key}/{child}", objects, folders)
    if children:
        folders.append(key)
        return
    info = await store.stat(key)
    if info is None:
        return
    if info.is_dir:
        folders.append(key)  # an empty folder (a disk's)
    else:
        objects.append(info)


async def _link_layers_back(store: Limited, name: str) -> bool:
    """Whether repository ``name`` holds a manifest now; if so, the layer links of what
    those manifests reference are written again where the blob's bytes are there."""
    revisions = set(await store.linked(f"{layout.repository(name)}/_manifests/revisions"))
    if not revisions:
        return False
    refs: dict[Digest, ManifestRefs] = {}
    await read_refs(store, revisions, refs)
    blobs = {d for found in refs.values() for d in found.references} - revisions

    async def link(digest: Digest) -> None:
        if await store.stat(layout.blob_data(digest)) is not None:
            await write_link(store.driver, layout.layer_link(name, digest), digest)

    await each(blobs, link)
    return True
