"""The ``entrepot`` command: ``entrepot serve [CONFIG]``, like registry:2's ``registry serve``,
``entrepot check-config [CONFIG]``, which checks a configuration without serving, and
``entrepot garbage-collect CONFIG``, registry:2's ``registry garbage-collect`` (cli_gc),
``entrepot cache prefetch|ls CONFIG ...`` for the pull-through cache (cli_cache), and
``entrepot healthcheck [CONFIG]``, the container image's health check (cli_health).
Whether the server can listen on ``http.addr`` is checked before it starts (cli_listen).

The server is Granian (ASGI) with the factory ``entrepot.root:create_app_from_env``; each
worker re-reads the configuration from the path in ``ENTREPOT_CONFIG`` (and the same
``REGISTRY_*`` overrides, which it inherits with the environment).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib.util
import logging
import os
import secrets
import shutil
import ssl
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from entrepot import __version__, cli_cache, cli_gc, cli_gcargs, cli_health
from entrepot.cli_listen import clear_stale_socket, listen_problem, socket_path_problem
from entrepot.config import (
    CONFIG_ENV,
    CONFIGURATION_PATH_ENV,
    METRICS_DIR_ENV,
    SECRET_ENV,
    Config,
    ConfigError,
    load_config,
)
from entrepot.config.check import check_tls_files, effective_yaml, summary
from entrepot.log_setup import configure_logging

if TYPE_CHECKING:
    from granian.server.mp import MPServer
    from granian.server.mt import MTServer

__all__ = ["APP_FACTORY", "main"]

APP_FACTORY = "entrepot.root:create_app_from_env"
WORKERS_ENV = "ENTREPOT_WORKERS"
# An operator's configuration mistake: one line on stderr, this exit status.
CONFIG_ERROR_EXIT = 1

logger = logging.getLogger("entrepot.cli")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if args.command == cli_gcargs.COMMAND:
        return cli_gc.run(args)
    if args.command == cli_cache.COMMAND:
        return cli_cache.run(args)
    if args.command == cli_health.COMMAND:
        return cli_health.healthcheck(args.config or os.environ.get(CONFIGURATION_PATH_ENV))
    if args.command not in ("serve", "check-config"):
        parser.print_help(sys.stderr)
        return 2
    if args.config and args.config_option and args.config != args.config_option:
        print("entrepot: give the config file once, as CONFIG or --config", file=sys.stderr)
        return 2
    path = args.config or args.config_option or os.environ.get(CONFIGURATION_PATH_ENV) or None
    if args.command == "check-config":
        return check_config(path)
    try:
        workers = workers_wanted(args.workers, os.environ)
    except ValueError as exc:
        print(f"entrepot: {exc}", file=sys.stderr)
        return 2
    return serve(path, workers=workers)


def _load(path: str | None) -> Config | None:
    """The configuration, its warnings printed; None (after one line) on a config error."""
    try:
        config = load_config(path)
        check_tls_files(config)
    except ConfigError as exc:
        print(f"entrepot: config error: {exc}", file=sys.stderr)
        return None
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
        if logging.getLogger().hasHandlers():  # else logging would print it a second time
            logger.warning("%s", warning)
    return config


def _said(problem: str | None) -> bool:
    """Print ``problem`` (one line) when there is one; whether there was."""
    if problem:
        print(f"entrepot: {problem}", file=sys.stderr)
    return bool(problem)


def _storage_problem(config: Config, *, write: bool = True) -> str | None:
    from entrepot.preflight import storage_problem  # the root imports the app: only when needed

    problem = storage_problem(config, write=write)
    if problem:
        print(f"entrepot: storage error: {problem}", file=sys.stderr)
    return problem


def _takeover_problem(config: Config) -> str | None:
    from entrepot.preflight import take_over_store

    problem = take_over_store(config)
    if problem:
        print(f"entrepot: storage error: {problem}", file=sys.stderr)
    return problem


def _log_fill_coordination(config: Config) -> None:
    from entrepot.preflight import fill_coordination

    said = fill_coordination(config)
    if said is not None:
        logger.log(*said)


def check_config(path: str | None) -> int:
    """Print the configuration in effect (secrets masked) and every warning; serve nothing."""
    config = _load(path)
    if config is None:
        return CONFIG_ERROR_EXIT
    # Whether a process listens on http.addr is for serve: the server this configuration
    # is checked for may well be running.
    if config.http.unix_socket and _said(socket_path_problem(config.http.unix_socket)):
        return 1
    if _storage_problem(config, write=False):  # a check makes no folder
        return 1
    print(f"# {summary(config, path)}\n{effective_yaml(config)}", end="")
    return 0


def serve(path: str | None, *, workers: int | None = None) -> int:
    """Load the configuration at ``path`` (None: defaults) and run the server."""
    config = _load(path)
    if config is None:
        return CONFIG_ERROR_EXIT
    if _said(listen_problem(config)):
        return 1
    # Every worker writes its metric values here and a scrape sums them. Fresh for each
    # run (old files would be summed in), removed at exit; set before anything imports
    # prometheus_client, which reads it then (and workers are forked from this process).
    metrics_dir = tempfile.mkdtemp(prefix="entrepot-metrics-")
    previous = os.environ.get(METRICS_DIR_ENV)
    os.environ[METRICS_DIR_ENV] = metrics_dir
    try:
        return _serve(config, path, workers)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
        if previous is None:
            os.environ.pop(METRICS_DIR_ENV, None)
        else:
            os.environ[METRICS_DIR_ENV] = previous


def _serve(config: Config, path: str | None, workers: int | None) -> int:
    if _storage_problem(config):
        return 1
    configure_logging(config.log)
    logger.info("starting: %s", summary(config, path))
    if _takeover_problem(config):
        return 1
    _log_fill_coordination(config)
    if config.http.unix_socket and _said(clear_stale_socket(config.http.unix_socket)):
        return 1
    if not config.http.secret and SECRET_ENV not in os.environ:
        # Like registry:2 without http.secret, but shared: every worker must accept the
        # tokens and upload states any other worker signed.
        os.environ[SECRET_ENV] = secrets.token_hex(32)
    if path:
        os.environ[CONFIG_ENV] = str(Path(path).resolve())
    else:
        os.environ.pop(CONFIG_ENV, None)
    with _client_ca_bundle(config) as client_ca:
        try:
            server = _granian(config, workers or default_workers(), client_ca)
        except (OSError, ssl.SSLError) as exc:
            print(f"entrepot: config error: cannot load http.tls: {exc}", file=sys.stderr)
            return CONFIG_ERROR_EXIT
        with _debug_server(config) as started:
            if not started:
                return 1
            server.serve()
    return 0


@contextlib.contextmanager
def _debug_server(config: Config) -> Iterator[bool]:
    """registry:2's debug server on http.debug.addr (when configured) while serving;
    yields False after one line on stderr if it cannot listen."""
    debug = config.http.debug
    if debug is None:
        yield True
        return
    from entrepot.http.debug import DebugServer
    from entrepot.http.metrics import workers_registry

    collect = workers_registry(os.environ[METRICS_DIR_ENV])
    server = DebugServer(debug.host, debug.port, debug.prometheus.path, collect)
    try:
        server.start()
    except OSError as exc:
        reason = "it is already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        print(
            f"entrepot: cannot listen on http.debug.addr {debug.addr}: {reason or exc}; "
            "stop what uses it or set another http.debug.addr",
            file=sys.stderr,
        )
        yield False
        return
    logger.info("metrics at http://%s:%d%s", debug.host, server.port, debug.prometheus.path)
    try:
        yield True
    finally:
        server.close()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="entrepot",
        description="Entrepot: a container registry, a drop-in for registry:2.",
    )
    parser.add_argument("-v", "--version", action="version", version=f"entrepot {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve_cmd = commands.add_parser(
        "serve",
        help="run the registry",
        description="Run the registry with registry:2's config.yml.",
    )
    check_cmd = commands.add_parser(
        "check-config",
        help="check a configuration without serving",
        description="Validate the configuration (with REGISTRY_* overrides), check the files "
        "it names, print it as in effect with secrets masked, and every warning. "
        "Exits 1 on an error.",
    )
    for command in (serve_cmd, check_cmd):
        command.add_argument(
            "config",
            nargs="?",
            metavar="CONFIG",
            help=f"registry:2 config.yml (default: ${CONFIGURATION_PATH_ENV}, else built-in "
            "defaults)",
        )
        command.add_argument(
            "--config", dest="config_option", metavar="CONFIG", help="same as the CONFIG argument"
        )
    serve_cmd.add_argument(
        "--workers",
        type=_positive_int,
        default=None,  # then workers_wanted
        help="worker processes (default: $ENTREPOT_WORKERS, else one per CPU core: "
        f"{default_workers()} here)",
    )
    cli_gcargs.add_command(commands)
    cli_cache.add_command(commands)
    cli_health.add_command(commands)
    return parser


def default_workers() -> int:
    """One worker per CPU core this process may run on, as registry:2 uses every core."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def workers_wanted(given: int | None, environ: Mapping[str, str]) -> int:
    """``--workers``, else ``$ENTREPOT_WORKERS`` (empty: unset), else one per core;
    ``ValueError`` naming the variable when it is not a positive number."""
    if given is not None:
        return given
    text = environ.get(WORKERS_ENV)
    if not text:
        return default_workers()
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError as exc:
        raise ValueError(f"{WORKERS_ENV}: {exc}") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


