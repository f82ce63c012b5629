"""Manifest and index parsing that keeps the exact bytes.

A parsed manifest is a read-only view: its digest is always computed from ``raw``, and
``raw`` is what is stored and served, so signatures and pulls by digest keep working.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from entrepot.oci import mediatypes as mt
from entrepot.oci.digest import Digest
from entrepot.oci.errors import PAYLOAD_TOO_LARGE, ErrorCode, RegistryError

# distribution-spec: registries SHOULD accept manifests of at least 4 MiB; we cap there.
MAX_MANIFEST_SIZE = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None
    urls: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, value: Any, where: str) -> Descriptor:
        if not isinstance(value, dict):
            raise _invalid(f"{where} must be a descriptor object")
        media_type = value.get("mediaType")
        digest = value.get("digest")
        size = value.get("size")
        if not isinstance(media_type, str) or not media_type:
            raise _invalid(f"{where}.mediaType is missing")
        if not isinstance(digest, str):
            raise _invalid(f"{where}.digest is missing")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _invalid(f"{where}.size must be a non-negative integer")
        try:
            parsed = Digest.parse(digest)
        except RegistryError as exc:
            raise _invalid(f"{where}.digest: {exc.message}") from exc
        annotations = value.get("annotations")
        artifact_type = value.get("artifactType")
        urls = value.get("urls") or ()
        return cls(
            media_type=media_type,
            digest=parsed,
            size=size,
            artifact_type=artifact_type if isinstance(artifact_type, str) else None,
            annotations=annotations if isinstance(annotations, dict) else None,
            urls=tuple(u for u in urls if isinstance(u, str)),
        )


@dataclass(frozen=True, slots=True)
class Manifest:
    raw: bytes
    digest: Digest
    media_type: str
    config: Descriptor | None
    layers: tuple[Descriptor, ...]
    manifests: tuple[Descriptor, ...]
    subject: Descriptor | None
    artifact_type: str | None
    annotations: dict[str, str] | None

    @property
    def is_index(self) -> bool:
        return self.media_type in mt.INDEXES

    def required_blobs(self) -> list[Descriptor]:
        """Blobs that must already be in the repository for this manifest to be accepted."""
        blobs = [] if self.config is None else [self.config]
        blobs.extend(
            layer
            for layer in self.layers
            if not (layer.media_type in mt.FOREIGN_LAYERS and layer.urls)
        )
        return blobs

    def referrer_descriptor(self) -> dict[str, Any]:
        """This manifest as an entry of a referrers index (distribution-spec, referrers API)."""
        entry: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": str(self.digest),
            "size": len(self.raw),
        }
        artifact_type = self.artifact_type
        if artifact_type is None and self.config is not None:
            artifact_type = self.config.media_type
        if artifact_type is not None:
            entry["artifactType"] = artifact_type
        if self.annotations:
            entry["annotations"] = self.annotations
        return entry


def _invalid(message: str) -> RegistryError:
    return RegistryError(ErrorCode.MANIFEST_INVALID, message)


def _bare_media_type(content_type: str | None) -> str | None:
    if not content_type:
        return None
    return content_type.split(";", 1)[0].strip().lower() or None


def parse_manifest(raw: bytes, content_type: str | None = None) -> Manifest:
    """Parse manifest bytes as pushed with ``content_type`` (None when reading from storage)."""
    if len(raw) > MAX_MANIFEST_SIZE:
        raise RegistryError(
            ErrorCode.SIZE_INVALID,
            f"manifest is larger than {MAX_MANIFEST_SIZE} bytes",
            status=PAYLOAD_TOO_LARGE,
        )
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _invalid(f"manifest is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise _invalid("manifest must be a JSON object")

    declared = body.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise _invalid("mediaType must be a string")
    header = _bare_media_type(content_type)
    if header in ("application/json", "application/octet-stream"):
        header = None
    if declared is not None and header is not None and declared != header:
        raise _invalid(f"mediaType {declared!r} does not match Content-Type {header!r}")
    media_type = declared or header or _guess_media_type(body)

    if media_type in (mt.DOCKER_SCHEMA1, mt.DOCKER_SCHEMA1_SIGNED):
        raise _invalid("Docker schema1 manifests are not supported; push schema2 or OCI")
    if media_type not in mt.MANIFEST_TYPES:
        raise _invalid(f"unsupported manifest media type {media_type!r}")
    if body.get("schemaVersion") != 2:
        raise _invalid("schemaVersion must be 2")

    config: Descriptor | None = None
    layers: tuple[Descriptor, ...] = ()
    manifests: tuple[Descriptor, ...] = ()
    if media_type in mt.IMAGE_MANIFESTS:
        config = Descriptor.from_json(body.get("config"), "config")
        raw_layers = body.get("layers", [])
        if not isinstance(raw_layers, list):
            raise _invalid("layers must be a list")
        layers = tuple(Descriptor.from_json(v, f"layers[{i}]") for i, v in enumerate(raw_layers))
    else:
        raw_children = body.get("manifests")
        if not isinstance(raw_children, list):
            raise _invalid("manifests must be a list")
        manifests = tuple(
            Descriptor.from_json(v, f"manifests[{i}]") for i, v in enumerate(raw_children)
        )

    subject = None
    if body.get("subject") is not None:
        subject = Descriptor.from_json(body["subject"], "subject")
    artifact_type = body.get("artifactType")
    annotations = body.get("annotations")
    return Manifest(
        raw=raw,
        digest=Digest.of(raw),
        media_type=media_type,
        config=config,
        layers=layers,
        manifests=manifests,
        subject=subject,
        artifact_type=artifact_type if isinstance(artifact_type, str) else None,
        annotations=annotations if isinstance(annotations, dict) else None,
    )


def _guess_media_type(body: dict[str, Any]) -> str:
    """OCI manifests may omit mediaType; tell an index from an image by its fields."""
    if "manifests" in body:
        return mt.OCI_INDEX
    if "config" in body:
        return mt.OCI_MANIFEST
    if body.get("schemaVersion") == 1:
        return mt.DOCKER_SCHEMA1
    raise _invalid("cannot tell the manifest's media type: no mediaType, Content-Type or fields")
