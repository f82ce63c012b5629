"""``entrepot garbage-collect CONFIG [--dry-run] [--delete-untagged] [--grace DURATION]``,
registry:2's ``registry garbage-collect`` (see entrepot.registry.gc)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc as cycles
import importlib.util
import signal
import sys
import threading
from collections import deque
from collections.abc import Coroutine, Iterator
from dataclasses import replace
from typing import Any, TypeVar

from entrepot.cli_gcargs import Begun, command_parser
from entrepot.config import Config, ConfigError, load_config
from entrepot.lowpriority import yield_to_serving
from entrepot.registry.gc import GarbageCollector, GcOptions, GcResult
from entrepot.registry.gchead import HeadStart
from entrepot.registry.gcpace import Pacer
from entrepot.registry.lease import GC_LEASE as LEASE
from entrepot.registry.lease import GC_LEASE_TTL as LEASE_TTL
from entrepot.registry.lease import while_held
from entrepot.storage import LeaseLost, StorageError
from entrepot.storage.fschildren import walks_stopped

# The last collector the command ran, with what it built: the program ends with os._exit
# (entrepot.__main__) and so never frees it, object by object (0.09 s of the bench
# store's run). In-process callers (tests) hold only the last one.
_ending: deque[GarbageCollector] = deque(maxlen=1)
_T = TypeVar("_T")


def main(argv: list[str], begun: Begun | None = None) -> int:
    """``entrepot garbage-collect ...`` (``argv`` without the program), parsed and run
    without the rest of the command line (entrepot.cli): the other commands' modules
    (the server's, TLS, the health check) were 0.03 s of every run's start. ``begun``:
    ``argv`` and its config as read before this module's imports, with the mark's walks
    begun then (cli_gcargs.head_start); None: read them now."""
    if begun is not None:
        return run(begun.args, begun.head, begun.config)
    try:
        args = command_parser().parse_args(argv)
    except SystemExit as exc:  # --help, usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    return run(args)


def run(
    args: argparse.Namespace, head: HeadStart | None = None, config: Config | None = None
) -> int:
    options = GcOptions(dry_run=args.dry_run, delete_untagged=args.delete_untagged, apart=True)
    if args.grace is not None:
        options = replace(options, grace=args.grace)
    # A large store's collection makes a few hundred thousand objects (digests, scans) that
    # live to its end: the cyclic collector walked them again and again (a quarter of the
    # process's CPU on the bench store). The command is short and makes few cycles.
    cycles.disable()
    try:
        return garbage_collect(
            args.config,
            options,
            rest=not args.full_speed,
            grace_given=args.grace is not None,
            head=head,
            config=config,
        )
    finally:
        # All it made is still in the youngest generation, which the first allocation
        # after enable() would walk (0.14 s of the bench store's run, between the summary
        # and the exit): merged into the oldest one instead, walked only by a later full
        # collection, if the process lives that long.
        cycles.freeze()
        cycles.unfreeze()
        cycles.enable()


def as_store_owner(config: Config) -> bool:
    """Go on as the store's owner when run as root on another user's store (see
    preflight.become_store_owner), saying so on stderr; False, after one line, if it
    cannot."""
    from entrepot.preflight import OwnerSwitchError, become_store_owner

    try:
        switched = become_store_owner(config)
    except OwnerSwitchError as exc:
        print(f"entrepot: {exc}", file=sys.stderr)
        return False
    if switched:
        print(switched, file=sys.stderr)
    return True


class LeaseHeld(Exception):
    """Another collection (a server's scheduled one, or another command) is running."""


def garbage_collect(
    path: str,
    options: GcOptions,
    *,
    rest: bool = True,
    grace_given: bool = True,
    head: HeadStart | None = None,
    config: Config | None = None,
) -> int:
    """Mark and sweep the storage the config at ``path`` names; with ``rest``, stepping
    aside while the machine serves; without ``grace_given``, with the config's grace (a
    dry run then lists what the scheduled run deletes). ``config``: the one at ``path``,
    read already (with ``head``, the one whose store the walks begun ahead walk)."""
    if config is None:
        try:
            config = load_config(path)
        except ConfigError as exc:
            print(f"entrepot: config error: {exc}", file=sys.stderr)
            return 1
    from entrepot.preflight import create_driver, retention_rules

    if not as_store_owner(config):
        return 1
    root = config.storage.rootdirectory
    if config.storage.s3 is None and not root.is_dir():  # a typo would collect a new, empty one
        print(
            f"entrepot: storage.filesystem.rootdirectory {root} (in {path}) does not exist: "
            "no store to collect; check the path",
            file=sys.stderr,
        )
        return 1
    options = replace(options, rules=retention_rules(config))
    if not grace_given:
        options = replace(options, grace=config.garbagecollect.grace_s)

    async def collect() -> GcResult:
        driver = create_driver(config)
        # One collection at a time over a store: the servers' scheduled ones take it too.
        try:
            lease = await driver.try_lease(LEASE, ttl=LEASE_TTL)
            if lease is None:
                raise LeaseHeld
            # Rests in short pauses while other processes keep the machine busy (gcpace).
            pacer = Pacer(during_rest=walks_stopped) if rest else None  # walks rest too
            collector = GarbageCollector(
                driver, options, emit=_say, pacer=pacer, emit_lines=_say_all, head=head
            )
            _ending.append(collector)
            try:  # the lease renews itself while held; a lapsed one stops the run
                return await while_held(lease, collector.run())
            finally:
                await lease.release()
        finally:
            await driver.close()

    try:
        result = _run_yielding(collect(), spawns=config.storage.s3 is None)
    except LeaseHeld:
        print(
            f"entrepot: another garbage collection is running on this storage (the lease "
            f"{LEASE} is held, by a server's scheduled collection or another command); "
            "try again when it is done",
            file=sys.stderr,
        )
        return 1
    except LeaseLost:
        print(
            f"entrepot: garbage collection stopped: its lease {LEASE} lapsed (the command "
            "stalled longer than the lease's time limit, and another collection may have "
            "taken over); what it had moved aside is put back by the next collection",
            file=sys.stderr,
        )
        return 1
    except StorageError as exc:
        print(f"entrepot: storage error in {_storage_named(config)}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "entrepot: garbage collection interrupted; the next collection puts back any "
            "blob it had moved aside",
            file=sys.stderr,
        )
        return 130
    if options.dry_run:
        _say(f"dry run: nothing deleted ({result.took})")
    else:
        _say(
            f"deleted {len(result.blobs_deleted)} blobs ({result.bytes_freed} bytes), "
            f"{len(result.manifests_deleted)} manifests, {len(result.tags_deleted)} tags, "
            f"{result.layer_links_deleted} layer links and {len(result.repositories_removed)} "
            f"empty repositories; {result.blobs_relinked} blobs kept as a push linked them "
            f"during the sweep ({result.took})"
        )
        if result.blobs_recovered:
            _say(f"put back {result.blobs_recovered} blobs an interrupted collection left aside")
    return 0


def _run_yielding(work: Coroutine[object, object, _T], *, spawns: bool = False) -> _T:
    """``_run_async(work, spawns=spawns)`` in a thread at the lowest priority
    (``yield_to_serving``). An interrupt (Ctrl-C, SIGTERM) cancels the work, which
    releases the lease, and returns only once the thread is done: the lease is free when
    the command returns. Done is an event of its own: Python 3.11's ``Thread.join``
    interrupted by a signal handler's exception marks a running thread stopped
    (``is_alive()`` False), so a pool's shutdown, or a second join, returned while the
    collection still held its lease."""
    running: list[tuple[asyncio.AbstractEventLoop, asyncio.Task[Any]]] = []
    stopping = threading.Event()
    outcome: list[tuple[bool, Any]] = []
    finished = threading.Event()

    async def main() -> _T:
        task = asyncio.current_task()
        assert task is not None
        running.append((asyncio.get_running_loop(), task))
        if stopping.is_set():  # interrupted before it was listed above
            task.cancel()
        return await work

    def body() -> None:
        try:
            yield_to_serving()
            outcome.append((True, _run_async(main(), spawns=spawns)))
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            outcome.append((False, exc))
        finally:
            finished.set()

    thread = threading.Thread(target=body, name="garbage-collect")
    # SIGTERM's handler before the work starts: one that comes as soon as it does must
    # stop the collection, not end the process (the default action).
    with _terminate_as_interrupt():
        try:
            thread.start()
            finished.wait()
        except KeyboardInterrupt:
            stopping.set()
            for loop, task in running:
                with contextlib.suppress(RuntimeError):  # its loop closed meanwhile
                    loop.call_soon_threadsafe(task.cancel)
            if thread.ident is not None:  # started: it lists its task, or sees stopping
                _wait_through_interrupts(finished)
            raise
    done, value = outcome[0]
    if not done:
        raise value
    result: _T = value
    return result


def _wait_through_interrupts(finished: threading.Event) -> None:
    """Wait for a cancelled collection to release its lease; a second interrupt does not
    cut that short (it takes a moment, and a lease left held blocks the next run)."""
    while not finished.is_set():
        with contextlib.suppress(KeyboardInterrupt):
            finished.wait()


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (kill, systemd, Kubernetes) stops a collection as Ctrl-C does: cancelled,
    its lease released, so the next one need not wait for the lease to expire."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_async(work: Coroutine[object, object, _T], *, spawns: bool = False) -> _T:
    """On uvloop when it is installed (the server's loop too): many small storage calls;
    but work that ``spawns`` child processes (a disk's collection starts seven: its walks
    and bulk helpers) on asyncio's own, which starts each with vfork, where uvloop forks
    the whole process: ~16 ms a child from the bench store's 150 MB collector, ~4 ms
    with vfork (and in interleaved runs of the command on the bench store, 0.1-0.4 s
    less in all: medians of 5 to 8 pairs, more than the starts alone). The result is
    handed over outside the main task: asyncio's runner formats that task (with its
    result: seconds for a large store's GcResult) when it restores SIGINT's handler."""
    done: list[_T] = []

    async def main() -> None:
        done.append(await work)

    if not spawns and importlib.util.find_spec("uvloop"):
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
    return done[0]


def _say(line: str) -> None:
    print(line, flush=True)


def _say_all(lines: list[str]) -> None:
    """The listing of what a collection removes (55,600 lines on the bench store), in one
    write."""
    if lines:
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()


def _storage_named(config: Config) -> str:
    """The store a message is about: an S3 bucket, or a disk's root."""
    if config.storage.s3 is not None:
        return f"storage.s3 bucket {config.storage.s3.bucket}"
    return f"storage.filesystem.rootdirectory {config.storage.rootdirectory}"
