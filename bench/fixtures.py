"""Benchmark data written directly in registry:2's on-disk layout.

Pushing 10,000 repositories over HTTP would take longer than the whole benchmark, so the
fixtures are files: ``docker/registry/v2/blobs/sha256/xx/<hex>/data`` and, per repository,
``_layers/sha256/<hex>/link``, ``_manifests/revisions/sha256/<hex>/link`` and
``_manifests/tags/<tag>/{current,index/sha256/<hex>}/link`` (see
``src/entrepot/registry/layout.py``). Both servers read the same directory, one after the
other, for the read-only workloads.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO


def default_tmpdir() -> Path:
    """Where a bench writes its stores: /dev/shm with room (4 GiB free), else the temp dir
    (bench.__main__ and bench.scale, which runs on its own too)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 4 << 30:
        return shm
    return Path(tempfile.gettempdir())


ROOT = "docker/registry/v2"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
# What the load generators send: registry:2 answers 404 to an OCI manifest request whose
# Accept header does not name the OCI type.
MANIFEST_ACCEPT = f"{OCI_MANIFEST}, application/vnd.docker.distribution.manifest.v2+json"

MiB = 1024 * 1024
APP_REPO = "bench/app"  # the repository with many tags and the big layer
PROXIED_REPO = "bench/proxied"  # the upstream's repository, pulled through the proxies


@dataclass(frozen=True)
class Blob:
    digest: str  # "sha256:<hex>"
    size: int

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]


@dataclass(frozen=True)
class Image:
    """A one-layer OCI image whose layer is the big blob."""

    manifest: bytes
    manifest_blob: Blob
    config: bytes
    config_blob: Blob
    layer: Blob


@dataclass(frozen=True)
class ReadFixture:
    root: Path
    image: Image
    repo: str
    tag: str
    tags: int
    repos: int


def make_layer(path: Path, size: int) -> Blob:
    """A file of ``size`` random bytes (incompressible, like a gzipped layer) and its digest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    hasher = hashlib.sha256()
    step = 16 * MiB
    with path.open("wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(step, left))
            hasher.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return Blob("sha256:" + hasher.hexdigest(), size)


def make_image(layer: Blob, label: str) -> Image:
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": {"bench": label}},
            "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
        },
        separators=(",", ":"),
    ).encode()
    config_blob = _blob_of(config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": config_blob.digest,
                "size": config_blob.size,
            },
            "layers": [{"mediaType": OCI_LAYER, "digest": layer.digest, "size": layer.size}],
        },
        indent=3,  # registry:2 and docker keep whatever bytes they are given
    ).encode()
    return Image(manifest, _blob_of(manifest), config, config_blob, layer)


def _blob_of(data: bytes) -> Blob:
    return Blob("sha256:" + hashlib.sha256(data).hexdigest(), len(data))


class LayoutWriter:
    """Writes blobs and repositories under ``<root>/docker/registry/v2``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.v2 = root / ROOT
        self._made: set[Path] = set()

    def _mkdir(self, path: Path) -> None:
        if path not in self._made:
            path.mkdir(parents=True, exist_ok=True)
            self._made.add(path)

    def _write(self, path: Path, data: bytes) -> None:
        self._mkdir(path.parent)
        path.write_bytes(data)

    def blob_path(self, blob: Blob) -> Path:
        return self.v2 / "blobs" / "sha256" / blob.hex[:2] / blob.hex / "data"

    def put_blob(self, blob: Blob, data: bytes | None = None, source: Path | None = None) -> None:
        """Store a blob from bytes, or by hard-linking (else copying) the file ``source``."""
        target = self.blob_path(blob)
        if target.exists():
            return
        self._mkdir(target.parent)
        if source is None:
            assert data is not None
            target.write_bytes(data)
            return
        try:
            os.link(source, target)  # both servers write new blobs by rename, never in place
        except OSError:
            shutil.copyfile(source, target)

    def put_image_blobs(self, image: Image, layer_source: Path | None) -> None:
        self.put_blob(image.manifest_blob, image.manifest)
        self.put_blob(image.config_blob, image.config)
        if layer_source is not None:
            self.put_blob(image.layer, source=layer_source)

    def put_repository(self, name: str, image: Image, tags: list[str]) -> None:
        # os.* on strings: pathlib costs more than the system calls for 10,000 repositories
        repo = f"{self.v2}/repositories/{name}"
        m = image.manifest_blob
        link = m.digest.encode()
        files = [
            (f"{repo}/_layers/sha256/{blob.hex}", blob.digest.encode())
            for blob in (image.config_blob, image.layer)
        ]
        files.append((f"{repo}/_manifests/revisions/sha256/{m.hex}", link))
        for tag in tags:
            files.append((f"{repo}/_manifests/tags/{tag}/current", link))
            files.append((f"{repo}/_manifests/tags/{tag}/index/sha256/{m.hex}", link))
        for directory, data in files:
            os.makedirs(directory, exist_ok=True)
            fd = os.open(f"{directory}/link", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)


