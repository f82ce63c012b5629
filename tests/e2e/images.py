"""Test images built offline, as OCI image layout directories, with the standard library only.

Everything is deterministic for a given ``seed``: the same call gives the same bytes and so the
same digests, which tests compare against what registries and clients report.

An image layout (image-spec ``image-layout.md``) is a directory with::

    oci-layout                  {"imageLayoutVersion": "1.0.0"}
    index.json                  an OCI index whose entries carry a ref.name annotation (the tag)
    blobs/sha256/<hex>          every blob: configs, layers, manifests, nested indexes

skopeo reads and writes it as ``oci:DIR:TAG``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"

# Platforms as an index lists them; the key is what tests use to look one up.
PLATFORMS: Mapping[str, Mapping[str, str]] = {
    "linux/amd64": {"architecture": "amd64", "os": "linux"},
    "linux/arm64": {"architecture": "arm64", "os": "linux", "variant": "v8"},
    "linux/s390x": {"architecture": "s390x", "os": "linux"},
}

DEFAULT_LAYER_SIZES: tuple[int, ...] = (16 * 1024, 64 * 1024)
_EPOCH = "1970-01-01T00:00:00Z"


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> bytes:
    """Stable bytes for a JSON document (sorted keys, no spaces), so digests never drift."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Mapping[str, str] | None = None
    annotations: Mapping[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.platform is not None:
            out["platform"] = dict(self.platform)
        if self.annotations is not None:
            out["annotations"] = dict(self.annotations)
        return out


@dataclass(frozen=True)
class Layer:
    descriptor: Descriptor  # of the gzip'd blob
    diff_id: str  # digest of the uncompressed tar
    files: Mapping[str, bytes]  # path inside the image -> content


@dataclass(frozen=True)
class Image:
    """One single-platform image: its manifest, config and layers."""

    platform: str  # "linux/amd64"
    manifest: Descriptor
    config: Descriptor
    layers: tuple[Layer, ...]

    @property
    def blob_digests(self) -> tuple[str, ...]:
        return (self.config.digest, *(layer.descriptor.digest for layer in self.layers))

    @property
    def files(self) -> dict[str, bytes]:
        merged: dict[str, bytes] = {}
        for layer in self.layers:
            merged.update(layer.files)
        return merged


@dataclass(frozen=True)
class ImageLayout:
    """An OCI layout directory holding one tagged artifact (an image or an index of images)."""

    path: Path
    tag: str
    digest: str  # of the manifest or index that the tag names
    media_type: str  # OCI_MANIFEST or OCI_INDEX
    images: Mapping[str, Image] = field(default_factory=dict)  # platform -> image

    @property
    def ref(self) -> str:
        """The skopeo / containers-image reference of this layout's tag."""
        return f"oci:{self.path}:{self.tag}"

    @property
    def is_index(self) -> bool:
        return self.media_type == OCI_INDEX

    @property
    def manifest_digests(self) -> dict[str, str]:
        """platform -> digest of that platform's image manifest."""
        return {name: image.manifest.digest for name, image in self.images.items()}

    @property
    def all_digests(self) -> set[str]:
        """Every blob and manifest that a complete copy of this artifact holds."""
        out = {self.digest}
        for image in self.images.values():
            out.add(image.manifest.digest)
            out.update(image.blob_digests)
        return out

    def blob(self, digest: str) -> bytes:
        return read_blob(self.path, digest)


def read_blob(layout: Path, digest: str) -> bytes:
    algorithm, encoded = digest.split(":", 1)
    return (layout / "blobs" / algorithm / encoded).read_bytes()


def _write_blob(layout: Path, data: bytes) -> str:
    digest = sha256_digest(data)
    path = layout / "blobs" / "sha256" / digest.split(":", 1)[1]
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return digest


def _init_layout(layout: Path) -> None:
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
    if not (layout / "index.json").exists():
        _write_index_json(layout, [])


def _write_index_json(layout: Path, manifests: Sequence[dict[str, Any]]) -> None:
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": list(manifests)}
    (layout / "index.json").write_bytes(json.dumps(index, indent=2).encode() + b"\n")


def _tag_in_layout(layout: Path, tag: str, descriptor: Descriptor) -> None:
    """Point `tag` at `descriptor` in index.json, replacing an older entry of the same tag."""
    index = json.loads((layout / "index.json").read_bytes())
    kept = [
        entry
        for entry in index.get("manifests", [])
        if entry.get("annotations", {}).get(REF_NAME) != tag
    ]
    tagged = Descriptor(
        descriptor.media_type, descriptor.digest, descriptor.size, annotations={REF_NAME: tag}
    )
    _write_index_json(layout, [*kept, tagged.to_json()])


def make_layer_tar(files: Mapping[str, bytes]) -> bytes:
    """An uncompressed tar with the parent directories of `files`, fixed owners and times."""
    buffer = io.BytesIO()
    dirs: set[str] = set()
    for name in files:
        parts = name.strip("/").split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:depth]))
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(dirs):
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            info.mtime = 0
            tar.addfile(info)
        for name in sorted(files):
            data = files[name]
            info = tarfile.TarInfo(name.strip("/"))
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def gzip_deterministic(data: bytes) -> bytes:
    # mtime=0 and no file name keep the gzip header, and so the digest, stable.
    return gzip.compress(data, compresslevel=6, mtime=0)


