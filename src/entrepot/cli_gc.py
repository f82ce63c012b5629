"""``entrepot garbage-collect CONFIG [--dry-run] [--delete-untagged] [--grace DURATION]``,
registry:2's ``registry garbage-collect`` (see entrepot.registry.gc)."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import sys
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any, TypeVar

from entrepot.config import ConfigError, load_config, parse_duration
from entrepot.registry.gc import GarbageCollector, GcOptions, GcResult
from entrepot.registry.lease import GC_LEASE as LEASE
from entrepot.registry.lease import GC_LEASE_TTL as LEASE_TTL
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


class LeaseHeld(Exception):
    """Another collection (a server's scheduled one, or another command) is running."""


def garbage_collect(path: str, options: GcOptions) -> int:
    """Mark and sweep the storage the config at ``path`` names."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"entrepot: config error: {exc}", file=sys.stderr)
        return 1
    from entrepot.preflight import create_driver
    from entrepot.root import retention_rules

    options = replace(options, rules=retention_rules(config))

    async def collect() -> GcResult:
        driver = create_driver(config)
        # One collection at a time over a store: the servers' scheduled ones take it too.
        try:
            lease = await driver.try_lease(LEASE, ttl=LEASE_TTL)
            if lease is None:
                raise LeaseHeld
            try:  # the lease renews itself while held
                return await GarbageCollector(driver, options, emit=_say).run()
            finally:
                await lease.release()
        finally:
            await driver.close()

    try:
        result = _run_async(collect())
    except LeaseHeld:
        print(
            f"entrepot: another garbage collection is running on this storage (the lease "
            f"{LEASE} is held, by a server's scheduled collection or another command); "
            "try again when it is done",
            file=sys.stderr,
        )
        return 1
    except StorageError as exc:
        print(f"entrepot: storage error in {config.storage.rootdirectory}: {exc}", file=sys.stderr)
        return 1
    if options.dry_run:
        _say(f"dry run: nothing deleted ({result.seconds:.1f}s)")
    else:
        _say(
            f"deleted {len(result.blobs_deleted)} blobs ({result.bytes_freed} bytes), "
            f"{len(result.manifests_deleted)} manifests, {len(result.tags_deleted)} tags, "
            f"{result.layer_links_deleted} layer links and {len(result.repositories_removed)} "
            f"empty repositories; {result.blobs_relinked} blobs kept as a push linked them "
            f"during the sweep ({result.seconds:.1f}s)"
        )
        if result.blobs_recovered:
            _say(f"put back {result.blobs_recovered} blobs an interrupted collection left aside")
    return 0


def _run_async(work: Coroutine[object, object, _T]) -> _T:
    """On uvloop when it is installed (the server's loop too): many small storage calls.
    The result is handed over outside the main task: asyncio's runner formats that task
    (with its result: seconds for a large store's GcResult) when it restores SIGINT's
    handler."""
    done: list[_T] = []

    async def main() -> None:
        done.append(await work)

    if importlib.util.find_spec("uvloop"):
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
    return done[0]


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
