"""The least a collection of the bench store does, at the least cost per object this
machine allows: plain loops of system calls split over two processes, no driver, no
asyncio, nothing checked twice. Its time is the floor the 5x row is judged against.

Phases (each split in two halves, one per process):
- list: every blob (one listing of each ``blobs/sha256/<2 hex>``) and every repository;
- mark: per repository, list its tags, revisions and layer folders, read each tag's link
  and each revision's manifest (JSON) for what it references;
- safety, what Entrepot adds to registry:2's steps so a running registry may keep serving:
  a stat of each unreferenced blob (the grace window), moving it aside (a rename in its
  folder), a stat of each repository's link folders again (the re-check);
- delete: each unreferenced blob's file and folder (unlink, rmdir).
The blobs' calls are made relative to their parent folder, opened once (as Entrepot's).

``python -m bench.gcfloor STORE`` collects STORE (a copy: it deletes) and prints the
seconds of each phase as JSON.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from collections.abc import Iterator
from multiprocessing import get_context

from bench.fixtures import ROOT

_ASIDE = "collecting"


def _paths(store: str) -> tuple[str, str]:
    v2 = f"{store}/{ROOT}"
    return f"{v2}/blobs/sha256", f"{v2}/repositories"


def _list_blobs(blobs: str, prefixes: list[str]) -> list[str]:
    return [name for prefix in prefixes for name in os.listdir(f"{blobs}/{prefix}")]


def _mark(store: str, repos: list[str]) -> set[str]:
    blobs, repositories = _paths(store)
    marked: set[str] = set()
    for repo in repos:
        folder = f"{repositories}/{repo}"
        manifests = f"{folder}/_manifests"
        for tag in os.listdir(f"{manifests}/tags"):
            with open(f"{manifests}/tags/{tag}/current/link", "rb") as link:
                link.read()
        os.listdir(f"{folder}/_layers/sha256")
        for hexa in os.listdir(f"{manifests}/revisions/sha256"):
            marked.add(hexa)
            with open(f"{blobs}/{hexa[:2]}/{hexa}/data", "rb") as data:
                doc = json.loads(data.read())
            marked.add(doc["config"]["digest"].partition(":")[2])
            marked.update(layer["digest"].partition(":")[2] for layer in doc["layers"])
    return marked


def _by_parent(store: str, doomed: list[str]) -> Iterator[tuple[int, str]]:
    """Each blob's folder name with its parent (``blobs/sha256/<2 hex>``) open: the
    calls below walk two path components, not the store's dozen (as Entrepot's helpers
    do, fsbulkops). ``doomed`` is sorted: each parent is opened once."""
    blobs, _ = _paths(store)
    for prefix, group in itertools.groupby(doomed, key=lambda hexa: hexa[:2]):
        parent = os.open(f"{blobs}/{prefix}", os.O_RDONLY | os.O_DIRECTORY)
        try:
            for hexa in group:
                yield parent, hexa
        finally:
            os.close(parent)


def _set_aside(store: str, doomed: list[str]) -> int:
    size = 0
    for parent, hexa in _by_parent(store, doomed):
        size += os.stat(f"{hexa}/data", dir_fd=parent).st_size
        os.replace(f"{hexa}/data", f"{hexa}/{_ASIDE}", src_dir_fd=parent, dst_dir_fd=parent)
    return size


def _recheck(store: str, repos: list[str]) -> None:
    _, repositories = _paths(store)
    for repo in repos:
        folder = f"{repositories}/{repo}"
        for sub in ("_manifests/tags", "_manifests/revisions/sha256", "_layers/sha256"):
            os.stat(f"{folder}/{sub}")


def _delete(store: str, doomed: list[str]) -> None:
    for parent, hexa in _by_parent(store, doomed):
        os.unlink(f"{hexa}/{_ASIDE}", dir_fd=parent)
        os.rmdir(hexa, dir_fd=parent)


def _halves(items: list[str]) -> list[list[str]]:
    return [items[::2], items[1::2]]


def collect(store: str) -> dict[str, float]:
    """Collect ``store`` (see the module docstring); the seconds of each phase, the total
    of all (``safe``) and without the safety phase (``bare``), and the blobs deleted."""
    blobs, repositories = _paths(store)
    times: dict[str, float] = {}
    # fork: the children need nothing but these functions, and start in a millisecond.
    with get_context("fork").Pool(2) as pool:
        started = time.monotonic()
        prefixes = sorted(os.listdir(blobs))
        listing = pool.starmap_async(_list_blobs, [(blobs, h) for h in _halves(prefixes)])
        repos = [
            f"{team}/{app}"
            for team in os.listdir(repositories)
            for app in os.listdir(f"{repositories}/{team}")
        ]
        found = set().union(*listing.get())
        times["list"] = time.monotonic() - started
        t = time.monotonic()
        marks = pool.starmap(_mark, [(store, h) for h in _halves(repos)])
        doomed = sorted(found - set().union(*marks))
        times["mark"] = time.monotonic() - t
        t = time.monotonic()
        pool.starmap(_set_aside, [(store, h) for h in _halves(doomed)])
        pool.starmap(_recheck, [(store, h) for h in _halves(repos)])
        times["safety"] = time.monotonic() - t
        t = time.monotonic()
        pool.starmap(_delete, [(store, h) for h in _halves(doomed)])
        times["delete"] = time.monotonic() - t
    times["safe"] = sum(times.values())
    times["bare"] = times["safe"] - times["safety"]
    times["deleted"] = len(doomed)
    return times


if __name__ == "__main__":
    print(json.dumps(collect(sys.argv[1])))
