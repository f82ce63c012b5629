"""In-process HTTP: the real app over a real filesystem driver, driven by httpx."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.api.oci_client import OciClient, local_client


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "registry"


async def _client(root: Path, *, delete_enabled: bool = True) -> AsyncIterator[OciClient]:
    async with local_client(root, delete_enabled=delete_enabled) as client:
        yield client


@pytest.fixture
async def client(root: Path) -> AsyncIterator[OciClient]:
    async for c in _client(root):
        yield c


@pytest.fixture
async def client_no_delete(root: Path) -> AsyncIterator[OciClient]:
    async for c in _client(root, delete_enabled=False):
        yield c
