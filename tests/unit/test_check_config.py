"""``entrepot check-config``: the configuration in effect with secrets masked, every
warning, exit 1 on an error; and the files it names (TLS, htpasswd, storage root) usable
by the user Entrepot runs as. Permission cases run as a real unprivileged process."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
import yaml

from entrepot.cli import main
from entrepot.config import load_config
from entrepot.config.check import summary
from tests.unit.config_files import tls_pair

SECRET = "s3cr3t-Hunter2"
HASH = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
MASK = "********"


def write(directory: Path, text: str) -> Path:
    path = directory / "config.yml"
    path.write_text(text)
    return path


def test_prints_the_effective_config_with_secrets_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "htpasswd").write_text(f"alice:{HASH}\n")
    path = write(
        tmp_path,
        f"""\
version: 0.1
storage:
  filesystem:
    rootdirectory: {tmp_path}/data
http:
  addr: :5000
  secret: {SECRET}
  adr: :5001
auth:
  builtin:
    htpasswd: {tmp_path}/htpasswd
    users:
      ci: "{HASH}"
    access:
      - {{who: [anonymous], repositories: ["*"], actions: [pull]}}
proxies:
  - host: ghcr.io
    remoteurl: https://ghcr.io
    username: me
    password: {SECRET}
notifications:
  endpoints:
    - {{name: a, url: "http://127.0.0.1:5003/events",
       headers: {{Authorization: [Bearer {SECRET}]}}}}
""",
    )
    monkeypatch.setenv("REGISTRY_HTTP_ADDR", "127.0.0.1:6000")
    assert main(["check-config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert SECRET not in out + err
    assert HASH not in out + err
    effective = yaml.safe_load(out)
    assert effective["http"]["addr"] == "127.0.0.1:6000"  # after REGISTRY_* overrides
    assert effective["http"]["secret"] == MASK
    assert effective["auth"]["builtin"]["users"] == MASK
    assert effective["auth"]["builtin"]["htpasswd"] == f"{tmp_path}/htpasswd"
    assert effective["proxies"][0]["password"] == MASK
    assert effective["proxies"][0]["remoteurls"] == ["https://ghcr.io"]
    assert effective["storage"]["filesystem"]["rootdirectory"] == f"{tmp_path}/data"
    assert effective["storage"]["maintenance"]["uploadpurging"]["age"] == "168h"
    assert effective["proxycache"]["sweepinterval"] == "10m"
    assert effective["notifications"]["endpoints"][0]["headers"] == MASK  # tokens, often
    assert err.splitlines() == [
        "warning: config key 'http.adr' is not a registry:2 configuration key and is ignored "
        "(did you mean 'http.addr'?)",
    ]
    assert out.startswith(f"# config {path}; storage filesystem at {tmp_path}/data;")


def test_an_unknown_entrepot_key_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        "version: 0.1\nstorage: filesystem\nproxies:\n"
        "  - {host: ghcr.io, remoteurl: 'https://ghcr.io', mirorr: true}\n",
    )
    for command in ("check-config", "serve"):
        assert main([command, str(path)]) == 1
        out, err = capsys.readouterr()
        assert out == ""
        assert err == (
            "entrepot: config error: config key 'proxies[0].mirorr' is not an Entrepot "
            "configuration key (did you mean 'proxies[0].mirror'?); fix or remove it (see the "
            "README's configuration table)\n"
        )


def test_a_storage_root_below_a_file_cannot_be_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "afile").write_text("")
    path = write(
        tmp_path,
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path}/afile/data\n",
    )
    assert main(["check-config", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        f"entrepot: storage error: cannot write to storage.filesystem.rootdirectory "
        f"{tmp_path}/afile/data ("
    )
    assert len(err.splitlines()) == 1


def test_a_storage_root_that_can_be_created_is_fine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path, f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path}/a/b\n"
    )
    assert main(["check-config", str(path)]) == 0
    assert not (tmp_path / "a").exists()  # a check makes nothing


def test_checking_a_store_writes_nothing_in_it(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    path = write(
        tmp_path, f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path}/store\n"
    )
    assert main(["check-config", str(path)]) == 0
    assert list((tmp_path / "store").iterdir()) == []  # no entrepot/health probe left


def test_a_storage_root_with_a_tilde_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: ~/registry\n")
    for command in ("check-config", "serve"):
        assert main([command, str(path)]) == 1
        assert capsys.readouterr().err == (
            "entrepot: storage error: storage.filesystem.rootdirectory ~/registry: '~' is not "
            "expanded here; write the full path (/home/NAME/...)\n"
        )
    assert not (tmp_path / "~").exists()


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory another user can enter (pytest's tmp_path is private to root)."""
    directory = Path(tempfile.mkdtemp(prefix="entrepot-check-"))
    directory.chmod(0o755)
    yield directory
    for path in directory.rglob("*"):
        path.chmod(0o755)
    shutil.rmtree(directory)


