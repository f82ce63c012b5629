"""A tiny OCI distribution client over httpx, so API tests read like client workflows."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from entrepot.http.app import build_app
from entrepot.http.context import ApiContext
from entrepot.registry.local import LocalRegistry
from entrepot.storage.filesystem import FilesystemDriver

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha256(data), "size": len(data), **extra}


@dataclass
class Image:
    config: bytes
    layers: list[bytes]
    manifest: bytes

    @property
    def digest(self) -> str:
        return sha256(self.manifest)


def make_image(
    seed: str = "a",
    *,
    layer_sizes: tuple[int, ...] = (1024, 2048),
    media_type: str = OCI_MANIFEST,
    subject: dict[str, Any] | None = None,
    artifact_type: str | None = None,
    annotations: dict[str, str] | None = None,
) -> Image:
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
    layers = [os.urandom(size) for size in layer_sizes]
    config_type = (
        OCI_CONFIG
        if media_type == OCI_MANIFEST
        else ("application/vnd.docker.container.image.v1+json")
    )
    layer_type = (
        OCI_LAYER
        if media_type == OCI_MANIFEST
        else ("application/vnd.docker.image.rootfs.diff.tar.gzip")
    )
    body: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": descriptor(config_type, config),
        "layers": [descriptor(layer_type, layer) for layer in layers],
    }
    if subject is not None:
        body["subject"] = subject
    if artifact_type is not None:
        body["artifactType"] = artifact_type
    if annotations is not None:
        body["annotations"] = annotations
    # Indented on purpose: a registry that re-serialises would change the digest.
    return Image(config, layers, json.dumps(body, indent=3).encode())


def make_index(children: list[Image], media_type: str = OCI_INDEX) -> bytes:
    child_type = OCI_MANIFEST if media_type == OCI_INDEX else DOCKER_MANIFEST
    arches = ["amd64", "arm64", "ppc64le", "s390x"]
    body = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [
            descriptor(child_type, child.manifest, platform={"os": "linux", "architecture": arch})
            for child, arch in zip(children, arches, strict=False)
        ],
    }
    return json.dumps(body, indent=1).encode()


class OciClient:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def push_blob(self, name: str, data: bytes) -> httpx.Response:
        """POST then monolithic PUT (the most common client flow)."""
        started = await self.http.post(f"/v2/{name}/blobs/uploads/")
        assert started.status_code == 202, started.text
        location = started.headers["location"]
        sep = "&" if "?" in location else "?"
        return await self.http.put(f"{location}{sep}digest={sha256(data)}", content=data)

    async def push_image(self, name: str, image: Image, tag: str | None = None) -> httpx.Response:
        for blob in [image.config, *image.layers]:
            response = await self.push_blob(name, blob)
            assert response.status_code == 201, response.text
        media_type = json.loads(image.manifest)["mediaType"]
        return await self.put_manifest(name, tag or image.digest, image.manifest, media_type)

    async def put_manifest(
        self, name: str, reference: str, body: bytes, media_type: str
    ) -> httpx.Response:
        return await self.http.put(
            f"/v2/{name}/manifests/{reference}",
            content=body,
            headers={"Content-Type": media_type},
        )

    async def get_manifest(
        self, name: str, reference: str, accept: str | None = None, method: str = "GET"
    ) -> httpx.Response:
        accept = accept or ", ".join(
            [
                OCI_MANIFEST,
                OCI_INDEX,
                DOCKER_MANIFEST,
                "application/vnd.docker.distribution.manifest.list.v2+json",
            ]
        )
        return await self.http.request(
            method, f"/v2/{name}/manifests/{reference}", headers={"Accept": accept}
        )

    async def get_json(self, path: str) -> Any:
        response = await self.http.get(path)
        assert response.status_code == 200, response.text
        return response.json()


def error_code(response: httpx.Response) -> str:
    body = response.json()
    code: str = body["errors"][0]["code"]
    return code


@asynccontextmanager
async def local_client(root: Path, *, delete_enabled: bool = True) -> AsyncIterator[OciClient]:
    """A client of the real app, in process, over a filesystem registry at ``root``."""
    local = LocalRegistry(FilesystemDriver(root), delete_enabled=delete_enabled)
    app = build_app(ApiContext(resolver=local))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://registry.test") as http:
        yield OciClient(http)
