"""``python -m entrepot serve CONFIG``, and the ``entrepot`` program (``run``)."""

import os
import sys

from entrepot.lowpriority import lower_if_collecting

# A disk's mark walks the repositories in two children (gcwalk.WALK_SHARDS) and the
# blob folders in one, each with this module imported.
MARK_WALKS = 3
MARK_WALK_MODULE = "entrepot.registry.gcwalk"


def run() -> int:
    collecting = sys.argv[1:2] == ["garbage-collect"]
    lower_if_collecting(sys.argv[1:])  # before the command's imports (lowpriority.py)
    if not collecting:
        from entrepot.cli import main

        return main()
    begun = None
    if not {"-h", "--help"} & set(sys.argv[2:]):
        from entrepot.storage import earlywalks

        # Forked here, before any thread, they walk while the command imports, on the CPU
        # it leaves idle; told their walks as soon as the store is known (cli_gcargs,
        # registry.gchead).
        earlywalks.start(MARK_WALKS, MARK_WALK_MODULE)
        from entrepot.cli_gcargs import head_start

        begun = head_start(sys.argv[1:])
    from entrepot.cli_gc import main as collect

    status = collect(sys.argv[1:], begun)
    # Ended now, its output flushed: a collection leaves a few hundred thousand objects
    # (digests, scans, modules) that the interpreter would free one by one on its way
    # out, a tenth of a second of the bench store's run for a process about to end.
    # Its lease is released, its helper processes gone, its files closed by then.
    import logging  # here: its import was 10-18 ms of the start, before the walks began

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    sys.exit(run())
