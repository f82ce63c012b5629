"""Epochs: small objects that change whenever a listing changes, so each process can keep
a listing in memory and still see another process's writes at once (read-after-write
across workers). They live outside docker/registry/v2, where registry:2 never looks.

An epoch's content is a random token, compared whole: a file's mtime is too coarse
(a clock tick) to tell two quick changes apart.
"""

from __future__ import annotations

import secrets

from entrepot.storage import StorageDriver, StorageNotFound

CATALOG = "entrepot/epochs/catalog"
# Bumped (with CATALOG) when repositories are removed: a process that remembers having
# announced a repository must announce it again if it is pushed anew.
CATALOG_REMOVALS = "entrepot/epochs/catalog-removals"


def tags_epoch(name: str) -> str:
    return f"entrepot/epochs/tags/{name}/epoch"


async def read_epoch(driver: StorageDriver, key: str) -> bytes | None:
    try:
        return await driver.get_content(key)
    except StorageNotFound:
        return None


async def bump_epoch(driver: StorageDriver, key: str) -> None:
    await driver.put_content(key, secrets.token_hex(16).encode())
