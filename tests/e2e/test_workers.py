"""As installed, Entrepot runs one worker process per CPU core, and they serve as one."""

from __future__ import annotations

import os
import subprocess

import pytest

from .servers import ServerFactory, probe

pytestmark = pytest.mark.e2e


def _children(pid: int) -> list[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False
    ).stdout
    return [int(p) for p in out.split()]


def test_default_is_one_worker_per_core(entrepot_factory: ServerFactory) -> None:
    server = entrepot_factory(env={"ENTREPOT_WORKERS": ""})  # empty: as if unset
    assert server.pid is not None
    cores = len(os.sched_getaffinity(0))
    assert len(_children(server.pid)) == cores
    for _ in range(10):
        assert probe(f"{server.url}/v2/") == 200
