"""The bench's commands start as the README gives them: each module run on its own
(``python -m bench.scale`` once failed on a circular import of bench.__main__)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("module", "option"),
    [("bench", "--only"), ("bench.scale", "--sizes"), ("bench.gcfloor", None)],
)
def test_a_bench_command_starts(module: str, option: str | None) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(CHECKOUT), str(CHECKOUT / "src")])}
    argv = [sys.executable, "-m", module, "--help"]
    if option is None:  # takes a store only: a missing one is its error, not an import's
        argv = [sys.executable, "-c", f"import {module}"]
    done = subprocess.run(argv, cwd=CHECKOUT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    if option is not None:
        assert option in done.stdout
