"""A disk's collection reads the repositories with gcwalk's walk, which knows the layout;
object storage with the folded scan. On the same store, odd corners included, both must
find the same repositories, links, tags, uploads and manifests."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from entrepot.oci.digest import Digest
from entrepot.registry import gcwalk, layout
from entrepot.registry.gcscan import UNREAD, find_blobs, scan_store
from entrepot.registry.gcwalk import repository_records
from entrepot.registry.manifestrefs import ManifestRefs, manifest_ref_pairs
from entrepot.registry.storecalls import Limited
from entrepot.storage.filesystem import FilesystemDriver
from entrepot.storage.localwalk import DiskView
from tests.unit.test_gc import blob, layer, manifest


class FoldedScanOnly(FilesystemDriver):
    """The same disk, read as object storage is: with the folded scan."""

    walks_local = False


async def odd_store(driver: FilesystemDriver) -> None:
    """Repositories in every shape a store may hold, and things that are not ones."""
    base = await layer(driver, "team/app", b"base layer")
    child = await manifest(driver, "team/app", [base], tag="v1")
    await manifest(driver, "team/app", [], children=[child], tag="multi")
    await manifest(driver, "team/app", [base], subject=child)  # untagged referrer
    await manifest(driver, "team/app/nested", [await layer(driver, "team/app/nested", b"n")])
    await manifest(driver, "team", [await layer(driver, "team", b"t")], tag="latest")
    await manifest(driver, "solo", [], tag="gone")
    gone = await manifest(driver, "solo", [])
    sha512 = Digest("sha512", "ab" * 64)
    await driver.put_content(layout.layer_link("solo", sha512), str(sha512).encode())
    # A tag whose link names nothing.
    await driver.put_content(layout.tag_current_link("solo", "junk"), b"not a digest")
    odd_folders(driver, gone)
    await blob(driver, b"unreferenced")


def odd_folders(driver: FilesystemDriver, gone: Digest) -> None:
    """What only a disk's own calls make: folders left empty, links removed, stray files."""
    root = driver.local_path(layout.REPOSITORIES)
    solo = Path(root, "solo")
    # A manifest deleted as registry:2 deletes one: its revision folder stays, link-less.
    os.unlink(driver.local_path(layout.manifest_revision_link("solo", gone)))
    # A tag being deleted (no current link).
    os.unlink(driver.local_path(layout.tag_current_link("solo", "gone")))
    # Layer folders that name no digest, a folder of an unregistered algorithm, a temp file.
    (solo / "_layers" / "sha256" / "not-hex").mkdir(parents=True)
    (solo / "_layers" / "md5" / ("0" * 32)).mkdir(parents=True)
    (solo / "_layers" / "sha256" / ".tmp-writing").write_bytes(b"")
    # Uploads: one with bytes, an empty one, one with only its start time.
    uploads = solo / "_uploads"
    (uploads / "u-bytes" / "hashstates" / "sha256").mkdir(parents=True)
    (uploads / "u-bytes" / "data").write_bytes(b"abc")
    (uploads / "u-bytes" / "hashstates" / "sha256" / "3").write_bytes(b"state")
    (uploads / "u-empty").mkdir()
    (uploads / "u-started").mkdir()
    (uploads / "u-started" / "startedat").write_bytes(b"2026-01-01T00:00:00Z")
    old = time.time() - 7200
    os.utime(uploads / "u-bytes" / "data", (old, old))
    busy = Path(driver.local_path(layout.repository("busy")), "_uploads", "u")
    busy.mkdir(parents=True)
    (busy / "data").write_bytes(b"being written")
    # A repository of empty folders, one of referrers only, a file beside repositories, a
    # top-level folder that no repository name may start with.
    Path(root, "empty", "app", "_layers").mkdir(parents=True)
    Path(root, "refs", "_referrers", "sha256").mkdir(parents=True)
    Path(root, "team", "README").write_bytes(b"not a repository")
    Path(root, "_junk", "x", "_manifests", "revisions").mkdir(parents=True)


