"""A consistency check of a registry:2 layout on disk, run after the soak (and after its
faults): every blob's data matches its digest (nothing half-written is visible), every
layer link and manifest revision names a blob that exists, every manifest's config,
layers and children exist, and every tag points at a revision of its repository.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

V2 = Path("docker/registry/v2")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _link(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _blob_data(root: Path, digest: str) -> Path:
    algorithm, _, encoded = digest.partition(":")
    return root / V2 / "blobs" / algorithm / encoded[:2] / encoded / "data"


def _repositories(root: Path) -> list[Path]:
    """Directories holding ``_manifests`` or ``_layers`` (names may have several parts)."""
    found = []
    for dirpath, dirnames, _ in os.walk(root / V2 / "repositories"):
        if "_manifests" in dirnames or "_layers" in dirnames:
            found.append(Path(dirpath))
        dirnames[:] = [d for d in dirnames if not d.startswith("_")]
    return found


def _check_manifest(root: Path, repo: str, digest: str, problems: list[str]) -> None:
    data = _blob_data(root, digest)
    try:
        manifest = json.loads(data.read_bytes())
    except (OSError, ValueError) as exc:
        problems.append(f"{repo}@{digest}: manifest unreadable ({exc})")
        return
    if not isinstance(manifest, dict):
        return
    referenced = [manifest.get("config") or {}, *manifest.get("layers", [])]
    referenced += manifest.get("manifests", [])
    for descriptor in referenced:
        target = descriptor.get("digest") if isinstance(descriptor, dict) else None
        if target and not _blob_data(root, target).is_file():
            problems.append(f"{repo}@{digest}: references {target}, which is not stored")


def check_layout(root: Path, caches: tuple[str, ...] = ()) -> tuple[list[str], dict[str, int]]:
    """The problems found (empty: consistent) and what was checked. Repositories whose
    names start with one of ``caches`` are pull-through caches: their manifests' blobs
    are fetched when first pulled, so a blob not stored yet is no problem there."""
    problems: list[str] = []
    counts = {"blobs": 0, "repositories": 0, "revisions": 0, "tags": 0, "layer links": 0}
    for data in (root / V2 / "blobs").glob("*/*/*/data"):
        counts["blobs"] += 1
        algorithm, encoded = data.parent.parent.parent.name, data.parent.name
        if algorithm == "sha256" and _sha256_file(data) != encoded:
            problems.append(f"blob sha256:{encoded}: data does not match its digest")
    for repo_dir in _repositories(root):
        counts["repositories"] += 1
        repo = str(repo_dir.relative_to(root / V2 / "repositories"))
        for link in repo_dir.glob("_layers/*/*/link"):
            counts["layer links"] += 1
            digest = _link(link)
            if not digest or not _blob_data(root, digest).is_file():
                problems.append(f"{repo}: layer link {link.parent.name} names no stored blob")
        revisions = set()
        for link in repo_dir.glob("_manifests/revisions/*/*/link"):
            counts["revisions"] += 1
            digest = _link(link)
            if not digest or not _blob_data(root, digest).is_file():
                problems.append(f"{repo}: revision {link.parent.name} names no stored blob")
                continue
            revisions.add(digest)
            if not repo.startswith(caches):
                _check_manifest(root, repo, digest, problems)
        for tag_dir in repo_dir.glob("_manifests/tags/*"):
            counts["tags"] += 1
            digest = _link(tag_dir / "current" / "link")
            if digest is None:
                problems.append(f"{repo}:{tag_dir.name}: tag without current/link")
            elif digest not in revisions:
                problems.append(f"{repo}:{tag_dir.name}: points at {digest}, not a revision")
    return problems, counts
