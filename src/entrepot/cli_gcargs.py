"""``entrepot garbage-collect``'s arguments: a module of its own, light (no asyncio), so
that the program reads them, and the config, before the collector's imports (see
entrepot.__main__ and registry.gchead)."""

from __future__ import annotations

import argparse
import os
from typing import Any, NamedTuple, NoReturn

from entrepot.config import Config, load_config, parse_duration
from entrepot.registry.gchead import HeadStart, begin_mark

COMMAND = "garbage-collect"


class Begun(NamedTuple):
    """The command as the program read it before the collector's imports: its arguments,
    its config (read once: the collection is of the very store its walks were told), and
    the mark's walks begun ahead (None: not begun, e.g. object storage)."""

    args: argparse.Namespace
    config: Config
    head: HeadStart | None


def head_start(argv: list[str]) -> Begun | None:
    """The command ``argv`` (without the program) read, and the mark's walks begun ahead
    (registry.gchead) where it collects a disk; None where its arguments or config are
    wrong: the command then reads them again and says what is wrong."""
    try:
        args = command_parser(_Quiet).parse_args(argv)
        config = load_config(args.config)
    except Exception:  # noqa: BLE001 - reported by the command itself
        return None
    if config.storage.s3 is not None:
        return Begun(args, config, None)
    root = os.path.abspath(config.storage.rootdirectory)  # as the driver's
    tag_links = args.delete_untagged or bool(config.garbagecollect.retention)
    return Begun(args, config, begin_mark(root, tag_links))


class _Quiet(argparse.ArgumentParser):
    """A parser that says nothing of a usage error: the command says it."""

    def error(self, message: str) -> NoReturn:
        raise ValueError(message)


def command_parser(parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser) -> Any:
    """The program's parser with this command alone."""
    parser = parser_class(
        prog="entrepot", description="Entrepot: a container registry, a drop-in for registry:2."
    )
    add_command(parser.add_subparsers(dest="command", metavar="COMMAND"))
    return parser


def add_command(commands: Any) -> None:
    """The subcommand's parser, on ``commands`` (argparse's subparsers)."""
    gc_cmd = commands.add_parser(
        COMMAND,
        help="delete blobs and manifests no image references",
        description=(
            "registry:2's garbage-collect: delete the blobs no manifest references (and, with "
            "--delete-untagged, the untagged manifests, keeping tagged images whole). Safe "
            "while the registry serves: nothing written or linked within --grace is deleted."
        ),
    )
    gc_cmd.add_argument("config", metavar="CONFIG", help="registry:2 config.yml")
    gc_cmd.add_argument(
        "-d", "--dry-run", action="store_true", help="print what would be deleted, delete nothing"
    )
    gc_cmd.add_argument(
        "-m",
        "--delete-untagged",
        action="store_true",
        help="also delete manifests no tag reaches (index children and referrers of a "
        "tagged manifest stay)",
    )
    gc_cmd.add_argument(
        "--grace",
        type=_grace,
        default=None,
        metavar="DURATION",
        help="keep what was written or linked this recently, e.g. 30m, 0 (default: the "
        "config's garbagecollect.grace, as the server's scheduled runs; 1h if unset)",
    )
    gc_cmd.add_argument(
        "--full-speed",
        action="store_true",
        help="do not rest while other processes keep the CPUs busy (a full disk that cannot "
        "wait; serving slows meanwhile). Default: short bursts and rests then",
    )


def _grace(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return seconds