@contextlib.contextmanager
def _client_ca_bundle(config: Config) -> Iterator[Path | None]:
    """Granian takes one CA file: concatenate several ``clientcas`` into a temporary one."""
    cas = config.http.tls.clientcas if config.http.tls else []
    if len(cas) <= 1:
        yield cas[0] if cas else None
        return
    with tempfile.TemporaryDirectory(prefix="entrepot-") as tmp:
        bundle = Path(tmp) / "clientcas.pem"
        bundle.write_text("\n".join(ca.read_text() for ca in cas))
        yield bundle


def _granian(config: Config, workers: int, client_ca: Path | None) -> MPServer | MTServer:
    from granian import Granian
    from granian.constants import Interfaces, Loops, SSLProtocols
    from granian.log import LogLevels

    http = config.http
    tls = http.tls
    return Granian(
        APP_FACTORY,
        address=http.host or "0.0.0.0",
        port=http.port,
        uds=http.unix_socket,
        interface=Interfaces.ASGI,
        factory=True,
        workers=workers,
        loop=Loops.uvloop if importlib.util.find_spec("uvloop") else Loops.auto,
        log_level=LogLevels(config.log.level),  # validated: error/warn/info/debug
        log_access=False,  # Entrepot writes its own (http/accesslog.py): more to tell
        ssl_cert=tls.certificate if tls else None,
        ssl_key=tls.key if tls else None,
        # registry:2 allows tls1.0 and tls1.1; Granian's floor is TLS 1.2.
        ssl_protocol_min=SSLProtocols.tls13
        if tls and tls.minimumtls == "tls1.3"
        else SSLProtocols.tls12,
        ssl_ca=client_ca,
        ssl_client_verify=client_ca is not None,
        # A worker that dies (killed, out of memory) is replaced; without this Granian
        # stops the whole server, and every other worker with it.
        respawn_failed_workers=True,
    )
