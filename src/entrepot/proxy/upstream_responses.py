"""Reading an upstream's responses: bodies under a cap, the facts in its headers (digest,
size, media type, the next page), its error bodies, and the lists it returns, each checked;
anything malformed is ``UpstreamInvalid`` naming the upstream. Split from
``upstream_client.py``, which sends the requests."""

from __future__ import annotations

import json
import re
from typing import Any

import aiohttp
from aiohttp.http_exceptions import ContentEncodingError

from entrepot.oci.digest import Digest, is_digest
from entrepot.oci.errors import RegistryError
from entrepot.oci.manifest import Descriptor
from entrepot.proxy.upstream_errors import UpstreamInvalid

MAX_ERROR_BODY = 64 * 1024
MAX_REDIRECTS = 5

_LINK_RE = re.compile(r"<([^>]*)>((?:\s*;\s*[^;,]+)*)")


def head_facts(
    response: aiohttp.ClientResponse, expected: Digest | None, what: str, host: str
) -> tuple[Digest | None, int]:
    """A HEAD response's Docker-Content-Digest (checked against ``expected``) and size."""
    header = header_digest(response, what, host)
    if expected and header and header.algorithm == expected.algorithm and header != expected:
        raise UpstreamInvalid(f"{what}: upstream reports digest {header}", upstream=host)
    size = content_length(response)
    if size is None:
        raise UpstreamInvalid(f"{what}: no valid Content-Length", upstream=host)
    return header, size


def header_digest(response: aiohttp.ClientResponse, what: str, host: str) -> Digest | None:
    value = response.headers.get("Docker-Content-Digest")
    if not value:
        return None
    try:
        return Digest.parse(value.strip())
    except RegistryError:
        message = f"{what}: invalid Docker-Content-Digest {value[:100]!r}"
        raise UpstreamInvalid(message, upstream=host) from None


def parse_tags(raw: bytes, what: str, host: str) -> list[str]:
    body = parse_json(raw)
    tags = body.get("tags") or [] if isinstance(body, dict) else None
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise UpstreamInvalid(f"{what}: the tag list is malformed", upstream=host)
    return [str(t) for t in tags]


def parse_descriptors(raw: bytes, what: str, host: str) -> list[dict[str, Any]]:
    """The ``manifests`` of an image index, each checked to be a descriptor."""
    body = parse_json(raw)
    entries = body.get("manifests") or [] if isinstance(body, dict) else None
    if not isinstance(entries, list):
        raise UpstreamInvalid(f"{what}: not an image index", upstream=host)
    for index, entry in enumerate(entries):
        try:
            Descriptor.from_json(entry, f"manifests[{index}]")
        except RegistryError as exc:
            raise UpstreamInvalid(f"{what}: {exc.message}", upstream=host) from None
    return entries


async def read_body(response: aiohttp.ClientResponse, cap: int) -> bytes:
    """The whole body; ValueError when it is over ``cap`` bytes."""
    length = response.content_length
    if length is not None and length > cap:
        raise ValueError(f"body of {length} bytes exceeds {cap}")
    body = bytearray()
    async for chunk in response.content.iter_any():
        body += chunk
        if len(body) > cap:
            raise ValueError(f"body exceeds {cap} bytes")
    return bytes(body)


async def error_detail(response: aiohttp.ClientResponse) -> str:
    """The first error of a distribution-spec error body, briefly, or ""."""
    try:
        first = json.loads(await read_body(response, MAX_ERROR_BODY))["errors"][0]
        return f" ({str(first.get('code'))[:50]}: {str(first.get('message'))[:200]})"
    except (
        aiohttp.ClientError,
        TimeoutError,
        ValueError,
        AttributeError,
        TypeError,
        IndexError,
        KeyError,
    ):
        return ""


def undecodable(exc: BaseException) -> bool:
    # aiohttp reports a body it cannot decode as a broken payload caused by this.
    return isinstance(exc.__cause__, ContentEncodingError)


def describe(exc: BaseException) -> str:
    """An aiohttp exception, briefly; never a URL (which may be signed) or a header."""
    if isinstance(exc, aiohttp.TooManyRedirects):
        return f"more than {MAX_REDIRECTS} redirects"
    if isinstance(exc, aiohttp.InvalidURL | aiohttp.ClientResponseError):
        return type(exc).__name__  # their text holds the URL
    if isinstance(exc, TimeoutError):
        return f"timed out ({exc})" if str(exc) else "timed out"
    text = str(exc)[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def reference_digest(reference: str) -> Digest | None:
    return Digest.parse(reference) if is_digest(reference) else None


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def content_type(response: aiohttp.ClientResponse) -> str:
    return response.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()


def content_length(response: aiohttp.ClientResponse) -> int | None:
    value = response.headers.get("Content-Length", "")
    return int(value) if value.isascii() and value.isdigit() else None


def next_link(values: list[str]) -> str | None:
    for value in values:
        for target, params in _LINK_RE.findall(value):
            for param in params.split(";"):
                key, _, rel = param.partition("=")
                if key.strip().lower() == "rel" and "next" in rel.strip().strip('"').split():
                    return str(target)
    return None
