"""As installed, Entrepot runs one worker process per CPU core, and they serve as one. A
worker killed with SIGKILL (the OOM killer, an operator's mistake) is replaced while the
others go on serving: one dead worker never takes the registry down."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import httpx
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


def test_a_killed_worker_is_replaced_and_the_registry_keeps_answering(
    entrepot_factory: ServerFactory,
) -> None:
    server = entrepot_factory(env={"ENTREPOT_WORKERS": "2"})
    assert server.pid is not None
    deadline = time.monotonic() + 30
    while len(workers := _children(server.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(workers) == 2, f"expected 2 workers, found {workers}\n{server.log()}"
    # A worker process exists before it serves (it imports the app itself): kill one only
    # once both serve, or the one left may still be starting.
    while server.log().count("Started worker-") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.log().count("Started worker-") == 2, server.log()

    os.kill(workers[0], signal.SIGKILL)

    answers: list[int] = []
    replaced: list[int] = []
    with httpx.Client(base_url=server.url, timeout=5) as client:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                answers.append(client.get("/v2/").status_code)
            except httpx.TransportError as exc:
                raise AssertionError(f"{exc!r} after {answers}\n{server.log()}") from exc
            replaced = [p for p in _children(server.pid) if p not in workers]
            if replaced and len(answers) >= 20:
                break
            time.sleep(0.1)
    assert server.running, server.log()
    assert replaced, f"the killed worker was not replaced\n{server.log()}"
    assert set(answers) == {200}, answers
