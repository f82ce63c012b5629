"""``http: {net: unix, addr: PATH}``: a socket path Entrepot cannot listen on is one line
naming http.addr and what to do, from ``check-config`` and from ``serve`` before any worker
starts; a stale socket file (left by a crashed run) is removed, a live one never is."""

from __future__ import annotations

import logging
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from entrepot.cli import main
from entrepot.cli_listen import clear_stale_socket, listen_problem
from entrepot.config import load_config
from tests.unit.test_check_config import (
    check_config_as_unprivileged_user,
    shared_config,
    shared_dir,  # noqa: F401 (a fixture)
)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: unix socket addresses are limited to about 100 bytes."""
    directory = Path(tempfile.mkdtemp(prefix="entrepot-uds-", dir="/tmp"))
    yield directory
    shutil.rmtree(directory)


def write_config(directory: Path, sock: Path) -> Path:
    config = directory / "config.yml"
    config.write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {directory}/data\n"
        f"http:\n  net: unix\n  addr: {sock}\n"
    )
    return config


def stale_socket(path: Path) -> None:
    """A socket file as a crashed server leaves it: bound, closed, never unlinked."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))


def refused(config: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """What check-config and serve both say (one line, the same) as they exit 1."""
    said = []
    for command in ("check-config", "serve"):
        assert main([command, str(config)]) == 1, command
        said.append(capsys.readouterr().err)
    assert said[0] == said[1] and len(said[0].splitlines()) == 1, said
    return said[0]


def test_a_missing_socket_directory_is_one_line_from_check_config_and_serve(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sock = short_dir / "nodir" / "sock"
    assert refused(write_config(short_dir, sock), capsys) == (
        f"entrepot: cannot listen on http.addr {sock}: its directory {short_dir}/nodir does "
        "not exist; create it or set another http.addr\n"
    )


def test_a_socket_path_longer_than_a_unix_address_holds_is_refused(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    deep = short_dir / ("d" * 60)
    deep.mkdir()
    sock = deep / ("s" * (107 - len(str(deep))))  # 108 bytes: one too many
    assert refused(write_config(short_dir, sock), capsys) == (
        f"entrepot: cannot listen on http.addr {sock}: a unix socket's path may have at most "
        "107 bytes (108 here); choose a shorter one\n"
    )
    sock = sock.with_name(sock.name[1:])  # 107 bytes: fine
    assert main(["check-config", str(write_config(short_dir, sock))]) == 0


def test_a_socket_directory_that_is_a_file_is_refused(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (short_dir / "afile").write_text("")
    config = write_config(short_dir, short_dir / "afile" / "sock")
    assert main(["check-config", str(config)]) == 1
    assert f"its directory {short_dir}/afile is not a directory;" in capsys.readouterr().err


def test_a_regular_file_at_the_socket_path_is_refused_and_kept(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sock = short_dir / "sock"
    sock.write_text("not a socket")
    assert refused(write_config(short_dir, sock), capsys) == (
        f"entrepot: cannot listen on http.addr {sock}: it is a regular file, not a socket; "
        "remove it or set another http.addr\n"
    )
    assert sock.read_text() == "not a socket"


def test_a_stale_socket_is_no_problem_and_is_removed_before_serving(
    short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sock = short_dir / "sock"
    stale_socket(sock)
    config = load_config(write_config(short_dir, sock), {})
    assert listen_problem(config) is None
    assert sock.is_socket()  # the check changes nothing
    with caplog.at_level(logging.INFO, logger="entrepot.cli"):
        assert clear_stale_socket(sock) is None
    assert not sock.exists()
    assert caplog.messages == [f"removed the stale socket {sock} (nothing listened on it)"]
    assert clear_stale_socket(sock) is None  # nothing there: nothing to do


def test_a_socket_a_process_listens_on_is_refused_and_kept(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sock = short_dir / "sock"
    config_path = write_config(short_dir, sock)
    line = (
        f"http.addr {sock} is already in use (a process listens on that socket); "
        "stop it or set another http.addr"
    )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(sock))
        listener.listen(1)
        assert listen_problem(load_config(config_path, {})) == line
        assert clear_stale_socket(sock) == line
        assert main(["serve", str(config_path)]) == 1
        assert capsys.readouterr().err == f"entrepot: {line}\n"
        # check-config does not ask: the server it checks the configuration of may be running.
        assert main(["check-config", str(config_path)]) == 0
        assert sock.is_socket()


def test_a_socket_this_user_cannot_probe_is_refused_and_kept(shared_dir: Path) -> None:  # noqa: F811
    run = shared_dir / "run"
    run.mkdir(mode=0o777)
    run.chmod(0o777)
    sock = run / "sock"
    stale_socket(sock)
    sock.chmod(0o600)  # connecting needs write permission: whether it is live is unknown
    config = shared_config(shared_dir, f"http:\n  net: unix\n  addr: {sock}\n")
    result = check_config_as_unprivileged_user(config, "serve")
    assert result.returncode == 1, result.stderr
    assert result.stderr == (
        f"entrepot: cannot tell whether a process listens on http.addr {sock} (Permission "
        "denied); stop it or remove the socket, or set another http.addr\n"
    )
    assert sock.is_socket()


def test_a_stale_socket_this_user_cannot_remove_is_one_line(shared_dir: Path) -> None:  # noqa: F811
    run = shared_dir / "run"
    run.mkdir()
    run.chmod(0o1777)  # sticky, as /tmp: only a file's owner may remove it
    sock = run / "sock"
    stale_socket(sock)
    sock.chmod(0o777)
    config = shared_config(shared_dir, f"http:\n  net: unix\n  addr: {sock}\n")
    result = check_config_as_unprivileged_user(config, "serve")
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"entrepot: cannot remove the stale socket http.addr {sock} (Operation not "
        "permitted); remove it or set another http.addr"
    )
    assert "Traceback" not in result.stderr
    assert sock.is_socket()
