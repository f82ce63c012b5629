"""A collection acting at the one moment that matters to a push: as the server writes a
link (its check of the blob done, its link not yet, or just, written)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from entrepot.storage.filesystem import FilesystemDriver


def on_link_write(
    monkeypatch: pytest.MonkeyPatch,
    key_part: str,
    action: Callable[[], None],
    *,
    after: bool = False,
) -> list[str]:
    """Run ``action`` once, just before (or ``after``) the server writes the first link
    whose key holds ``key_part``; the keys it acted at (one, when it ran)."""
    write = FilesystemDriver.put_content
    acted: list[str] = []

    async def put_content(self: FilesystemDriver, key: str, data: bytes) -> None:
        now = not acted and key_part in key and key.endswith("/link")
        if now:
            acted.append(key)
            if not after:
                action()
        await write(self, key, data)
        if now and after:
            action()

    monkeypatch.setattr(FilesystemDriver, "put_content", put_content)
    return acted
