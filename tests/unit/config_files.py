"""Loading a config.yml written for a test: a minimal file and the keys a test adds."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from entrepot.config import Config, ConfigError, load_config

STORAGE = "storage:\n  filesystem:\n    rootdirectory: /srv/registry\n"


def load(tmp_path: Path, extra: str, env: dict[str, str] | None = None) -> Config:
    """Version 0.1, STORAGE and ``extra`` (whose own ``storage`` section replaces STORAGE),
    loaded with the variables in ``env`` alone."""
    extra = textwrap.dedent(extra)
    storage = "" if extra.startswith("storage:") else STORAGE
    path = tmp_path / "config.yml"
    path.write_text("version: 0.1\n" + storage + extra)
    return load_config(path, env or {})


def error_of(tmp_path: Path, extra: str, env: dict[str, str] | None = None) -> str:
    """The config error that ``load`` raises."""
    with pytest.raises(ConfigError) as info:
        load(tmp_path, extra, env)
    return str(info.value)
