"""The README's quick start works as written: its shell block, run line by line against a
served Entrepot (only the address and podman's storage differ), builds an image on the
spot, pushes it, inspects it and lists it in the catalog."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from .clients import Podman
from .servers import REPO_ROOT, ServerFactory

pytestmark = pytest.mark.e2e


def quickstart_lines() -> list[str]:
    readme = (REPO_ROOT / "README.md").read_text()
    match = re.search(r"<!-- quickstart -->\n```sh\n(.*?)```\n<!-- /quickstart -->", readme, re.S)
    assert match, "the README lost its quick start block"
    return [line for line in match.group(1).splitlines() if line.strip()]


def test_the_readme_quick_start_runs_as_written(
    entrepot_factory: ServerFactory, podman: Podman, tmp_path: Path
) -> None:
    entrepot = entrepot_factory()
    podman_argv = " ".join(shlex.quote(a) for a in podman.argv())
    outputs = []
    for line in quickstart_lines():
        command = line.replace("localhost:5000", entrepot.host)
        command = re.sub(r"^podman ", podman_argv + " ", command)
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", command],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
        outputs.append(done.stdout)

    inspected = json.loads(outputs[-2])
    assert inspected["Name"] == f"{entrepot.host}/team/hello"
    assert json.loads(outputs[-1]) == {"repositories": ["team/hello"]}
