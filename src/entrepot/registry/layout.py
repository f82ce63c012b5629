"""registry:2's on-disk layout (distribution/registry/storage/paths.go), as storage keys.

Keeping this layout exactly is what lets an existing registry:2 data directory be served
as it is, and lets registry:2 serve a directory Entrepot wrote. The one addition,
``_referrers``, is a directory registry:2 never reads.
"""

from __future__ import annotations

from collections.abc import Iterable

from entrepot.oci.digest import Digest

ROOT = "docker/registry/v2"
REPOSITORIES = f"{ROOT}/repositories"
BLOBS = f"{ROOT}/blobs"
# Names a blob's ``data`` takes next to itself while a collection (``entrepot
# garbage-collect``) or a cache eviction re-checks whether anything links it before
# deleting it; a server that links the blob meanwhile puts it back (BlobStore.confirm).
COLLECTING = "collecting"
EVICTING = "evicting"
SET_ASIDE = (COLLECTING, EVICTING)
# A note per blob a server put back so, which the collection reads before it unlinks the
# deleted blobs' layer links: the link the server wrote may be one it found (a manifest's).
PUT_BACK = "entrepot/gc/putback"


# Grows by a byte with each repository link a server writes and each upload it begins,
# where the storage is a disk: a collection that read the repositories before it set
# blobs aside reads this count again after, to know whether any link came in between
# (registry.gcrecheck).
LINKS_WRITTEN = "entrepot/gc/links-written"


def put_back_note(digest: Digest) -> str:
    return f"{PUT_BACK}/{digest.algorithm}-{digest.encoded}"


def blob_dir(digest: Digest) -> str:
    return f"{BLOBS}/{digest.algorithm}/{digest.encoded[:2]}/{digest.encoded}"


def blob_dirs(digests: Iterable[Digest]) -> list[str]:
    """``blob_dir`` of each, without a call per digest: a collection makes 55,600 twice
    on the bench store, with the helpers waiting."""
    return [f"{BLOBS}/{algorithm}/{encoded[:2]}/{encoded}" for algorithm, encoded in digests]


def blob_data(digest: Digest) -> str:
    return f"{blob_dir(digest)}/data"


def repository(name: str) -> str:
    return f"{REPOSITORIES}/{name}"


def layer_link(name: str, digest: Digest) -> str:
    return f"{REPOSITORIES}/{name}/_layers/{digest.algorithm}/{digest.encoded}/link"


def layers_dir(name: str) -> str:
    return f"{REPOSITORIES}/{name}/_layers"


def manifest_revision_link(name: str, digest: Digest) -> str:
    return f"{REPOSITORIES}/{name}/_manifests/revisions/{digest.algorithm}/{digest.encoded}/link"


def manifest_revision_dir(name: str, digest: Digest) -> str:
    return f"{REPOSITORIES}/{name}/_manifests/revisions/{digest.algorithm}/{digest.encoded}"


def tags_dir(name: str) -> str:
    return f"{REPOSITORIES}/{name}/_manifests/tags"


def tag_dir(name: str, tag: str) -> str:
    return f"{tags_dir(name)}/{tag}"


def tag_current_link(name: str, tag: str) -> str:
    return f"{tag_dir(name, tag)}/current/link"


def tag_index_link(name: str, tag: str, digest: Digest) -> str:
    return f"{tag_dir(name, tag)}/index/{digest.algorithm}/{digest.encoded}/link"


def upload_dir(name: str, upload_id: str) -> str:
    return f"{REPOSITORIES}/{name}/_uploads/{upload_id}"


def upload_data(name: str, upload_id: str) -> str:
    return f"{upload_dir(name, upload_id)}/data"


def upload_hashstate(name: str, upload_id: str) -> str:
    # Entrepot's own (registry:2 keeps Go hash states under hashstates/<alg>/<offset>).
    return f"{upload_dir(name, upload_id)}/entrepot-hashstate"


def upload_started_at(name: str, upload_id: str) -> str:
    return f"{upload_dir(name, upload_id)}/startedat"


# An upload's later segments (see segments): ``data.<its offset, 20 digits>``.
SEGMENT_OFFSET_DIGITS = 20
_SEGMENT_PREFIX = "data."


def is_segment(name: str) -> bool:
    """Whether an upload folder's entry ``name`` is a segment after ``data``."""
    offset = name[len(_SEGMENT_PREFIX) :]
    return (
        name.startswith(_SEGMENT_PREFIX)
        and len(offset) == SEGMENT_OFFSET_DIGITS
        and offset.isdigit()
    )


def holds_bytes(name: str) -> bool:
    """Whether an upload folder's entry ``name`` is one of its segments (``data`` or a
    later one)."""
    return name == "data" or is_segment(name)


def uploads_dir(name: str) -> str:
    return f"{REPOSITORIES}/{name}/_uploads"


def referrer_link(name: str, subject: Digest, referrer: Digest) -> str:
    return f"{referrers_dir(name, subject)}/{referrer.algorithm}/{referrer.encoded}/link"


def referrers_dir(name: str, subject: Digest) -> str:
    return f"{REPOSITORIES}/{name}/_referrers/{subject.algorithm}/{subject.encoded}"
