"""Thin wrappers around the real registry clients the e2e tests drive: skopeo, podman, ctr.

Every call runs the client as a subprocess with a timeout and raises ClientError, carrying the
command line, exit code, stdout and stderr, when it fails. Registries are spoken to over plain
HTTP on loopback (``--tls-verify=false`` / ``--plain-http``).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

DEFAULT_TIMEOUT = 120.0


class ClientError(AssertionError):
    """A client command failed; the message has everything needed to see why.

    An AssertionError so that pytest shows it as a test failure, not an error in the harness.
    """

    def __init__(
        self, cmd: Sequence[str], returncode: int | None, stdout: str, stderr: str, why: str = ""
    ) -> None:
        self.cmd = list(cmd)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        status = why or f"exit code {returncode}"
        super().__init__(
            f"command failed ({status}): {' '.join(self.cmd)}\n"
            f"--- stdout ---\n{_tail(stdout)}\n--- stderr ---\n{_tail(stderr)}"
        )


def _tail(text: str, limit: int = 8000) -> str:
    return text if len(text) <= limit else "...\n" + text[-limit:]


def _decode(data: bytes | str | None) -> str:
    if data is None:
        return ""
    if isinstance(data, str):
        return data
    return data.decode(errors="replace")


def run_bytes(
    cmd: Sequence[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    env: Mapping[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """Run `cmd` with stdout kept as bytes (for manifests, whose exact bytes matter)."""
    full_env = None if env is None else {**os.environ, **env}
    try:
        proc = subprocess.run(
            list(cmd),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            env=full_env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ClientError(
            cmd, None, _decode(exc.stdout), _decode(exc.stderr), f"timed out after {timeout}s"
        ) from exc
    except FileNotFoundError as exc:
        raise ClientError(cmd, None, "", str(exc), f"{cmd[0]} not found") from exc
    if check and proc.returncode != 0:
        raise ClientError(cmd, proc.returncode, _decode(proc.stdout), _decode(proc.stderr))
    return proc


def run(
    cmd: Sequence[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    env: Mapping[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run `cmd`, text in and out; raise ClientError on a non-zero exit when `check`."""
    proc = run_bytes(cmd, timeout=timeout, env=env, check=check)
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, _decode(proc.stdout), _decode(proc.stderr)
    )


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def docker_ref(host: str, repo: str, reference: str) -> str:
    """``HOST/REPO:TAG`` or ``HOST/REPO@DIGEST`` (no transport prefix)."""
    sep = "@" if ":" in reference else ":"
    return f"{host}/{repo}{sep}{reference}"


# --- skopeo -------------------------------------------------------------------------------------