def check_config_as_unprivileged_user(
    config: Path, command_name: str = "check-config"
) -> subprocess.CompletedProcess[str]:
    """Run ``entrepot check-config`` (or ``command_name``) as a real process; as nobody when
    we are root (root may read and write everything)."""
    command = [sys.executable, "-m", "entrepot", command_name, str(config)]
    if os.geteuid() == 0:
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    # This tree's code, whichever one the environment's package is installed from.
    source = Path(__file__).resolve().parents[2] / "src"
    env = {"PATH": os.environ["PATH"], "HOME": str(config.parent), "PYTHONPATH": str(source)}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)


def shared_config(shared_dir: Path, more: str) -> Path:
    """A config another user can read, with a storage root it can write, and ``more``."""
    (shared_dir / "data").mkdir(mode=0o777)
    (shared_dir / "data").chmod(0o777)
    config = write(
        shared_dir,
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {shared_dir}/data\n{more}",
    )
    config.chmod(0o644)
    return config


def refused_until_chmod(config: Path, said: str, path: Path, mode: int) -> None:
    """check-config, as another user, exits 1 saying ``said``, and 0 once ``path`` has
    ``mode``."""
    result = check_config_as_unprivileged_user(config)
    assert result.returncode == 1, result.stderr
    assert result.stderr == said
    path.chmod(mode)
    assert check_config_as_unprivileged_user(config).returncode == 0


def test_an_unreadable_htpasswd_file_exits_1(shared_dir: Path) -> None:
    htpasswd = shared_dir / "htpasswd"
    htpasswd.write_text(f"alice:{HASH}\n")
    htpasswd.chmod(0o000)
    config = shared_config(shared_dir, f"auth:\n  htpasswd:\n    realm: r\n    path: {htpasswd}\n")
    said = (
        f"entrepot: config error: config key 'auth.htpasswd.path': cannot read {htpasswd}: "
        "Permission denied\n"
    )
    refused_until_chmod(config, said, htpasswd, 0o644)


def test_an_unwritable_storage_root_exits_1(shared_dir: Path) -> None:
    root = shared_dir / "data"
    root.mkdir()
    root.chmod(0o555)
    config = write(
        shared_dir, f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root}\n"
    )
    config.chmod(0o644)
    result = check_config_as_unprivileged_user(config)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(
        f"entrepot: storage error: cannot write to storage.filesystem.rootdirectory {root} ("
    )
    assert "Permission denied" in result.stderr and len(result.stderr.splitlines()) == 1
    missing = write(
        shared_dir, f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root}/sub\n"
    )
    result = check_config_as_unprivileged_user(missing)
    assert result.returncode == 1
    assert f"cannot write to storage.filesystem.rootdirectory {root}/sub (" in result.stderr
    root.chmod(0o777)
    assert check_config_as_unprivileged_user(config).returncode == 0


def test_an_unwritable_socket_directory_exits_1(shared_dir: Path) -> None:
    run = shared_dir / "run"
    run.mkdir()
    run.chmod(0o555)
    config = shared_config(shared_dir, f"http:\n  net: unix\n  addr: {run}/registry.sock\n")
    said = (
        f"entrepot: cannot listen on http.addr {run}/registry.sock: its directory {run} is "
        "not writable by this user (uid 65534); make it writable or set another http.addr\n"
    )
    refused_until_chmod(config, said, run, 0o777)


