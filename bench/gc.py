"""Garbage collection of a large store: each server's ``garbage-collect`` on its own copy;
and Entrepot serving pulls from that store while its ``garbage-collect`` runs in a loop.

The store is written straight in registry:2's layout: ``repos`` repositories of one tagged
image each (a config and five layers drawn from a shared pool) and as many blobs again that
nothing references, so both commands mark every repository and delete the same blobs.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import yaml

from bench.fixtures import ROOT
from bench.gcloop import CollectorLoop
from bench.servers import REGISTRY2_BINARY, REPO_ROOT

LAYERS_PER_IMAGE = 5
# Collections of the store by each collector (and by the floor), each of a copy; a row is
# the median run's.
GC_RUNS = 3
_Run = TypeVar("_Run")


def write_gc_fixture(root: Path, repos: int, blobs: int) -> int:
    """Write the store; returns how many blobs a correct collection leaves."""
    v2 = f"{root}/{ROOT}"

    def put(path: str, data: bytes) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as out:
            out.write(data)

    def blob(data: bytes) -> str:
        hexa = hashlib.sha256(data).hexdigest()
        put(f"{v2}/blobs/sha256/{hexa[:2]}/{hexa}/data", data)
        return hexa

    def link(repo: str, kind: str, hexa: str) -> None:
        put(f"{v2}/repositories/{repo}/{kind}/sha256/{hexa}/link", f"sha256:{hexa}".encode())

    rng = random.Random(0)
    pool = [blob(f"layer {n}".encode()) for n in range(max(blobs // 2 - 2 * repos, 10))]
    used: set[str] = set()
    for n in range(repos):
        repo = f"team{n % 100}/app{n}"
        config = blob(f"config {n}".encode())
        layers = rng.sample(pool, LAYERS_PER_IMAGE)
        used.update(layers)
        doc = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": _descriptor("application/vnd.oci.image.config.v1+json", config),
            "layers": [_descriptor("application/vnd.oci.image.layer.v1.tar", h) for h in layers],
        }
        manifest = blob(json.dumps(doc).encode())
        for hexa in (config, *layers):
            link(repo, "_layers", hexa)
        link(repo, "_manifests/revisions", manifest)
        link(repo, "_manifests/tags/latest/index", manifest)
        put(
            f"{v2}/repositories/{repo}/_manifests/tags/latest/current/link",
            f"sha256:{manifest}".encode(),
        )
    for n in range(blobs - len(pool) - 2 * repos):
        blob(f"orphan {n}".encode())
    return 2 * repos + len(used)


class GcStore:
    """The bench store, written once in ``where``; each collector collects copies of it
    (GC_RUNS each; ``cp -a``, one at a time, each removed after its collection): copies
    of the same store, as the issue asks, made the same way for each. The original goes
    once the last collector's copy is made. (Collecting the original itself, to save the last
    copy, timed Entrepot on a store just written and registry:2 on a copy; in interleaved
    runs here Entrepot took a median 3.73 s on such an original and 3.31 s on a copy (five
    pairs), registry:2 11.7 s and 12.3 s (five and four).)"""

    def __init__(self, where: Path, repos: int, blobs: int, collectors: int) -> None:
        self.root = where / "gc"
        self.kept = write_gc_fixture(self.root, repos, blobs)
        self.medium = medium(where)
        self._left = collectors

    def take(self, kind: str) -> Path:
        """A copy of the store for ``kind`` to collect (the caller removes it)."""
        self._left -= 1
        copy = self.root.with_name(f"gc-{kind}")
        _remove(copy)
        subprocess.run(["cp", "-a", "--", str(self.root), str(copy)], check=True)
        if self._left <= 0:  # no collector left to copy it for
            _remove(self.root)
        return copy


def in_turn(
    store: GcStore,
    kinds: Sequence[str],
    collect_one: Callable[[str, Path], _Run],
    keep: str | None = None,
) -> tuple[dict[str, list[_Run]], Path | None]:
    """Each of ``kinds``' GC_RUNS collections (``collect_one(kind, copy)``), each of a copy
    of ``store``, taken in turn: the first of each kind, then the second of each, and so
    on. This machine's speed drifts by a fifth over minutes (Entrepot's CPU time for one
    collection moved from 2.29 to 2.81 s between two runs a quarter of an hour apart, the
    code the same but for a few ms); a collector's runs made in a block of their own
    took that drift into the ratio of two collectors' times. ``keep``'s last copy is left,
    collected, for the caller (who removes it); every other is removed after its run."""
    runs: dict[str, list[_Run]] = {kind: [] for kind in kinds}
    kept = None
    for n in range(GC_RUNS):
        for kind in kinds:
            root = store.take(kind)
            try:
                runs[kind].append(collect_one(kind, root))
            except BaseException:
                _remove(root)
                raise
            if kind == keep and n == GC_RUNS - 1:
                kept = root
            else:
                _remove(root)
    return runs, kept


def _remove(path: Path) -> None:
    """``rm -rf``: much faster than shutil.rmtree on the 10,000-repository store."""
    subprocess.run(["rm", "-rf", "--", str(path)], check=True)


def median_run(runs: list[_Run], seconds: Callable[[_Run], float]) -> _Run:
    """The run whose ``seconds`` is the median (of an even number, the upper one)."""
    return sorted(runs, key=seconds)[len(runs) // 2]


def store_dir(workdir: Path, datadir: Path, repos: int) -> Path:
    """Where the store of ``repos`` repositories and its copy go: ``workdir`` when it is a
    tmpfs with the memory and the inodes for both (collections then time the collectors,
    not the disk), else ``datadir``."""
    if medium(workdir) != "tmpfs" or _available_memory() <= STORE_MEMORY:
        return datadir
    if os.statvfs(workdir).f_favail < 2 * INODES_PER_REPO * repos:
        return datadir  # a tmpfs runs out of inodes before memory (nr_inodes)
    return workdir


# The store and one copy on tmpfs, with the kernel's inodes and folders: ~0.75 GB each
# measured (du), twice that with the inodes; room left for the servers.
STORE_MEMORY = 4 << 30
# Files and folders of the store per repository (its links' and ten blobs'), ~50.6
# measured: 506,000 for the bench store.
INODES_PER_REPO = 52


def medium(path: Path) -> str:
    """The file system type of ``path`` (``tmpfs``, ``ext2/ext3``, ``xfs``...)."""
    done = subprocess.run(
        ["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def _available_memory() -> int:
    with open("/proc/meminfo") as info:
        for line in info:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def pull_paths() -> tuple[str, str]:
    """A tagged manifest of the fixture and a blob it references (its config), as URL
    paths: what a client pulls while a collection runs."""
    config = hashlib.sha256(b"config 0").hexdigest()
    return "/v2/team0/app0/manifests/latest", f"/v2/team0/app0/blobs/sha256:{config}"


@contextmanager
def collecting(root: Path, workdir: Path, cpus: str) -> Iterator[CollectorLoop]:
    """``entrepot garbage-collect`` on the store at ``root``, run again and again on the
    server's CPUs while resumed (``CollectorLoop``); when the block ends, the run under
    way is stopped (SIGTERM: it releases the lease)."""
    config = _config(workdir / "gc-loop.yml", root)
    argv = ["taskset", "-c", cpus, *_entrepot_gc(config)]
    loop = CollectorLoop(argv, _entrepot_env(), workdir / "gc-loop.err")
    try:
        yield loop
    finally:
        loop.close()


def _config(path: Path, root: Path) -> Path:
    storage = {"filesystem": {"rootdirectory": str(root)}}
    path.write_text(yaml.safe_dump({"version": 0.1, "storage": storage}))
    return path


def _entrepot_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT / "src"), env.get("PYTHONPATH")) if p
    )
    return env


def _entrepot_gc(config: Path) -> list[str]:
    return [sys.executable, "-m", "entrepot", "garbage-collect", str(config), "--grace", "0"]


def collect(
    kind: str, root: Path, kept: int, workdir: Path, cpus: str
) -> tuple[float, float, float]:
    """Wall and CPU seconds (user + system) ``kind``'s garbage-collect takes on the store at
    ``root``, and the seconds of it Entrepot's rested as the machine seemed busy (its
    summary line says; none expected on a quiet machine, and a row that rested is not the
    collector's speed); it must leave exactly ``kept`` blobs (a collection that deletes
    too much is not fast)."""
    config = _config(workdir / f"gc-{kind}.yml", root)
    env = dict(os.environ)
    if kind == "entrepot":
        env, cmd = _entrepot_env(), _entrepot_gc(config)
    else:
        cmd = [REGISTRY2_BINARY, "garbage-collect", str(config)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    with open(workdir / f"gc-{kind}.out", "w+b") as out:
        done = subprocess.run(
            ["taskset", "-c", cpus, *cmd],
            env=env,
            stdout=out,
            stderr=subprocess.PIPE,
            check=False,
        )
        seconds = time.monotonic() - started
        out.seek(max(0, out.seek(0, os.SEEK_END) - 4096))
        tail = out.read().decode(errors="replace")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    if done.returncode != 0:
        raise RuntimeError(f"{kind} garbage-collect failed: {done.stderr.decode()[-2000:]}")
    left = sum(1 for _ in Path(root, ROOT, "blobs").rglob("data"))
    if left != kept:
        raise RuntimeError(f"{kind} garbage-collect left {left} blobs, not {kept}")
    return seconds, cpu, rested_seconds(tail)


_RESTED = re.compile(r", ([0-9.]+)s of it resting as the machine was busy\)$", re.MULTILINE)


def rested_seconds(output: str) -> float:
    """The rest an ``entrepot garbage-collect``'s summary line (the last in ``output``)
    reports; 0 for none (or registry:2's output)."""
    found = _RESTED.findall(output)
    return float(found[-1]) if found else 0.0


def collect_floor(root: Path, kept: int, cpus: str) -> dict[str, float]:
    """bench.gcfloor's collection of the store at ``root`` (a copy: it deletes) on ``cpus``:
    the seconds of its phases; like a collector's, its result is checked."""
    env = _entrepot_env()
    env["PYTHONPATH"] = os.pathsep.join((str(REPO_ROOT), env["PYTHONPATH"]))
    cmd = [sys.executable, "-m", "bench.gcfloor", str(root)]
    done = subprocess.run(
        ["taskset", "-c", cpus, *cmd], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"the floor's collection failed: {done.stderr[-2000:]}")
    left = sum(1 for _ in Path(root, ROOT, "blobs").rglob("data"))
    if left != kept:
        raise RuntimeError(f"the floor's collection left {left} blobs, not {kept}")
    times: dict[str, float] = json.loads(done.stdout)
    return times


def _descriptor(media_type: str, hexa: str) -> dict[str, object]:
    return {"mediaType": media_type, "digest": f"sha256:{hexa}", "size": 1}
