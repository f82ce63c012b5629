"""Prefetch's inputs: image names with their registry host, platforms, and the config's
``proxycache.prefetch`` list."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from entrepot.config import ConfigError, load_config
from entrepot.oci.digest import Digest
from entrepot.proxy.prefetch import (
    ImageRef,
    Platform,
    PrefetchError,
    parse_image,
    parse_platform,
)
from entrepot.proxy.referrers import fallback_tag

DIGEST = "sha256:" + "ab" * 32
MINIMAL = "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /srv/registry\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("docker.io/library/nginx:1.27", ImageRef("docker.io", "library/nginx", "1.27")),
        ("docker.io/library/nginx", ImageRef("docker.io", "library/nginx", "latest")),
        ("ghcr.io/org/app@" + DIGEST, ImageRef("ghcr.io", "org/app", DIGEST)),
        ("127.0.0.1:5000/team/app:v1", ImageRef("127.0.0.1:5000", "team/app", "v1")),
        ("localhost/app:1", ImageRef("localhost", "app", "1")),
        ("Quay.IO/org/app:1", ImageRef("quay.io", "org/app", "1")),
    ],
)
def test_image_names_carry_their_registry_host(text: str, expected: ImageRef) -> None:
    assert parse_image(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("library/nginx:1.27", "must start with its registry host"),
        ("nginx", "must start with its registry host"),
        ("docker.io/Library/nginx:1", "is not a valid reference"),
        ("docker.io/library/nginx:bad tag", "is not a valid reference"),
        ("docker.io/library/nginx@sha256:short", "is not a valid reference"),
    ],
)
def test_bad_image_names_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(PrefetchError, match=message):
        parse_image(text)


def test_platforms_match_an_index_entry() -> None:
    amd64 = parse_platform("linux/amd64")
    arm = parse_platform("linux/arm64/v8")
    assert amd64 == Platform("linux", "amd64")
    assert amd64.matches({"os": "linux", "architecture": "amd64"})
    assert not amd64.matches({"os": "linux", "architecture": "arm64", "variant": "v8"})
    assert arm.matches({"os": "linux", "architecture": "arm64", "variant": "v8"})
    assert not arm.matches({"os": "linux", "architecture": "arm64"})
    assert not amd64.matches(None)
    for bad in ("linux", "linux/", "a/b/c/d"):
        with pytest.raises(ValueError, match="OS/ARCH"):
            parse_platform(bad)


def test_the_referrers_tag_schema_tag() -> None:
    assert fallback_tag(Digest.parse(DIGEST)) == "sha256-" + "ab" * 32


def test_the_prefetch_list_in_the_config(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text(
        MINIMAL
        + textwrap.dedent(
            """\
            proxycache:
              prefetch:
                interval: 30m
                images: [docker.io/library/nginx:1.27, ghcr.io/org/app:1]
                platforms: [linux/amd64, linux/arm64/v8]
            """
        )
    )
    prefetch = load_config(path, {}).proxycache.prefetch
    assert prefetch is not None
    assert prefetch.interval_s == 1800
    assert prefetch.images == ("docker.io/library/nginx:1.27", "ghcr.io/org/app:1")
    assert prefetch.platforms == ("linux/amd64", "linux/arm64/v8")


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("images: [nginx:1.27]", "must start with its registry host"),
        ("platforms: [amd64]", "is not OS/ARCH"),
        ("interval: 0s", "must be more than 0"),
        ("imagez: [docker.io/a:1]", "did you mean 'proxycache.prefetch.images'"),
    ],
)
def test_a_bad_prefetch_list_names_the_key(tmp_path: Path, block: str, message: str) -> None:
    path = tmp_path / "config.yml"
    path.write_text(MINIMAL + f"proxycache:\n  prefetch:\n    {block}\n")
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path, {})
    assert "proxycache.prefetch" in str(info.value)


def test_the_cli_does_not_load_prometheus_client_before_serve_sets_its_directory() -> None:
    # prometheus_client reads PROMETHEUS_MULTIPROC_DIR when imported; `serve` sets it
    # after the CLI is loaded, so the cache commands import the cache only when run.
    code = "import sys, entrepot.cli; print('prometheus_client' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
