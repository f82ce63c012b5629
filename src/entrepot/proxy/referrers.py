"""Referrers of cached images (distribution-spec "Listing Referrers"): signatures, SBOMs
and attestations come along with what the cache holds.

The upstream is asked with its referrers API; an upstream without one (a 404, as
registry:2 2.8 answers) is read through the "Referrers Tag Schema" instead: the tag
``<alg>-<hex>`` holding an index of the referrers, as cosign, notation and oras write it
(that tag is then cached like any other, so tag-schema clients read it here too). The
answer, unfiltered, is kept outside registry:2's tree and treated like a tag: served
without asking upstream for ``tagttl``, asked again after, and served stale when the
upstream fails. Referring manifests and their blobs are then pulled by digest through
the cache as any others are.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from entrepot.oci.digest import Digest
from entrepot.oci.errors import ErrorCode, RegistryError
from entrepot.proxy.upstream_errors import UpstreamError, UpstreamInvalid, UpstreamNotFound
from entrepot.proxy.upstreams import error_kind
from entrepot.requestinfo import note_cache
from entrepot.storage import StorageError, StorageNotFound

if TYPE_CHECKING:
    from entrepot.proxy.cache import CachedManifests

log = logging.getLogger("entrepot.proxy")

RECORDS = "entrepot/referrers"
Entries = list[dict[str, Any]]


def record_key(name: str, subject: Digest) -> str:
    """Where the upstream's last answer for ``subject`` in cached repository ``name`` is."""
    return f"{RECORDS}/{name}/{subject.algorithm}/{subject.encoded}"


def fallback_tag(subject: Digest) -> str:
    """The Referrers Tag Schema's tag: ``<alg>-<ref>``, truncated to 32 and 64 characters."""
    return f"{subject.algorithm[:32]}-{subject.encoded[:64]}"


class UpstreamReferrers:
    """The referrers of one cached repository's manifests."""

    def __init__(self, manifests: CachedManifests) -> None:
        self.manifests = manifests
        self.cache = manifests.cache
        self.upstream = manifests.upstream
        self.driver = manifests.cache.local.driver

    async def list(self, subject: Digest) -> Entries:
        """Every referrer of ``subject`` (upstream's, then ones held only here)."""
        key = record_key(self.manifests.name, subject)
        record = await self._read(key)
        if record is not None and record[1]:
            note_cache("hit", self.upstream.host)
            entries = record[0]
        else:
            try:
                entries = await self.cache.once(
                    ("referrers", self.manifests.name, str(subject)),
                    lambda: self._refresh(subject, key, revalidating=record is not None),
                )
            except (UpstreamError, RegistryError) as exc:
                entries = self._stale(exc, subject, record[0] if record else None)
        held = await self.manifests.held_referrers(subject)
        seen = {entry.get("digest") for entry in entries}
        return entries + [entry for entry in held if entry["digest"] not in seen]

    def _stale(self, exc: Exception, subject: Digest, cached: Entries | None) -> Entries:
        """The cached answer when the upstream failed; the failure without one."""
        if cached is None:
            if isinstance(exc, UpstreamError):
                raise self.manifests._error(exc, ErrorCode.MANIFEST_UNKNOWN, str(subject))
            raise exc
        if isinstance(exc, UpstreamError):
            self.manifests._count(f"error_{error_kind(exc)}")
        self.manifests._count("stale_served")
        note_cache("stale", self.upstream.host)
        reason = exc.message if isinstance(exc, RegistryError) else str(exc)
        log.warning(
            "serving stale referrers of %s@%s from cache: upstream %s failed: %s",
            self.manifests.name,
            subject,
            self.upstream.host,
            reason,
        )
        return cached

    async def _refresh(self, subject: Digest, key: str, *, revalidating: bool) -> Entries:
        note_cache("revalidated", self.upstream.host)
        if revalidating:
            self.manifests._count("revalidation")
        try:
            entries = await self.upstream.client.list_referrers(
                self.manifests.upstream_name, subject
            )
        except (UpstreamNotFound, UpstreamInvalid) as exc:
            # 404 is the spec's "no referrers API"; some registries answer an unknown
            # route with 400/405 or a page that is no index: the tag schema then.
            log.info("upstream %s: no referrers API (%s): reading tags", self.upstream.host, exc)
            entries = await self._from_tag_schema(subject)
        try:
            await self.driver.put_content(key, json.dumps({"manifests": entries}).encode())
        except StorageError as exc:
            log.warning(
                "could not keep the referrers of %s@%s: %s", self.manifests.name, subject, exc
            )
        return entries

    async def _from_tag_schema(self, subject: Digest) -> Entries:
        """The index under the subject's fallback tag, fetched (and cached) as a tag."""
        tag = fallback_tag(subject)
        try:
            content = await self.manifests.get(tag)
        except RegistryError as exc:
            if exc.code is ErrorCode.MANIFEST_UNKNOWN:
                return []  # nothing refers to it
            raise
        body = json.loads(content.raw)  # verified JSON: the cache parsed it on the way in
        entries = body.get("manifests") if isinstance(body, dict) else None
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise UpstreamInvalid(f"tag {tag} does not hold an image index")
        return entries

    async def _read(self, key: str) -> tuple[Entries, bool] | None:
        """The answer kept for ``key`` and whether it is still fresh; None without one."""
        try:
            info = await self.driver.stat(key)
            raw = await self.driver.get_content(key)
        except StorageNotFound:
            return None
        except StorageError as exc:
            log.warning("could not read the kept referrers %s: %s", key, exc)
            return None
        try:
            entries = json.loads(raw)["manifests"]
        except (ValueError, KeyError, TypeError):
            return None  # a torn write: ask upstream again
        if not isinstance(entries, list):
            return None
        # While the upstream is offline, what is kept does not expire (as cached tags).
        fresh = self.upstream.offline or (
            self.cache.clock() - info.mtime < self.upstream.policy.tag_ttl
        )
        return entries, fresh


def filtered(entries: Entries, artifact_type: str | None) -> Entries:
    if artifact_type is None:
        return entries
    return [entry for entry in entries if entry.get("artifactType") == artifact_type]
