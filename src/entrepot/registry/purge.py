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
    it), else the data file's mtime, else None (a session still being created, or one a
    crash left half-made: it cannot be dated yet)."""
    try:
        text = (await driver.get_content(f"{upload_dir}/startedat")).decode().strip()
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except (StorageError, ValueError, UnicodeDecodeError):
        pass
    try:
        return (await driver.stat(f"{upload_dir}/data")).mtime
    except StorageError:
        return None


class UndatedUploads:
    """Upload sessions seen without a start time, and when first seen. A session being
    created has neither ``startedat`` nor ``data`` for a moment, so an undated session is
    never taken as old: it is purged only when it is still undated ``age`` after this
    purger first saw it. Entries for sessions that are gone are dropped on every run, so
    this stays as small as the set of undated sessions on disk."""

    def __init__(self) -> None:
        self.first_seen: dict[str, float] = {}

    def started(self, upload_dir: str, now: float) -> float:
        return self.first_seen.setdefault(upload_dir, now)

    def keep_only(self, seen: set[str]) -> None:
        for upload_dir in [d for d in self.first_seen if d not in seen]:
            del self.first_seen[upload_dir]


async def purge_uploads(
    driver: StorageDriver,
    older_than: float,
    *,
    dry_run: bool = False,
    now: float | None = None,
    undated: UndatedUploads | None = None,
) -> list[str]:
    """Delete upload sessions started more than ``older_than`` seconds ago; return them.
    Sessions with no start time yet are dated by ``undated`` (when this purger first saw
    them); without it they are left alone."""
    now = now if now is not None else datetime.now(UTC).timestamp()
    cutoff = now - older_than
    purged: list[str] = []
    undated_seen: set[str] = set()

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
            if started is None:
                if undated is None:
                    continue
                undated_seen.add(upload_dir)
                started = undated.started(upload_dir, now)
            if started >= cutoff:
                continue
            purged.append(upload_dir)
            if not dry_run:
                with contextlib.suppress(StorageNotFound):
                    await driver.delete(upload_dir)

    await walk(layout.REPOSITORIES)
    if undated is not None:
        undated.keep_only(undated_seen - set(purged))
    return purged


async def run_upload_purger(
    driver: StorageDriver, age: float, interval: float, dry_run: bool
) -> None:
    """Purge now and then every ``interval``, as registry:2 does (its first run is
    delayed by up to half an hour at random; here it runs shortly after start)."""
    await asyncio.sleep(min(interval, 60.0))
    undated = UndatedUploads()
    while True:
        try:
            purged = await purge_uploads(driver, age, dry_run=dry_run, undated=undated)
            if purged:
                verb = "would purge" if dry_run else "purged"
                log.info("%s %d upload(s) older than %.0fs", verb, len(purged), age)
        except StorageError as exc:
            log.warning("upload purging failed: %s", exc)
        await asyncio.sleep(interval)
