"""``pip install`` of the package, as the README shows it, gives a working ``entrepot``
command with the web UI's templates and stylesheet inside (nothing loaded from elsewhere)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .servers import REPO_ROOT

pytestmark = pytest.mark.e2e


def test_the_installed_package_runs_and_carries_its_ui(tmp_path: Path) -> None:
    target = tmp_path / "site"
    # The package itself, without its dependencies (this interpreter has them).
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
         str(REPO_ROOT)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(target)}
    version = subprocess.run(
        [sys.executable, "-m", "entrepot", "--version"],
        env=env, cwd=tmp_path, check=True, capture_output=True, text=True,
    )  # fmt: skip
    assert version.stdout.startswith("entrepot ")
    probe = (
        "import entrepot, importlib.resources as r; "
        "ui = r.files('entrepot.http.ui'); "
        "print(entrepot.__file__); "
        "print(sorted(p.name for p in (ui / 'templates').iterdir())); "
        "print(sorted(p.name for p in (ui / 'static').iterdir()))"
    )
    shown = subprocess.run(
        [sys.executable, "-c", probe],
        env=env, cwd=tmp_path, check=True, capture_output=True, text=True,
    ).stdout.splitlines()  # fmt: skip
    assert shown[0].startswith(str(target))  # the installed copy, not the work tree
    assert "base.html" in shown[1] and "cache.html" in shown[1]
    assert "ui.css" in shown[2]
    assert (target / "bin" / "entrepot").exists()
