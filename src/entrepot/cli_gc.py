"""``entrepot garbage-collect CONFIG [--dry-run] [--delete-untagged] [--grace DURATION]``,
registry:2's ``registry garbage-collect`` (see entrepot.registry.gc)."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

from entrepot.config import ConfigError, load_config, parse_duration
from entrepot.registry.gc import GarbageCollector, GcOptions, GcResult
from entrepot.storage import StorageError

COMMAND = "garbage-collect"
_T = TypeVar("_T")


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
        default="1h",
        metavar="DURATION",
        help="keep what was written or linked this recently, e.g. 30m, 0 (default: 1h)",
    )


def run(args: argparse.Namespace) -> int:
    options = GcOptions(
        dry_run=args.dry_run, delete_untagged=args.delete_untagged, grace=args.grace
    )
    return garbage_collect(args.config, options)


def garbage_collect(path: str, options: GcOptions) -> int:
    """Mark and sweep the storage the config at ``path`` names."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"entrepot: config error: {exc}", file=sys.stderr)
        return 1
    from entrepot.root import create_driver

    async def collect() -> GcResult:
        driver = create_driver(config)
        try:
            return await GarbageCollector(driver, options, emit=_say).run()
        finally:
            await driver.close()

    try:
        result = _run_async(collect())
    except StorageError as exc:
        print(f"entrepot: storage error in {config.storage.rootdirectory}: {exc}", file=sys.stderr)
        return 1
    if options.dry_run:
        _say(f"dry run: nothing deleted ({result.seconds:.1f}s)")
    else:
        _say(
            f"deleted {len(result.blobs_deleted)} blobs ({result.bytes_freed} bytes), "
            f"{len(result.manifests_deleted)} manifests, {result.layer_links_deleted} layer "
            f"links and {len(result.repositories_removed)} empty repositories; "
            f"{result.blobs_relinked} blobs kept as a push linked them during the sweep "
            f"({result.seconds:.1f}s)"
        )
    return 0


def _run_async(work: Coroutine[object, object, _T]) -> _T:
    """On uvloop when it is installed (the server's loop too): many small storage calls."""
    if importlib.util.find_spec("uvloop"):
        import uvloop

        return uvloop.run(work)
    return asyncio.run(work)


def _say(line: str) -> None:
    print(line, flush=True)


def _grace(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return seconds
