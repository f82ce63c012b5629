"""registry:2's upload purging (storage.maintenance.uploadpurging): upload sessions older
than ``age`` are removed, so abandoned and interrupted pushes (and cache fills cut short
by a crash) do not pile up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

from entrepot.registry import layout
from entrepot.storage import StorageDriver, StorageError, StorageNotFound

log = logging.getLogger("entrepot.purge")


async def _started_at(driver: StorageDriver, upload_dir: str) -> float | None:
    """When the upload started: its ``startedat`` file (RFC 3339, as registry:2 writes
    it), else the data file's mtime."""
    try:
        text = (await driver.get_content(f"{upload_dir}/startedat")).decode().strip()
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except (StorageError, ValueError, UnicodeDecodeError):
        pass
    try:
        return (await driver.stat(f"{upload_dir}/data")).mtime
    except StorageError:
        return None


async def purge_uploads(
    driver: StorageDriver, older_than: float, *, dry_run: bool = False, now: float | None = None
) -> list[str]:
    """Delete upload sessions started more than ``older_than`` seconds ago; return them."""
    cutoff = (now if now is not None else datetime.now(UTC).timestamp()) - older_than
    purged: list[str] = []

    async def walk(prefix: str) -> None:
        try:
            children = await driver.list(prefix)
        except StorageNotFound:
            return
        for child in children:
            if child == "_uploads":
                await purge_dir(f"{prefix}/_uploads")
            elif not child.startswith("_"):
                await walk(f"{prefix}/{child}")

    async def purge_dir(uploads: str) -> None:
        try:
            upload_ids = await driver.list(uploads)
        except StorageNotFound:
            return
        for upload_id in upload_ids:
            upload_dir = f"{uploads}/{upload_id}"
            started = await _started_at(driver, upload_dir)
            if started is not None and started >= cutoff:
                continue
            purged.append(upload_dir)
            if not dry_run:
                with contextlib.suppress(StorageNotFound):
                    await driver.delete(upload_dir)

    await walk(layout.REPOSITORIES)
    return purged


async def run_upload_purger(
    driver: StorageDriver, age: float, interval: float, dry_run: bool
) -> None:
    """Purge now and then every ``interval``, as registry:2 does (its first run is
    delayed by up to half an hour at random; here it runs shortly after start)."""
    await asyncio.sleep(min(interval, 60.0))
    while True:
        try:
            purged = await purge_uploads(driver, age, dry_run=dry_run)
            if purged:
                verb = "would purge" if dry_run else "purged"
                log.info("%s %d upload(s) older than %.0fs", verb, len(purged), age)
        except StorageError as exc:
            log.warning("upload purging failed: %s", exc)
        await asyncio.sleep(interval)
