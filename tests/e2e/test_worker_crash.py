"""A worker killed with SIGKILL (the OOM killer, an operator's mistake) is replaced, and the
other workers go on serving meanwhile: one dead worker never takes the registry down."""

from __future__ import annotations

import os
import signal
import time

import httpx
from bench.servers import process_tree

from .servers import ServerFactory


def _workers(pid: int) -> list[int]:
    return [p for p in process_tree(pid) if p != pid]


def test_a_killed_worker_is_replaced_and_the_registry_keeps_answering(
    entrepot_factory: ServerFactory,
) -> None:
    server = entrepot_factory(env={"ENTREPOT_WORKERS": "2"})
    assert server.pid is not None
    deadline = time.monotonic() + 30
    while len(workers := _workers(server.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(workers) == 2, f"expected 2 workers, found {workers}\n{server.log()}"

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
            replaced = [p for p in _workers(server.pid) if p not in workers]
            if replaced and len(answers) >= 20:
                break
            time.sleep(0.1)
    assert server.running, server.log()
    assert replaced, f"the killed worker was not replaced\n{server.log()}"
    assert set(answers) == {200}, answers
