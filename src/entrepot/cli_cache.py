"""``entrepot cache prefetch [--platform OS/ARCH] CONFIG IMAGE...`` pulls images into the
pull-through cache ahead of time; ``entrepot cache ls CONFIG [UPSTREAM]`` lists what it
holds. Both work on the configured storage whether or not a server runs on it."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from entrepot.cli_gc import _run_async, as_store_owner
from entrepot.config import Config, ConfigError, load_config
from entrepot.oci.digest import Digest
from entrepot.storage import StorageError

if TYPE_CHECKING:
    from entrepot.proxy.inventory import CachedTag
    from entrepot.proxy.prefetch import ImageRef, Platform
    from entrepot.proxy.upstreams import Upstream

# The cache's modules are imported when a command runs, not with the CLI: they import
# prometheus_client, which must not be loaded before `serve` sets its metrics directory.

COMMAND = "cache"


def add_command(commands: Any) -> None:
    """The subcommand's parser, on ``commands`` (argparse's subparsers)."""
    cache_cmd = commands.add_parser(
        COMMAND,
        help="prefetch images into the pull-through cache, list what it holds",
        description="Work on the pull-through cache of the configured storage (a server "
        "may be running on it or not).",
    )
    actions = cache_cmd.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    prefetch = actions.add_parser(
        "prefetch",
        help="pull images into the cache now",
        description="Pull images into the cache as a client's pull would (fills are shared "
        "with clients pulling at the same moment). Exits 1 if any image failed.",
    )
    prefetch.add_argument(
        "--platform",
        action="append",
        default=[],
        type=_platform,
        metavar="OS/ARCH",
        help="only this platform of a multi-platform image (repeatable; default: all)",
    )
    prefetch.add_argument("config", metavar="CONFIG", help="registry:2 config.yml")
    prefetch.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help="an image with its registry host, e.g. docker.io/library/nginx:1.27",
    )
    listing = actions.add_parser(
        "ls", help="list cached tags", description="List the tags the cache holds."
    )
    listing.add_argument("config", metavar="CONFIG", help="registry:2 config.yml")
    listing.add_argument(
        "upstream", nargs="?", metavar="UPSTREAM", help="only this upstream (its host)"
    )


class CacheCommandError(Exception):
    """A mistake in the command's arguments: one line, exit 1."""


def run(args: argparse.Namespace) -> int:
    from entrepot.proxy.prefetch import PrefetchError

    config = _config(args.config)
    if config is None or not as_store_owner(config):  # what it caches stays the server's
        return 1
    # The cache's own warnings (an upstream failure, a stale tag) would repeat what the
    # command reports per image: one line each.
    logging.getLogger("entrepot").setLevel(logging.ERROR)
    try:
        if args.cache_command == "prefetch":
            return prefetch(config, args.images, args.platform)
        return list_cached(config, args.upstream)
    except (PrefetchError, CacheCommandError) as exc:
        return _fail(str(exc))
    except StorageError as exc:
        return _fail(_storage_error(config, exc))


def prefetch(config: Config, images: Sequence[str], platforms: Sequence[Platform]) -> int:
    from entrepot.proxy.prefetch import Prefetcher, PrefetchError, describe, parse_image
    from entrepot.root import open_cache

    refs = [parse_image(text) for text in images]  # every name checked before any fetch

    async def work() -> int:
        failed = 0
        async with open_cache(config) as (cache, upstreams):
            progress = _progress()
            prefetcher = Prefetcher(cache, upstreams, progress)
            for ref in refs:
                prefetcher.upstream_for(ref)
            for ref in refs:
                try:
                    with progress.image(ref):
                        result = await prefetcher.prefetch(ref, platforms)
                except PrefetchError as exc:
                    failed += 1
                    print(f"entrepot: {exc}", file=sys.stderr)
                    continue
                print(f"prefetched {describe(result)}", flush=True)
        return failed

    return 1 if _run_async(work()) else 0


def list_cached(config: Config, upstream_host: str | None) -> int:
    from entrepot.proxy.inventory import cached_tags
    from entrepot.root import open_cache

    async def work() -> list[CachedTag]:
        async with open_cache(config) as (cache, upstreams):
            chosen = _upstreams(upstreams, upstream_host)
            return await cached_tags(cache, chosen)

    tags = _run_async(work())
    rows = [
        (
            t.repository,
            t.tag,
            str(t.digest),
            _size(t.size),
            _when(t.cached_at),
            _when(t.checked_at),
            "-" if t.pulled_at is None else _when(t.pulled_at),
        )
        for t in tags
    ]
    header = ("REPOSITORY", "TAG", "DIGEST", "SIZE", "CACHED", "CHECKED", "PULLED")
    print(_table(header, rows))
    return 0


def _upstreams(upstreams: list[Upstream], host: str | None) -> list[Upstream]:
    if not upstreams:
        raise CacheCommandError("no upstream is configured (proxy or proxies): nothing is cached")
    if host is None:
        return upstreams
    chosen = [u for u in upstreams if host.lower() in u.aliases]
    if not chosen:
        known = ", ".join(u.host for u in upstreams)
        raise CacheCommandError(f"no upstream {host} is configured (configured: {known})")
    return chosen


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines)


def _size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _config(path: str) -> Config | None:
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"entrepot: config error: {exc}", file=sys.stderr)
        return None
    return config


def _storage_error(config: Config, exc: StorageError) -> str:
    """The line for a storage error, naming the store the cache is on."""
    s3 = config.storage.s3
    if s3 is None:
        return f"storage error in {config.storage.rootdirectory}: {exc}"
    root = s3.rootdirectory.strip("/")
    return (
        f"storage error in storage.s3 bucket {s3.bucket}"
        + (f" (rootdirectory /{root})" if root else "")
        + f": {exc}; check the bucket, regionendpoint and credentials"
    )


def _fail(message: str) -> int:
    print(f"entrepot: {message}", file=sys.stderr)
    return 1


def _platform(text: str) -> Platform:
    from entrepot.proxy.prefetch import parse_platform

    try:
        return parse_platform(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _progress() -> LineProgress:
    if sys.stderr.isatty():
        return BarProgress()
    return LineProgress()


class LineProgress:
    """Plain lines, one per blob, for logs and pipes."""

    def image(self, ref: ImageRef) -> _Section:
        print(f"prefetching {ref}", flush=True)
        return _Section()

    def blob_started(self, digest: Digest, size: int) -> None:
        pass

    def blob_advanced(self, digest: Digest, nbytes: int) -> None:
        pass

    def blob_done(self, digest: Digest, cached_already: bool) -> None:
        print(f"  {digest}: {'cached already' if cached_already else 'fetched'}", flush=True)


class _Section:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


class BarProgress(LineProgress):
    """A progress bar per blob being fetched, on a terminal (rich)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TransferSpeedColumn,
        )

        self._bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._tasks: dict[Digest, Any] = {}

    def image(self, ref: ImageRef) -> Any:
        self._bars.console.print(f"prefetching {ref}")
        return self._bars

    def blob_started(self, digest: Digest, size: int) -> None:
        self._tasks[digest] = self._bars.add_task(f"{digest.encoded[:12]}", total=size)

    def blob_advanced(self, digest: Digest, nbytes: int) -> None:
        self._bars.advance(self._tasks[digest], nbytes)

    def blob_done(self, digest: Digest, cached_already: bool) -> None:
        task = self._tasks.pop(digest, None)
        if task is not None:
            self._bars.remove_task(task)
        state = "cached already" if cached_already else "fetched"
        self._bars.console.print(f"  {digest.encoded[:12]}: {state}")
