"""``entrepot garbage-collect``'s arguments: a module of its own, light (no asyncio, and
the config package only once the mark's walks are told), so that the program reads them,
and the config, before the collector's imports (see entrepot.__main__ and
registry.gchead)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

from entrepot.registry.gchead import HeadStart, begin_mark

if TYPE_CHECKING:
    from entrepot.config import Config

COMMAND = "garbage-collect"
# The REGISTRY_* overrides (config.environ) that may change what the mark's walks are
# told: where a variable starts so, the config is read whole before they are.
_WALK_OVERRIDES = ("REGISTRY_STORAGE", "REGISTRY_GARBAGECOLLECT")


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
    wrong: the command then reads them again and says what is wrong.

    The walks are told what a glance at the config file says (``_glance``), before the
    config package is imported (0.1 s of a CPU, with its dataclasses and YAML: the early
    walk children, ready, waited for it); the config, read whole then, must say the same,
    or the walks begun are not the collection's (they end with the command) and it
    begins its own."""
    glanced = _glance(argv)
    early = None if glanced is None else begin_mark(*glanced)
    from entrepot.config import load_config

    try:
        args = command_parser(_Quiet).parse_args(argv)
        config = load_config(args.config)
    except Exception:  # noqa: BLE001 - reported by the command itself
        return None
    if config.storage.s3 is not None:
        return Begun(args, config, None)
    root = os.path.abspath(config.storage.rootdirectory)  # as the driver's
    tag_links = args.delete_untagged or bool(config.garbagecollect.retention)
    if early is None:  # nothing told yet
        return Begun(args, config, begin_mark(root, tag_links))
    return Begun(args, config, early if glanced == (root, tag_links) else None)


def _glance(argv: list[str]) -> tuple[str, bool] | None:
    """The store's root (absolute) and whether the mark reads the tags' links, as the
    config file says at a glance: YAML alone, without the config package's models and
    checks; None where that could differ (an override of the storage or collection
    sections), or the file does not say it plainly (the full read decides)."""
    if any(name.startswith(_WALK_OVERRIDES) for name in os.environ):
        return None
    try:
        args = command_parser(_Quiet, grace=str).parse_args(argv)
        import yaml

        with open(args.config, "rb") as file:
            tree = yaml.load(file, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        root = tree["storage"]["filesystem"]["rootdirectory"]
        retention = (tree.get("garbagecollect") or {}).get("retention")
    except Exception:  # noqa: BLE001 - the full read reports what is wrong
        return None
    if not isinstance(root, str) or not root:
        return None
    return os.path.abspath(root), bool(args.delete_untagged or retention)


class _Quiet(argparse.ArgumentParser):
    """A parser that says nothing of a usage error: the command says it."""

    def error(self, message: str) -> NoReturn:
        raise ValueError(message)


def command_parser(
    parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser,
    grace: Callable[[str], Any] | None = None,
) -> Any:
    """The program's parser with this command alone; ``grace``: what reads ``--grace``
    (else a duration, checked)."""
    parser = parser_class(
        prog="entrepot", description="Entrepot: a container registry, a drop-in for registry:2."
    )
    add_command(parser.add_subparsers(dest="command", metavar="COMMAND"), grace)
    return parser


def add_command(commands: Any, grace: Callable[[str], Any] | None = None) -> None:
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
        type=grace or _grace,
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
    from entrepot.config import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return seconds
