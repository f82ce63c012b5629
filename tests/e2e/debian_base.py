"""A Debian base image for the container image's tests, made here with ``debootstrap``:
no registry is reachable from the test machine, only Debian's package mirror.

The root filesystem is the host's Debian release (``/etc/os-release``), ``--variant=minbase``
plus what the Dockerfile needs (python3, python3-venv, ca-certificates), from the mirror the
host's apt is configured with. It also trusts the certificate authorities the host added to
its own store (a site's TLS-inspecting proxy, as on the test machine), and pip is told to use
that store, so the image build reaches PyPI as the host does.

debootstrap takes minutes, so the tarball is cached between runs in
``$ENTREPOT_TEST_CACHE`` (default ``/var/cache/entrepot-test``), keyed by release,
architecture and everything that went into it; a lock keeps concurrent runs from building it
twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .clients import run

PACKAGES = ("python3", "python3-venv", "ca-certificates")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
CACHE_DIR = Path(os.environ.get("ENTREPOT_TEST_CACHE", "/var/cache/entrepot-test"))
LOCAL_CAS = Path("/usr/local/share/ca-certificates")
DEBOOTSTRAP_TIMEOUT = 1200.0
# Bump when the recipe below changes, so an old cached tarball is not reused.
RECIPE_VERSION = "1"


def host_release() -> str:
    """The host's Debian release code name (``bookworm``)."""
    fields = dict(
        line.split("=", 1)
        for line in Path("/etc/os-release").read_text().splitlines()
        if "=" in line
    )
    codename = fields.get("VERSION_CODENAME", "").strip('"')
    if not codename:
        raise RuntimeError("/etc/os-release names no VERSION_CODENAME: not a Debian release?")
    return codename


def host_mirror(release: str) -> str:
    """The Debian mirror the host's apt uses for `release` (deb822 ``.sources`` files or
    one-line ``sources.list`` entries), else deb.debian.org."""
    sources = Path("/etc/apt/sources.list.d")
    for path in sorted(sources.glob("*.sources")) if sources.is_dir() else []:
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields: dict[str, str] = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in stanza.splitlines())
                if value and not name.startswith("#")
            }
            if (
                "deb" in fields.get("types", "").split()
                and release in fields.get("suites", "").split()
            ):
                uris = [u for u in fields.get("uris", "").split() if "security" not in u]
                if uris:
                    return uris[0]
    lists = [Path("/etc/apt/sources.list"), *sorted(sources.glob("*.list"))]
    for path in lists:
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                words = re.sub(r"\[[^]]*\]", "", line).split()
                if len(words) >= 3 and words[0] == "deb" and words[2] == release:
                    return words[1]
    return DEFAULT_MIRROR


def _architecture() -> str:
    return run(["dpkg", "--print-architecture"]).stdout.strip()


def _local_cas() -> list[Path]:
    return sorted(LOCAL_CAS.rglob("*.crt")) if LOCAL_CAS.is_dir() else []


def tarball_path(release: str, mirror: str) -> Path:
    """Where the cached tarball of `release` lives; the name changes with its ingredients."""
    key = hashlib.sha256()
    for part in (RECIPE_VERSION, mirror, *PACKAGES):
        key.update(part.encode() + b"\0")
    for ca in _local_cas():
        key.update(ca.read_bytes())
    return CACHE_DIR / f"debian-{release}-{_architecture()}-minbase-{key.hexdigest()[:12]}.tar"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _customize(root: Path) -> None:
    """Trust the host's own certificate authorities, and have pip use the system store."""
    cas = _local_cas()
    if cas:
        target = root / LOCAL_CAS.relative_to("/")
        target.mkdir(parents=True, exist_ok=True)
        for ca in cas:
            shutil.copy2(ca, target / ca.name)
        run(["chroot", str(root), "update-ca-certificates"], timeout=300)
        (root / "etc/pip.conf").write_text("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")
    # What an image need not carry: downloaded packages and package lists.
    for leftovers in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for entry in (root / leftovers).glob("*"):
            if entry.is_file() and entry.name not in ("lock",):
                entry.unlink()


def base_tarball() -> Path:
    """The cached root filesystem tarball of the host's release, made first if needed."""
    release = host_release()
    mirror = host_mirror(release)
    tarball = tarball_path(release, mirror)
    with _locked(tarball.with_suffix(".lock")):
        if tarball.exists():
            return tarball
        with tempfile.TemporaryDirectory(prefix="debootstrap-", dir=CACHE_DIR) as tmp:
            root = Path(tmp) / "root"
            run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={','.join(PACKAGES)}",
                    release,
                    str(root),
                    mirror,
                ],
                timeout=DEBOOTSTRAP_TIMEOUT,
            )
            _customize(root)
            partial = Path(tmp) / "root.tar"
            subprocess.run(
                ["tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), "."],
                check=True,
                capture_output=True,
                timeout=600,
            )
            partial.rename(tarball)  # complete or absent, never half-written
    return tarball
