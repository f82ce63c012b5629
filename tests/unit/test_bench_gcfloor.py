"""The bench's floor for garbage collection is a collection too: it must delete exactly
what a collection deletes, or its time floors nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import bench.gc
import pytest
from bench.fixtures import ROOT
from bench.gc import INODES_PER_REPO, store_dir, write_gc_fixture
from bench.gcfloor import collect

from entrepot.registry.gc import GcResult


def _blobs(store: Path) -> set[str]:
    return {p.parent.name for p in Path(store, ROOT, "blobs").rglob("data")}


def _referenced(store: Path) -> set[str]:
    """What the tagged manifests name, read back from the store."""
    found = set()
    for link in Path(store, ROOT, "repositories").rglob("current/link"):
        hexa = link.read_text().partition(":")[2]
        doc = json.loads(Path(store, ROOT, "blobs/sha256", hexa[:2], hexa, "data").read_bytes())
        found |= {hexa, doc["config"]["digest"][7:], *(d["digest"][7:] for d in doc["layers"])}
    return found


def test_the_floor_deletes_every_unreferenced_blob_and_nothing_else(tmp_path: Path) -> None:
    kept = write_gc_fixture(tmp_path, repos=30, blobs=400)
    before = _blobs(tmp_path)
    referenced = _referenced(tmp_path)

    times = collect(str(tmp_path))

    after = _blobs(tmp_path)
    assert after == referenced and len(after) == kept
    assert times["deleted"] == len(before) - kept > 0
    # Nothing left aside, no empty blob folder left behind.
    assert not list(Path(tmp_path, ROOT, "blobs").rglob("collecting"))
    prefixes = Path(tmp_path, ROOT, "blobs/sha256").iterdir()
    assert all(any(folder.iterdir()) for p in prefixes for folder in p.iterdir())
    assert times["safe"] >= times["bare"] > 0


def test_the_inode_estimate_covers_the_store(tmp_path: Path) -> None:
    write_gc_fixture(tmp_path, repos=100, blobs=1000)  # the bench's ten blobs a repository
    inodes = sum(1 for _ in tmp_path.rglob("*"))
    assert INODES_PER_REPO * 100 >= inodes > 0.9 * INODES_PER_REPO * 100


def test_a_tmpfs_short_of_inodes_is_not_chosen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work, data = tmp_path / "work", tmp_path / "data"
    monkeypatch.setattr(bench.gc, "medium", lambda path: "tmpfs")
    monkeypatch.setattr(bench.gc, "_available_memory", lambda: 64 << 30)
    free = {"inodes": 2 * INODES_PER_REPO * 10_000}
    monkeypatch.setattr(os, "statvfs", lambda path: SimpleNamespace(f_favail=free["inodes"]))
    assert store_dir(work, data, 10_000) == work
    free["inodes"] -= 1
    assert store_dir(work, data, 10_000) == data


@pytest.mark.parametrize("rested", [0.0, 1.8])
def test_the_bench_reads_how_long_a_collection_rested(rested: float) -> None:
    # A collection that rested as the machine seemed busy is not the collector's speed:
    # the bench records the rest its summary line reports.
    took = GcResult(seconds=9.04, rested=rested).took
    output = f"blob eligible for deletion: sha256:00\ndeleted 1 blobs (2 bytes) ... ({took})\n"
    assert bench.gc.rested_seconds(output) == rested
    assert bench.gc.rested_seconds("registry:2's output\n") == 0.0


def test_every_collector_collects_a_copy_and_the_original_goes_after_the_last(
    tmp_path: Path,
) -> None:
    # The same conditions for each: no collector times the store as written, the others
    # a copy (the original then measured slower for Entrepot, not for registry:2).
    store = bench.gc.GcStore(tmp_path, repos=2, blobs=40, collectors=2)
    first = store.take("registry2")
    assert first != store.root and _blobs(first) == _blobs(store.root)
    second = store.take("entrepot")
    assert second not in (first, store.root) and _blobs(second) == _blobs(first)
    assert not store.root.exists()  # no collector left to copy it for


def test_collectors_collect_in_turn_each_a_copy_and_one_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first run of each, then the second of each: a drift of the machine's speed
    # weighs on every collector alike. Each run has a copy of its own, removed after it,
    # but for the kept one's last (the serving rows pull from it).
    monkeypatch.setattr(bench.gc, "GC_RUNS", 2)
    store = bench.gc.GcStore(tmp_path, repos=2, blobs=40, collectors=6)
    blobs = _blobs(store.root)
    made: list[tuple[str, Path]] = []

    def collect_one(kind: str, root: Path) -> str:
        assert _blobs(root) == blobs  # a whole copy, not one another run collected
        for folder in Path(root, ROOT, "blobs/sha256").iterdir():
            for blob in folder.iterdir():
                (blob / "data").unlink()
        made.append((kind, root))
        return f"{kind} {len(made)}"

    runs, kept = bench.gc.in_turn(
        store, ["registry2", "entrepot", "floor"], collect_one, "entrepot"
    )

    assert runs == {
        "registry2": ["registry2 1", "registry2 4"],
        "entrepot": ["entrepot 2", "entrepot 5"],
        "floor": ["floor 3", "floor 6"],
    }
    assert kept == made[4][1] and kept.exists() and _blobs(kept) == set()
    assert {root for _, root in made if root.exists()} == {kept}
    assert not store.root.exists()


def test_a_row_is_its_median_run() -> None:
    runs = [(3.4, "a"), (2.9, "b"), (3.1, "c")]
    assert bench.gc.median_run(runs, lambda run: run[0]) == (3.1, "c")
    assert bench.gc.median_run(runs[:2], lambda run: run[0]) == (3.4, "a")
