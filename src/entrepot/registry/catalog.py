"""The repository catalog: every directory under ``repositories/`` that holds a repository.

A repository is a directory with ``_layers`` (as registry:2 decides) or ``_manifests``
(a cached repository whose blobs were not fetched yet); one holding only an upload
session is not listed. Names sort lexically and pages continue after ``last``.
"""

from __future__ import annotations

from entrepot.registry import layout
from entrepot.storage import StorageDriver, StorageNotFound

_MARKERS = frozenset({"_layers", "_manifests"})


async def list_repositories(driver: StorageDriver) -> list[str]:
    found: list[str] = []

    async def walk(prefix: str, name: str) -> None:
        try:
            children = await driver.list(prefix)
        except StorageNotFound:
            return
        if any(child in _MARKERS for child in children):
            found.append(name)
        for child in children:
            if child.startswith("_"):
                continue
            await walk(f"{prefix}/{child}", f"{name}/{child}" if name else child)

    await walk(layout.REPOSITORIES, "")
    found.sort()
    return found


def paginate(items: list[str], n: int | None, last: str | None) -> list[str]:
    """Items after ``last`` (exclusive), at most ``n`` of them."""
    if last:
        items = [item for item in items if item > last]
    if n is not None:
        items = items[:n]
    return items