def write_read_fixture(
    root: Path, layer_file: Path, layer: Blob, repos: int, tags: int
) -> ReadFixture:
    """``repos`` repositories in all: ``bench/app`` with ``tags`` tags of an image whose
    layer is the big blob, and ``repos - 1`` others (``library/repo-NNNNN``) with one tag
    of a small image each."""
    writer = LayoutWriter(root)
    image = make_image(layer, "app")
    writer.put_image_blobs(image, layer_file)
    tag_names = ["latest"] + [f"v{i:04d}" for i in range(1, tags)]
    writer.put_repository(APP_REPO, image, tag_names)

    small_layer_data = b"entrepot bench small layer\n" * 40
    small_layer = _blob_of(small_layer_data)
    small = make_image(small_layer, "small")
    writer.put_blob(small_layer, small_layer_data)
    writer.put_image_blobs(small, None)
    for i in range(repos - 1):
        writer.put_repository(f"library/repo-{i:05d}", small, ["latest"])
    return ReadFixture(root, image, APP_REPO, "latest", tags, repos)


def write_upstream_fixture(
    root: Path, layer_file: Path, layer: Blob, fill_layer: tuple[Path, Blob] | None = None
) -> Image:
    """The upstream registry's data: ``bench/proxied:latest``, one image with the big layer;
    ``fill_layer`` (a file and its blob), another blob of that repository, in no image."""
    writer = LayoutWriter(root)
    image = make_image(layer, "proxied")
    writer.put_image_blobs(image, layer_file)
    writer.put_repository(PROXIED_REPO, image, ["latest"])
    if fill_layer is not None:
        source, blob = fill_layer
        writer.put_blob(blob, source=source)
        link = writer.v2 / "repositories" / PROXIED_REPO / "_layers/sha256" / blob.hex / "link"
        writer._write(link, blob.digest.encode())
    return image


class PushLayer:
    """A file of the layer's size for push runs. Each run sets a different 16-byte prefix,
    so that every push is of a blob the server does not have yet; digests are computed
    beforehand, outside the timed part."""

    def __init__(self, path: Path, source: Path) -> None:
        shutil.copyfile(source, path)
        self.path = path
        self.size = path.stat().st_size
        self._file = path.open("r+b")
        self.map = mmap.mmap(self._file.fileno(), 0)
        self._digests: dict[int, str] = {}

    def variant(self, n: int) -> str:
        """Make the file variant ``n``; returns its digest."""
        self.map[:16] = f"entrepot-push{n:03d}".encode()[:16].ljust(16, b"-")
        if n not in self._digests:
            self._digests[n] = "sha256:" + hashlib.sha256(self.map).hexdigest()
        return self._digests[n]

    @property
    def file(self) -> BinaryIO:
        """The open file (for sendfile: its page cache holds what ``map`` wrote)."""
        return self._file

    def close(self) -> None:
        self.map.close()
        self._file.close()