@pytest.mark.parametrize("tag_links", [True, False])
@pytest.mark.parametrize("apart", [False, True])
async def test_the_layout_walk_finds_what_the_folded_scan_finds(
    tmp_path: Path, tag_links: bool, apart: bool
) -> None:
    root = tmp_path / "root"
    await odd_store(FilesystemDriver(root))
    fresh_after = time.time() - 3600
    walked_refs: dict[Digest, ManifestRefs] = {}
    scanned_refs: dict[Digest, ManifestRefs] = {}
    walked = await scan_store(
        Limited(FilesystemDriver(root), 8, apart=apart),
        fresh_after,
        tag_links=tag_links,
        refs=walked_refs,
    )
    scanned = await scan_store(
        Limited(FoldedScanOnly(root), 8, apart=apart),
        fresh_after,
        tag_links=tag_links,
        refs=scanned_refs,
    )
    assert sorted(walked) == [
        "busy",
        "empty/app",
        "refs",
        "solo",
        "team",
        "team/app",
        "team/app/nested",
    ]
    assert {n: vars(s) for n, s in walked.items()} == {n: vars(s) for n, s in scanned.items()}
    assert walked_refs == scanned_refs
    # What the store holds, found: not only alike, but right.
    app, solo = walked["team/app"], walked["solo"]
    assert len(app.revisions) == 3 and len(walked_refs) == 5
    assert any(refs.children for refs in walked_refs.values())
    assert any(refs.subject is not None for refs in walked_refs.values())
    assert Digest("sha512", "ab" * 64) in solo.layers and len(solo.layers) == 2
    assert len(solo.unlinked_revisions) == 1
    assert solo.uploads == ["u-bytes", "u-empty", "u-started"]
    assert not solo.upload_active  # its bytes are old (a hash state is not an upload's)
    assert walked["busy"].upload_active
    if tag_links:
        assert sorted(app.tags) == ["multi", "v1"]
        assert solo.tag_names == ["gone", "junk"] and solo.tags == {}
    else:
        assert app.tags == {} and app.tag_names == []


@pytest.mark.parametrize("share_below", [gcwalk.SHARE_BELOW, 1])
async def test_the_walks_share_one_namespace_of_repositories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, share_below: int
) -> None:
    # One organisation's registry: every repository below one top-level folder.
    monkeypatch.setattr(gcwalk, "SHARE_BELOW", share_below)
    driver = FilesystemDriver(tmp_path / "root")
    await odd_store(driver)
    for n in range(16):
        await manifest(driver, f"org/app{n}", [await layer(driver, f"org/app{n}", b"l")])
    base = driver.local_path(layout.REPOSITORIES).removesuffix(f"/{layout.REPOSITORIES}")

    def walked(shard: tuple[int, int] | None) -> list[str]:
        view = DiskView(base, shard)
        return [r[0] for batch in repository_records(view, layout.REPOSITORIES, ()) for r in batch]

    whole = walked(None)
    parts = [walked((index, 2)) for index in range(2)]
    assert len(whole) == 7 + 16
    assert sorted(parts[0] + parts[1]) == sorted(whole)  # each repository in one walk
    in_org = [[name for name in part if name.startswith("org/")] for part in parts]
    if share_below > 1:
        assert all(in_org)  # both walks share it
    else:  # shared by top-level folders: one walk has the whole namespace
        assert sorted(len(names) for names in in_org) == [0, 16]


async def test_without_refs_no_manifest_is_read(tmp_path: Path) -> None:
    # The re-check's reading of the whole store wants links only.
    root = tmp_path / "root"
    await odd_store(FilesystemDriver(root))
    scans = await scan_store(Limited(FilesystemDriver(root), 8), 0.0, tag_links=False)
    assert len(scans["team/app"].revisions) == 3


async def test_a_disk_finds_every_blob_folder_that_names_a_digest(tmp_path: Path) -> None:
    driver = FilesystemDriver(tmp_path / "root")
    # Several in most two-hex folders: they come in digest order all the same.
    digests = {await blob(driver, f"blob {n}".encode()) for n in range(600)}
    sha512 = Digest("sha512", "cd" * 64)
    await driver.put_content(layout.blob_data(sha512), b"x")
    top = Path(driver.local_path(layout.BLOBS))
    (top / "sha256" / "zz" / "not-a-digest").mkdir(parents=True)
    (top / "md5" / "00" / ("0" * 32)).mkdir(parents=True)
    for apart in (False, True):
        found = await find_blobs(Limited(driver, 8, apart=apart))
        assert set(found) == digests | {sha512}
        assert list(found) == sorted(found)  # the collector's sort only checks it
        assert all(info is UNREAD for info in found.values())
        assert found == await find_blobs(Limited(FoldedScanOnly(tmp_path / "root"), 8)) | {
            d: UNREAD for d in found
        }