def test_summary_names_what_is_in_effect_and_no_secret(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""\
version: 0.1
storage:
  filesystem:
    rootdirectory: /srv/registry
http:
  addr: 127.0.0.1:5001
  secret: {SECRET}
proxy:
  remoteurl: https://registry-1.docker.io
  username: me
  password: {SECRET}
proxies:
  - {{host: ghcr.io, remoteurl: "https://ghcr.io"}}
""",
    )
    line = summary(load_config(path, {}), str(path))
    assert line == (
        f"config {path}; storage filesystem at /srv/registry; listening on "
        "http://127.0.0.1:5001/; auth none; upstreams docker.io (mirror), ghcr.io"
    )


def test_serve_logs_one_summary_line_at_start(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = write(
        tmp_path,
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path}/data\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: {SECRET}\n",
    )
    command = [sys.executable, "-m", "entrepot", "serve", str(path)]
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True) as server:
        try:
            assert server.stderr is not None
            line = server.stderr.readline()
        finally:
            server.terminate()
            server.wait(timeout=30)
    assert line.endswith(
        f"INFO entrepot.cli starting: config {path}; storage filesystem at {tmp_path}/data; "
        f"listening on http://127.0.0.1:{port}/; auth none; upstreams none\n"
    )
    assert SECRET not in line


def _config_naming(directory: Path, section: str, file: Path) -> Path:
    certificate, key = tls_pair(directory)
    return write(
        directory,
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {directory}/data\n"
        + section.format(file=file, certificate=certificate, key=key),
    )


HTPASSWD = "auth:\n  htpasswd:\n    realm: r\n    path: {file}\n"
BUILTIN = "auth:\n  builtin:\n    htpasswd: {file}\n"
CLIENTCAS = (
    "http:\n  addr: 127.0.0.1:0\n  tls:\n    certificate: {certificate}\n    key: {key}\n"
    "    clientcas: [{file}]\n"
)
NO_CA = (
    "{file} holds no PEM certificate; it must hold the certificates of the CAs that sign "
    "client certificates"
)
# What the file holds, the config naming it, the key and what is wrong with the file.
FILE_REFUSALS: dict[str, tuple[bytes, str, str, str]] = {
    "md5-htpasswd": (  # what htpasswd writes without -B
        b"alice:$apr1$ZEm1pxqV$Dx8fNdTgVPeVy8ikBkDGP1\n",
        HTPASSWD,
        "auth.htpasswd.path",
        "{file}:1: user 'alice' has no bcrypt hash (use htpasswd -B)",
    ),
    "malformed-htpasswd": (
        f"alice:{HASH}\n\nbob\n".encode(),
        HTPASSWD,
        "auth.htpasswd.path",
        "{file}:3: not a 'user:hash' line",
    ),
    "binary-htpasswd": (
        b"\xff\xfe\x00",
        HTPASSWD,
        "auth.htpasswd.path",
        "{file}: not a text file (byte 0 is not UTF-8); htpasswd -B writes 'user:hash' lines",
    ),
    "builtin-htpasswd": (
        b"ci:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n",
        BUILTIN,
        "auth.builtin.htpasswd",
        "{file}:1: user 'ci' has no bcrypt hash (use htpasswd -B)",
    ),
    "empty-clientcas": (b"", CLIENTCAS, "http.tls.clientcas[0]", NO_CA),
    "garbage-clientcas": (b"not a certificate\n", CLIENTCAS, "http.tls.clientcas[0]", NO_CA),
}


@pytest.mark.parametrize("case", FILE_REFUSALS)
def test_files_the_workers_would_fail_on_are_refused_before_serving(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    content, section, key, problem = FILE_REFUSALS[case]
    file = tmp_path / "named-file"
    file.write_bytes(content)
    path = _config_naming(tmp_path, section, file)

    def no_granian(*args: object) -> None:
        raise AssertionError("serve started Granian")

    monkeypatch.setattr("entrepot.cli._granian", no_granian)
    expected = f"entrepot: config error: config key '{key}': {problem.format(file=file)}\n"
    for command in ("check-config", "serve"):
        assert main([command, str(path)]) == 1, command
        assert capsys.readouterr() == ("", expected), command


def test_a_bcrypt_htpasswd_and_a_certificate_in_clientcas_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"# users\nalice:{HASH}\nbob:{HASH.replace('$2b$', '$2y$', 1)}\n")
    ca = tmp_path / "ca.pem"
    ca.write_bytes(tls_pair(tmp_path)[0].read_bytes())
    for section, file in ((HTPASSWD, htpasswd), (BUILTIN, htpasswd), (CLIENTCAS, ca)):
        assert main(["check-config", str(_config_naming(tmp_path, section, file))]) == 0
        assert capsys.readouterr().err == "", section


TOKEN = (
    "auth:\n  token:\n    realm: https://auth.example.com/token\n    service: s\n"
    "    issuer: i\n    rootcertbundle: {file}\n"
)


@pytest.mark.parametrize(
    ("section", "key"),
    [(CLIENTCAS, "http.tls.clientcas[0]"), (TOKEN, "auth.token.rootcertbundle")],
    ids=["clientcas", "rootcertbundle"],
)
def test_a_damaged_certificate_among_good_ones_is_refused_before_serving(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    section: str,
    key: str,
) -> None:
    # The workers load every certificate in the file: one they cannot read stopped them.
    good = tls_pair(tmp_path)[0].read_bytes()
    file = tmp_path / "bundle.pem"
    file.write_bytes(good + b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    path = _config_naming(tmp_path, section, file)
    monkeypatch.setattr("entrepot.cli._granian", lambda *args: pytest.fail("Granian started"))
    for command in ("check-config", "serve"):
        assert main([command, str(path)]) == 1, command
        out, err = capsys.readouterr()
        assert out == ""
        assert err.startswith(
            f"entrepot: config error: config key '{key}': {file} holds a certificate that "
            "cannot be read ("
        ), err
        assert len(err.splitlines()) == 1
    file.write_bytes(good)
    assert main(["check-config", str(path)]) == 0


UNSHARED = (
    "warning: http.secret is not set: each replica makes its own, and {fails}; set the same "
    "http.secret on every replica"
)


@pytest.mark.parametrize("auth", [True, False])
def test_redis_without_http_secret_warns_that_replicas_need_the_same_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], auth: bool
) -> None:
    (tmp_path / "htpasswd").write_text(f"alice:{HASH}\n")
    access = f"auth:\n  htpasswd:\n    realm: r\n    path: {tmp_path}/htpasswd\n" if auth else ""
    base = f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path}/data\n{access}"
    path = write(tmp_path, base + "redis:\n  addr: 127.0.0.1:5539\n")
    assert main(["check-config", str(path)]) == 0
    fails = (
        "uploads that move between replicas (a load balancer) fail"
        if auth
        else "once auth is configured, uploads that move between replicas (a load balancer) "
        "will fail"
    )
    assert capsys.readouterr().err.splitlines() == [UNSHARED.format(fails=fails)]
    # With the secret set, or a single server on its disk without redis: nothing to say.
    for config in (base + "redis:\n  addr: 127.0.0.1:5539\nhttp:\n  secret: same\n", base):
        path = write(tmp_path, config)
        assert main(["check-config", str(path)]) == 0
        assert capsys.readouterr().err == ""


def test_s3_without_http_secret_warns_that_replicas_need_the_same_one(tmp_path: Path) -> None:
    s3 = "version: 0.1\nstorage:\n  s3:\n    bucket: b\n    region: us-east-1\n"
    warned = load_config(write(tmp_path, s3)).warnings
    assert [f"warning: {w}" for w in warned] == [
        UNSHARED.format(
            fails="once auth is configured, uploads that move between replicas (a load "
            "balancer) will fail"
        )
    ]
    assert load_config(write(tmp_path, s3 + "http:\n  secret: same\n")).warnings == ()