@functools.cache
def _policy_file() -> str:
    """A trust policy that accepts anything, so skopeo never depends on /etc/containers."""
    fd, path = tempfile.mkstemp(prefix="entrepot-e2e-policy-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump({"default": [{"type": "insecureAcceptAnything"}]}, f)
    atexit.register(_unlink_quietly, path)
    return path


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def skopeo(*args: str, timeout: float = DEFAULT_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return run(["skopeo", "--policy", _policy_file(), *args], timeout=timeout)


def skopeo_copy(
    src: str,
    dest: str,
    *,
    all_images: bool = False,
    preserve_digests: bool = True,
    extra: Sequence[str] = (),
    timeout: float = DEFAULT_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """``skopeo copy SRC DEST`` with TLS verification off on both sides.

    `src` and `dest` are full transport references (``oci:DIR:TAG``, ``docker://HOST/REPO:TAG``).
    `preserve_digests` makes skopeo fail rather than rewrite a manifest.
    """
    args = ["copy", "--src-tls-verify=false", "--dest-tls-verify=false"]
    if all_images:
        args.append("--all")
    if preserve_digests:
        args.append("--preserve-digests")
    return skopeo(*args, *extra, src, dest, timeout=timeout)


def push(
    layout_ref: str,
    host: str,
    repo: str,
    tag: str,
    *,
    all_images: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Push ``oci:DIR:TAG`` to ``docker://HOST/REPO:TAG``; `all_images` for an index."""
    return skopeo_copy(
        layout_ref,
        f"docker://{docker_ref(host, repo, tag)}",
        all_images=all_images,
        timeout=timeout,
    )


def pull_to_layout(
    host: str,
    repo: str,
    reference: str,
    dest: Path,
    *,
    dest_tag: str = "latest",
    all_images: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Copy ``docker://HOST/REPO:REF`` back into the OCI layout ``oci:DEST:DEST_TAG``."""
    dest.mkdir(parents=True, exist_ok=True)
    return skopeo_copy(
        f"docker://{docker_ref(host, repo, reference)}",
        f"oci:{dest}:{dest_tag}",
        all_images=all_images,
        timeout=timeout,
    )


def inspect_raw(host: str, repo: str, reference: str, *, timeout: float = DEFAULT_TIMEOUT) -> bytes:
    """The exact manifest (or index) bytes the registry serves for REPO:REF."""
    cmd = [
        "skopeo",
        "--policy",
        _policy_file(),
        "inspect",
        "--raw",
        "--tls-verify=false",
        f"docker://{docker_ref(host, repo, reference)}",
    ]
    return run_bytes(cmd, timeout=timeout).stdout


def inspect_digest(host: str, repo: str, reference: str) -> str:
    """sha256 digest of the manifest bytes served for REPO:REF."""
    return sha256_digest(inspect_raw(host, repo, reference))


def inspect(host: str, repo: str, reference: str) -> dict[str, Any]:
    """``skopeo inspect`` (the parsed summary, for the host's platform)."""
    proc = skopeo("inspect", "--tls-verify=false", f"docker://{docker_ref(host, repo, reference)}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def list_tags(host: str, repo: str) -> list[str]:
    proc = skopeo("list-tags", "--tls-verify=false", f"docker://{host}/{repo}")
    tags: list[str] = json.loads(proc.stdout)["Tags"]
    return tags


def delete(host: str, repo: str, reference: str) -> subprocess.CompletedProcess[str]:
    return skopeo("delete", "--tls-verify=false", f"docker://{docker_ref(host, repo, reference)}")


# --- podman -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Podman:
    """podman as root with its own storage (vfs driver: no mounts, works anywhere).

    `runroot` must be a short path: podman refuses one longer than 50 characters.
    """

    root: Path
    runroot: Path

    def __post_init__(self) -> None:
        if len(str(self.runroot)) > 50:
            raise ValueError(f"podman runroot longer than 50 characters: {self.runroot}")
        for path in (self.root, self.runroot, self.runroot / "tmp"):
            path.mkdir(parents=True, exist_ok=True)

    def argv(self, *args: str) -> list[str]:
        return [
            "podman",
            "--root",
            str(self.root),
            "--runroot",
            str(self.runroot),
            "--tmpdir",
            str(self.runroot / "tmp"),
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "none",
            *args,
        ]

    def __call__(
        self, *args: str, timeout: float = DEFAULT_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        return run(self.argv(*args), timeout=timeout)

    def pull(
        self, host: str, repo: str, reference: str, *, platform: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        args = ["pull", "--tls-verify=false"]
        if platform is not None:
            args += ["--platform", platform]
        return self(*args, docker_ref(host, repo, reference))

    def image_inspect(self, image: str) -> dict[str, Any]:
        data: list[dict[str, Any]] = json.loads(self("image", "inspect", image).stdout)
        return data[0]

    def read_file(self, image: str, path: str) -> bytes:
        """A file from the image's unpacked root filesystem (vfs: a plain directory)."""
        mountpoint = self("image", "mount", image).stdout.strip()
        try:
            return (Path(mountpoint) / path.lstrip("/")).read_bytes()
        finally:
            self("image", "unmount", image)


# --- containerd / ctr ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CtrImage:
    ref: str
    media_type: str
    digest: str
    platforms: tuple[str, ...]


@dataclass(frozen=True)
class Ctr:
    """``ctr`` against one containerd socket, in one namespace, with the native snapshotter."""

    address: str
    namespace: str = "entrepot-test"
    snapshotter: str = "native"

    def argv(self, *args: str) -> list[str]:
        return ["ctr", "--address", self.address, "--namespace", self.namespace, *args]

    def __call__(
        self, *args: str, timeout: float = DEFAULT_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        return run(self.argv(*args), timeout=timeout)

    def pull(
        self,
        host: str,
        repo: str,
        reference: str,
        *,
        platform: str | None = None,
        all_platforms: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """``ctr images pull --plain-http`` (fetches, verifies and unpacks the layers)."""
        args = ["images", "pull", "--plain-http", "--snapshotter", self.snapshotter]
        if platform is not None:
            args += ["--platform", platform]
        if all_platforms:
            args.append("--all-platforms")
        return self(*args, docker_ref(host, repo, reference))

    def images(self) -> dict[str, CtrImage]:
        """ref -> image, from ``ctr images ls``."""
        out: dict[str, CtrImage] = {}
        lines = self("images", "ls").stdout.splitlines()
        for line in lines[1:]:
            fields = line.split()
            if len(fields) < 5:
                continue
            ref, media_type, digest = fields[0], fields[1], fields[2]
            # SIZE is two fields ("81.8 KiB"), then PLATFORMS, then LABELS.
            platforms = tuple(fields[-2].split(",")) if len(fields) >= 6 else ()
            out[ref] = CtrImage(ref, media_type, digest, platforms)
        return out

    def content(self, digest: str) -> bytes:
        cmd = self.argv("content", "get", digest)
        return run_bytes(cmd).stdout


def missing_commands(*commands: str) -> list[str]:
    """Which of `commands` are missing from PATH."""
    return [c for c in commands if shutil.which(c) is None]


def require(*commands: str) -> None:
    """Skip the test (locally) or fail it (under CI) when a command it needs is not installed."""
    missing = missing_commands(*commands)
    if not missing:
        return
    message = f"not installed: {', '.join(missing)} (scripts/install-test-deps.sh installs them)"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


# --- registry mirrors as clients configure them ---------------------------------------------------


def write_containerd_hosts(
    hosts_dir: Path, registry: str, mirror_url: str, *, server: str | None = None
) -> Path:
    """``HOSTS_DIR/REGISTRY/hosts.toml`` sending pulls of REGISTRY's images to `mirror_url`
    (containerd docs/hosts.md); `ctr images pull --hosts-dir HOSTS_DIR` reads it.

    `server` is where containerd falls back when the mirror fails (default: the registry
    itself, on the internet): tests pass a dead loopback address so that nothing leaves
    the machine. containerd adds ``?ns=REGISTRY`` to every request to the mirror.
    """
    directory = hosts_dir / registry
    directory.mkdir(parents=True, exist_ok=True)
    lines = [f'server = "{server}"', ""] if server else []
    lines += [f'[host."{mirror_url}"]', '  capabilities = ["pull", "resolve"]', ""]
    path = directory / "hosts.toml"
    path.write_text("\n".join(lines))
    return path


def ctr_pull_with_hosts(
    ctr: Ctr, hosts_dir: Path, image: str, *, platform: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``ctr images pull --hosts-dir HOSTS_DIR IMAGE`` (IMAGE fully qualified, no --plain-http:
    the scheme comes from hosts.toml)."""
    args = ["images", "pull", "--hosts-dir", str(hosts_dir), "--snapshotter", ctr.snapshotter]
    if platform is not None:
        args += ["--platform", platform]
    return ctr(*args, image)


def write_registries_conf(path: Path, registries: Sequence[Mapping[str, Any]]) -> Path:
    """A containers-registries.conf(5) v2 file (for podman, skopeo, buildah via
    $CONTAINERS_REGISTRIES_CONF): one ``[[registry]]`` per mapping, whose ``mirror`` entry
    is a list of ``[[registry.mirror]]`` mappings. Values are str or bool."""

    def value(item: object) -> str:
        if isinstance(item, bool):
            return "true" if item else "false"
        if isinstance(item, str):
            return json.dumps(item)
        raise TypeError(f"registries.conf value {item!r} is not str or bool")

    lines = ["unqualified-search-registries = []", ""]
    for registry in registries:
        lines.append("[[registry]]")
        lines += [f"{k} = {value(v)}" for k, v in registry.items() if k != "mirror"]
        for mirror in registry.get("mirror", ()):
            lines.append("[[registry.mirror]]")
            lines += [f"{k} = {value(v)}" for k, v in mirror.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def podman_with_env(
    podman: Podman, env: Mapping[str, str], *args: str, timeout: float = DEFAULT_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run podman (with the fixture's storage) with extra environment variables, such as
    CONTAINERS_REGISTRIES_CONF."""
    return run(podman.argv(*args), env=env, timeout=timeout)


# --- raw registry API (httpx) ---------------------------------------------------------------------


def upload_blob(base_url: str, repo: str, data: bytes, *, timeout: float = 60.0) -> str:
    """Upload `data` as a blob of REPO (POST, then one PUT with the digest); its digest."""
    import httpx  # here: the rest of this module needs only the standard library

    digest = sha256_digest(data)
    with httpx.Client(base_url=base_url, timeout=timeout) as http:
        started = http.post(f"/v2/{repo}/blobs/uploads/")
        if started.status_code != 202:
            raise AssertionError(f"POST upload of {repo}: {started.status_code} {started.text}")
        location = started.headers["location"]
        separator = "&" if "?" in location else "?"
        done = http.put(
            f"{location}{separator}digest={digest}",
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        if done.status_code != 201:
            raise AssertionError(f"PUT upload of {repo}: {done.status_code} {done.text}")
    return digest


# --- access control (test_security_*) ---------------------------------------------------------


def write_htpasswd(path: Path, users: Mapping[str, str], *, rounds: int = 5) -> Path:
    """An htpasswd file as ``htpasswd -B`` writes it: ``user:$2y$05$...`` per line."""
    import bcrypt  # here: the rest of this module needs only the standard library

    lines = []
    for user, password in users.items():
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=rounds)).decode()
        lines.append(f"{user}:$2y${hashed[4:]}\n")  # Apache spells bcrypt's "$2b$" "$2y$"
    path.write_text("".join(lines))
    return path


def storage_snapshot(root: Path) -> dict[str, bytes]:
    """Every file (relative path -> content) and directory (-> b"<dir>") under a storage
    root: equal snapshots taken around a refused request prove it changed nothing."""
    if not root.exists():
        return {}
    return {
        str(path.relative_to(root)): b"<dir>" if path.is_dir() else path.read_bytes()
        for path in sorted(root.rglob("*"))
    }


def bearer_challenge(header: str) -> dict[str, str]:
    """``Bearer realm="...",service="...",scope="..."`` -> {"scheme": "Bearer", "realm": ...}."""
    import re

    scheme, _, params = header.partition(" ")
    values = dict(re.findall(r'(\w+)="([^"]*)"', params))
    values["scheme"] = scheme
    return values


def fetch_token(
    realm: str,
    service: str,
    scopes: Sequence[str] = (),
    *,
    creds: tuple[str, str] | None = None,
    verify: Any = True,
) -> str:
    """A Docker token-spec token from `realm` (GET, as docker/skopeo/containerd ask for one),
    anonymous or with Basic `creds`; AssertionError unless the answer is 200."""
    import httpx

    params: list[tuple[str, str | int | float | bool | None]] = [
        ("service", service),
        *(("scope", s) for s in scopes),
    ]
    response = httpx.get(realm, params=params, auth=creds, verify=verify, timeout=30)
    if response.status_code != 200:
        raise AssertionError(f"token from {realm}: {response.status_code} {response.text}")
    token: str = response.json()["token"]
    return token