def test_a_manifest_in_another_encoding_is_read_as_json() -> None:
    digest = Digest.of(b"x")
    doc = json.dumps({"layers": [{"digest": str(digest)}]})
    for raw in (doc.encode(), b"\xef\xbb\xbf" + doc.encode(), doc.encode("utf-16")):
        assert manifest_ref_pairs(raw)[0] == [tuple(digest)]
    assert manifest_ref_pairs(b"[1, 2]") == ([], [], None)
    assert manifest_ref_pairs(b"\xff not json") == ([], [], None)


class ListingView(DiskView):
    """A DiskView that notes every key it lists."""

    def __init__(self, base: str) -> None:
        super().__init__(base)
        self.listed: list[str] = []

    def names(self, key: str) -> list[str]:
        self.listed.append(key)
        return super().names(key)


@pytest.mark.parametrize("only", [None, "sha256", ""])
async def test_the_walk_lists_the_link_folders_of_the_algorithms_it_is_given(
    tmp_path: Path, only: str | None
) -> None:
    driver = FilesystemDriver(tmp_path / "root")
    await odd_store(driver)
    base = driver.local_path(layout.REPOSITORIES).removesuffix(f"/{layout.REPOSITORIES}")
    view = ListingView(base)
    args = () if only is None else (f"{gcwalk.ONLY}{only}",)
    records = {r[0]: r for b in repository_records(view, layout.REPOSITORIES, args) for r in b}
    algorithms = ["sha256", "sha512"] if only is None else [a for a in [only] if a]
    link_folders = [k for k in view.listed if k.rsplit("/", 1)[-1] in ("sha256", "sha512")]
    assert {k.rsplit("/", 1)[-1] for k in link_folders} == set(algorithms)
    solo_layers = {algorithm for algorithm, _ in records["solo"][3]}
    assert solo_layers == set(algorithms)  # its layers: a sha256 one and a sha512 one


async def test_where_every_manifest_is_kept_the_walk_sends_only_loose_layers(
    tmp_path: Path,
) -> None:
    # The mark keeps every manifest then, so what they reference is marked: of a
    # repository's layer folders the sweep looks only at the others (and at every one of
    # a repository with uploads, which keeps them all while it is written to).
    driver = FilesystemDriver(tmp_path / "root")
    used = await layer(driver, "team/app", b"a layer of its image")
    loose = await layer(driver, "team/app", b"a layer no manifest of it references")
    image = await manifest(driver, "team/app", [used], tag="v1")
    config = json.loads(await driver.get_content(layout.blob_data(image)))["config"]["digest"]
    await manifest(driver, "team/pushing", [await layer(driver, "team/pushing", b"p")])
    await driver.put_content(layout.upload_data("team/pushing", "an-upload"), b"...")
    base = driver.local_path(layout.REPOSITORIES).removesuffix(f"/{layout.REPOSITORIES}")

    def layers(args: tuple[str, ...]) -> dict[str, set[str]]:
        batches = repository_records(DiskView(base), layout.REPOSITORIES, args)
        return {r[0]: {f"{a}:{e}" for a, e in r[3]} for b in batches for r in b}

    every = layers(gcwalk.repository_args(False, True, None))
    assert every["team/app"] == {str(used), str(loose), config}
    sent = layers(gcwalk.repository_args(False, True, None, loose=True))
    assert sent["team/app"] == {str(loose)}
    assert sent["team/pushing"] == every["team/pushing"] and len(every["team/pushing"]) == 2
    # Where tags decide what is kept (--delete-untagged, retention rules): every one.
    assert layers(gcwalk.repository_args(True, True, None, loose=False)) == every
