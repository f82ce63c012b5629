"""``entrepot garbage-collect`` on a machine other processes keep busy: it rests between
short bursts (registry/gcpace.py), says so in its summary line, and deletes exactly what it
would delete at full speed. Real processes and /proc: two CPU spinners at the collector's
own priority (nice 19: at nice 0 they would leave it almost nothing) on the CPUs it runs
on."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from bench.fixtures import ROOT
from bench.gc import write_gc_fixture

from .servers import REPO_ROOT

pytestmark = pytest.mark.e2e

BLOBS = 10_000
SPIN = "import os\nos.nice(19)\nwhile True:\n    pass\n"


@contextmanager
def spinning(cpus: set[int]) -> Iterator[None]:
    spinners = [subprocess.Popen([*taskset(cpus), sys.executable, "-c", SPIN]) for _ in cpus]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def taskset(cpus: set[int]) -> list[str]:
    return ["taskset", "-c", ",".join(map(str, sorted(cpus)))]


def collect(config: Path, cpus: set[int], *flags: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT / "src"))
    command = [sys.executable, "-m", "entrepot", "garbage-collect", str(config), "--grace", "0"]
    command += flags
    done = subprocess.run(
        [*taskset(cpus), *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def store(tmp_path: Path) -> tuple[Path, Path, int]:
    """A store of 1,000 repositories and 10,000 blobs, its config, and the blobs a collection
    keeps: its collection takes long enough on the busy machine to look at the load more
    than once (gcpace.SAMPLE)."""
    root = tmp_path / "store"
    kept = write_gc_fixture(root, repos=1000, blobs=BLOBS)
    config = tmp_path / "config.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root}\n")
    return root, config, kept


def test_a_collection_rests_while_other_processes_keep_the_cpus_busy(tmp_path: Path) -> None:
    root, config, kept = store(tmp_path)
    cpus = os.sched_getaffinity(0)

    with spinning(cpus):
        line = collect(config, cpus)

    assert "of it resting as the machine was busy" in line, line
    assert sum(1 for _ in Path(root, ROOT, "blobs").rglob("data")) == kept
    assert f"deleted {BLOBS - kept} blobs" in line


def test_at_full_speed_it_does_not_rest_on_a_busy_machine(tmp_path: Path) -> None:
    root, config, kept = store(tmp_path)
    cpus = os.sched_getaffinity(0)

    with spinning(cpus):
        line = collect(config, cpus, "--full-speed")

    assert "resting" not in line, line
    assert sum(1 for _ in Path(root, ROOT, "blobs").rglob("data")) == kept
