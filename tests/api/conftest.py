"""In-process HTTP: the real app over a real filesystem driver, driven by httpx."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from entrepot.http.app import build_app
from entrepot.http.context import ApiContext
from entrepot.registry.local import LocalRegistry
from entrepot.storage.filesystem import FilesystemDriver
from tests.api.oci_client import OciClient


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "registry"


async def _client(root: Path, *, delete_enabled: bool = True) -> AsyncIterator[OciClient]:
    local = LocalRegistry(FilesystemDriver(root), delete_enabled=delete_enabled)
    app = build_app(ApiContext(resolver=local))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://registry.test") as http:
        yield OciClient(http)


@pytest.fixture
async def client(root: Path) -> AsyncIterator[OciClient]:
    async for c in _client(root):
        yield c


@pytest.fixture
async def client_no_delete(root: Path) -> AsyncIterator[OciClient]:
    async for c in _client(root, delete_enabled=False):
        yield c
