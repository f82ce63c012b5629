"""Whether ``entrepot serve`` can listen on ``http.addr``, checked before any worker starts,
so that a problem is one line naming the address and what to do (Granian's own errors are
tracebacks without the path).

A unix socket (``http: {net: unix, addr: PATH}``): its directory must exist and be
writable, and PATH must be absent or a socket. A socket file nobody listens on (left by a
crashed run: connecting to it is refused) is removed, so that a restart needs no manual
clean-up; registry:2 (Go's net.Listen) refuses to start on it instead. A socket a process
listens on is never removed."""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from pathlib import Path

from entrepot.config import Config

__all__ = ["clear_stale_socket", "listen_problem", "socket_path_problem"]

logger = logging.getLogger("entrepot.cli")

_NOT_A_SOCKET = {stat.S_IFREG: "a regular file", stat.S_IFDIR: "a directory"}


def listen_problem(config: Config) -> str | None:
    """Why Entrepot cannot listen on ``http.addr``, in one line, or None. Changes nothing:
    a stale socket file is no problem (``clear_stale_socket`` removes it).

    Granian's workers bind with SO_REUSEPORT, with which a second server on the same port
    would share it silently (requests alternating between two registries). A trial bind
    without SO_REUSEPORT fails while anything listens there, Entrepot included."""
    http = config.http
    if http.unix_socket is not None:
        return socket_path_problem(http.unix_socket) or _listener_problem(http.unix_socket)
    host = http.host or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    shown = f"[{host}]:{http.port}" if family == socket.AF_INET6 else f"{host}:{http.port}"
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # Lingering TIME_WAIT connections of a server just stopped are no conflict.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, http.port))
            probe.listen(1)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return (
                    f"http.addr {shown} is already in use by another process; "
                    "stop it or set another http.addr"
                )
            return f"cannot listen on http.addr {shown}: {exc.strerror or exc}"
    return None


# sockaddr_un's sun_path: 108 bytes on Linux, the last a NUL.
_SUN_PATH_MAX = 107


def socket_path_problem(path: Path) -> str | None:
    """Why a unix socket cannot be made at ``path`` whoever else runs, in one line, or None:
    what ``check-config`` can know (whether a process listens there is for ``serve``)."""
    where = path.resolve()  # as Granian binds it
    directory = where.parent
    if len(os.fsencode(where)) > _SUN_PATH_MAX:
        return (
            f"cannot listen on http.addr {path}: a unix socket's path may have at most "
            f"{_SUN_PATH_MAX} bytes ({len(os.fsencode(where))} here); choose a shorter one"
        )
    if not directory.is_dir():
        what = "does not exist" if not directory.exists() else "is not a directory"
        return (
            f"cannot listen on http.addr {path}: its directory {directory} {what}; "
            "create it or set another http.addr"
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        return (
            f"cannot listen on http.addr {path}: its directory {directory} is not writable "
            f"by this user (uid {os.geteuid()}); make it writable or set another http.addr"
        )
    try:
        mode = where.stat().st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot listen on http.addr {path}: {exc.strerror or exc}"
    if not stat.S_ISSOCK(mode):
        kind = _NOT_A_SOCKET.get(stat.S_IFMT(mode), "not a socket")
        return (
            f"cannot listen on http.addr {path}: it is {kind}, not a socket; "
            "remove it or set another http.addr"
        )
    return None


def clear_stale_socket(path: Path) -> str | None:
    """Remove the socket file at ``path`` when nobody listens on it (logged at info); a
    problem in one line when it cannot be removed or is in use, else None."""
    where = path.resolve()
    problem = _listener_problem(path)
    if problem is not None or not where.is_socket():
        return problem
    try:
        where.unlink()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return (
            f"cannot remove the stale socket http.addr {path} ({exc.strerror or exc}); "
            "remove it or set another http.addr"
        )
    logger.info("removed the stale socket %s (nothing listened on it)", path)
    return None


def _listener_problem(path: Path) -> str | None:
    """A line when a process listens on the socket at ``path`` (or none can be told),
    None when it is absent or stale."""
    where = path.resolve()
    if not where.is_socket():
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.setblocking(False)  # a listener with a full backlog: EAGAIN, not a wait
        try:
            probe.connect(str(where))
        except OSError as exc:
            if exc.errno == errno.ECONNREFUSED:
                return None  # stale: nothing listens
            if exc.errno != errno.EAGAIN:
                return (
                    f"cannot tell whether a process listens on http.addr {path} "
                    f"({exc.strerror or exc}); stop it or remove the socket, or set "
                    "another http.addr"
                )
    return (
        f"http.addr {path} is already in use (a process listens on that socket); "
        "stop it or set another http.addr"
    )
