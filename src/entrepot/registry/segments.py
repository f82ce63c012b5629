"""An upload's bytes as segments, on drivers that cannot append in place (S3).

An S3 object cannot grow: appending a chunk to ``_uploads/<id>/data`` would copy the whole
upload into a new object, so n chunks would move O(n^2) bytes. There, the first chunk
goes to ``data`` (registry:2's name, created empty at POST) and each later one to an
object of its own, ``data.<offset>`` (the upload's size before it, 20 digits, so the
names sort in order). The upload's bytes are its segments in that order; its size is
their sum; its version (what a saved hash state is bound to) names every segment's
version. On drivers that append in place (the filesystem) an upload is ``data`` alone,
as before. Everything stays under ``_uploads/<id>/``, so purging, cancelling and garbage
collection see one upload.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from entrepot.registry import layout
from entrepot.registry.layout import SEGMENT_OFFSET_DIGITS, is_segment
from entrepot.storage import FileInfo, StorageDriver, StorageNotFound


@dataclass(frozen=True, slots=True)
class Segments:
    """The objects holding an upload's bytes, in order; ``parts[0]`` is ``data``."""

    parts: tuple[FileInfo, ...]

    @property
    def size(self) -> int:
        return sum(part.size for part in self.parts)

    @property
    def version(self) -> str | None:
        """The first segment's version when it is the only one (so a single-segment
        upload is what it always was); else one name for all their versions; None where
        the driver has no versions."""
        if any(part.version is None for part in self.parts):
            return None
        if len(self.parts) == 1:
            return self.parts[0].version
        joined = "\n".join(f"{part.key} {part.size} {part.version}" for part in self.parts)
        return "segments:" + hashlib.sha256(joined.encode()).hexdigest()

    def next_key(self, name: str, upload_id: str) -> str:
        """Where the next chunk goes: ``data`` while the upload is empty, else a new
        segment at the upload's size."""
        if len(self.parts) == 1 and self.size == 0:
            return layout.upload_data(name, upload_id)
        return f"{layout.upload_data(name, upload_id)}.{self.size:0{SEGMENT_OFFSET_DIGITS}d}"

    def with_part(self, part: FileInfo) -> Segments:
        """These segments after ``part`` was written at ``next_key``."""
        if part.key == self.parts[0].key:
            return Segments((part,))
        return Segments((*self.parts, part))

    async def read(self, driver: StorageDriver, chunk_size: int) -> AsyncIterator[bytes]:
        """The upload's bytes, segment after segment (StorageNotFound if one is gone)."""
        for part in self.parts:
            async for chunk in driver.read(part.key, 0, part.size, chunk_size):
                yield chunk


async def load_segments(driver: StorageDriver, name: str, upload_id: str) -> Segments:
    """The upload's segments as stored now. StorageNotFound when the upload has no
    ``data`` (unknown, finished or cancelled)."""
    data = layout.upload_data(name, upload_id)
    if driver.appends_in_place:
        return Segments((await driver.stat(data),))
    folder = layout.upload_dir(name, upload_id)
    names = await driver.list(folder)
    if "data" not in names:
        raise StorageNotFound(data)
    keys = [data] + [f"{folder}/{n}" for n in names if is_segment(n)]
    return Segments(tuple(await asyncio.gather(*(driver.stat(key) for key in keys))))
