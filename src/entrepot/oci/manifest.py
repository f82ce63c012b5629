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
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= _INT64_MAX:
            raise _invalid(f"{where}.size must be an integer from 0 to {_INT64_MAX}")
        try:
            parsed = Digest.parse(digest)
        except RegistryError as exc:
            raise _invalid(f"{where}.digest: {exc.message}") from exc
        urls = value.get("urls")
        if urls is not None and not _is_list_of_strings(urls):
            raise _invalid(f"{where}.urls must be a list of strings")
        return cls(
            media_type=media_type,
            digest=parsed,
            size=size,
            artifact_type=_optional_string(value, "artifactType", where),
            annotations=_annotations(value, where),
            urls=tuple(urls or ()),
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


# Sizes are int64 to the Go clients (containerd, registry:2) that read what we accept.
_INT64_MAX = 2**63 - 1


def _is_list_of_strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _optional_string(body: dict[str, Any], key: str, where: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise _invalid(f"{where}.{key} must be a string")
    return value


def _annotations(body: dict[str, Any], where: str) -> dict[str, str] | None:
    """image-spec: annotations are a map of strings to strings."""
    value = body.get("annotations")
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _invalid(f"{where}.annotations must map strings to strings")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Refuse a key given twice: clients that keep the first and a registry that keeps
    the last would see two different manifests under one digest."""
    body: dict[str, Any] = {}
    for key, value in pairs:
        if key in body:
            raise _invalid(f"key {key!r} appears more than once")
        body[key] = value
    return body


def _decode(raw: bytes, strict: bool) -> Any:
    """The JSON value of ``raw``; MANIFEST_INVALID for anything that is not one."""
    try:
        if strict:
            # RFC 8259: JSON between systems is UTF-8, without a byte order mark
            # (json.loads would also take UTF-16 and UTF-32, Go clients do not).
            return json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _invalid(f"manifest is not valid UTF-8 JSON: {exc}") from exc
    except RecursionError as exc:
        raise _invalid("manifest is nested too deeply") from exc


def _bare_media_type(content_type: str | None) -> str | None:
    if not content_type:
        return None
    return content_type.split(";", 1)[0].strip().lower() or None


def parse_manifest(
    raw: bytes, content_type: str | None = None, *, strict: bool = False
) -> Manifest:
    """Parse manifest bytes as pushed with ``content_type`` (None when reading from storage).

    ``strict`` (a push): also refuse what JSON allows but clients read differently or not
    at all: encodings other than UTF-8, a byte order mark, duplicate keys, a fractional
    schemaVersion. What is already stored or comes from an upstream is read as it is."""
    if len(raw) > MAX_MANIFEST_SIZE:
        raise RegistryError(
            ErrorCode.SIZE_INVALID,
            f"manifest is larger than {MAX_MANIFEST_SIZE} bytes",
            status=PAYLOAD_TOO_LARGE,
        )
    body = _decode(raw, strict)
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
    version = body.get("schemaVersion")
    if version != 2 or (strict and type(version) is not int):
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
    artifact_type = _optional_string(body, "artifactType", "manifest")
    annotations = _annotations(body, "manifest")
    return Manifest(
        raw=raw,
        digest=Digest.of(raw),
        media_type=media_type,
        config=config,
        layers=layers,
        manifests=manifests,
        subject=subject,
        artifact_type=artifact_type,
        annotations=annotations,
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