def _build_single(
    layout: Path,
    *,
    platform: str,
    seed: int,
    layer_sizes: Sequence[int],
    label: str,
) -> Image:
    if platform not in PLATFORMS:
        raise ValueError(f"unknown platform {platform!r}; known: {sorted(PLATFORMS)}")
    rng = random.Random(f"{label}/{platform}/{seed}")
    layers: list[Layer] = []
    for number, size in enumerate(layer_sizes):
        files = {
            f"entrepot-test/{label}/layer{number}.bin": rng.randbytes(size),
            f"entrepot-test/{label}/layer{number}.txt": (
                f"{label} {platform} seed={seed} layer={number}\n".encode()
            ),
        }
        tar = make_layer_tar(files)
        blob = gzip_deterministic(tar)
        digest = _write_blob(layout, blob)
        layers.append(
            Layer(
                descriptor=Descriptor(OCI_LAYER_GZIP, digest, len(blob)),
                diff_id=sha256_digest(tar),
                files=files,
            )
        )
    plat = PLATFORMS[platform]
    config_doc: dict[str, Any] = {
        **plat,
        "created": _EPOCH,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Labels": {"org.entrepot.test": label, "org.entrepot.test.seed": str(seed)},
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [
            {"created": _EPOCH, "created_by": f"entrepot-test layer {n}"}
            for n in range(len(layers))
        ],
    }
    config_bytes = canonical_json(config_doc)
    config = Descriptor(OCI_CONFIG, _write_blob(layout, config_bytes), len(config_bytes))
    manifest_doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.to_json(),
        "layers": [layer.descriptor.to_json() for layer in layers],
        "annotations": {"org.entrepot.test": label},
    }
    manifest_bytes = canonical_json(manifest_doc)
    manifest = Descriptor(
        OCI_MANIFEST, _write_blob(layout, manifest_bytes), len(manifest_bytes), platform=plat
    )
    return Image(platform=platform, manifest=manifest, config=config, layers=tuple(layers))


def build_image(
    layout: Path,
    *,
    tag: str = "latest",
    seed: int = 0,
    platform: str = "linux/amd64",
    layer_sizes: Sequence[int] = DEFAULT_LAYER_SIZES,
    label: str = "single",
) -> ImageLayout:
    """Write a single-platform image (a config and one gzip'd tar layer per size) into `layout`.

    The layout directory is created if needed; an existing one keeps its other tags.
    Layer content is pseudo-random (incompressible), so each gzip'd blob is a little larger
    than its size in `layer_sizes`.
    """
    _init_layout(layout)
    image = _build_single(
        layout, platform=platform, seed=seed, layer_sizes=layer_sizes, label=label
    )
    manifest = Descriptor(image.manifest.media_type, image.manifest.digest, image.manifest.size)
    _tag_in_layout(layout, tag, manifest)
    return ImageLayout(
        path=layout,
        tag=tag,
        digest=image.manifest.digest,
        media_type=OCI_MANIFEST,
        images={platform: image},
    )


def build_index(
    layout: Path,
    *,
    tag: str = "latest",
    seed: int = 0,
    platforms: Sequence[str] = ("linux/amd64", "linux/arm64"),
    layer_sizes: Sequence[int] = DEFAULT_LAYER_SIZES,
    label: str = "multiarch",
) -> ImageLayout:
    """Write a multi-platform image: an OCI index whose children are one image per platform.

    Each child has its own config and layers (they share no blobs).
    """
    _init_layout(layout)
    images = {
        platform: _build_single(
            layout, platform=platform, seed=seed, layer_sizes=layer_sizes, label=label
        )
        for platform in platforms
    }
    index_doc = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [image.manifest.to_json() for image in images.values()],
        "annotations": {"org.entrepot.test": label},
    }
    index_bytes = canonical_json(index_doc)
    index = Descriptor(OCI_INDEX, _write_blob(layout, index_bytes), len(index_bytes))
    _tag_in_layout(layout, tag, index)
    return ImageLayout(
        path=layout, tag=tag, digest=index.digest, media_type=OCI_INDEX, images=images
    )


def layout_tags(layout: Path) -> dict[str, str]:
    """tag -> digest, as the layout's index.json lists them (for checking a pulled-back copy)."""
    index = json.loads((layout / "index.json").read_bytes())
    out: dict[str, str] = {}
    for entry in index.get("manifests", []):
        name = entry.get("annotations", {}).get(REF_NAME)
        if name is not None:
            out[name] = entry["digest"]
    return out


def assert_layout_holds(layout: Path, tag: str, expected: ImageLayout) -> None:
    """A pulled-back OCI layout has the tag at the expected digest and every blob,
    byte-equal to what was pushed."""
    assert layout_tags(layout)[tag] == expected.digest
    for digest in expected.all_digests:
        blob = layout / "blobs" / "sha256" / digest.split(":", 1)[1]
        assert blob.is_file(), f"{digest} missing from {layout}"
        data = blob.read_bytes()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == digest, f"{blob} is corrupt"
        assert data == expected.blob(digest), f"{blob} differs from what was pushed"
