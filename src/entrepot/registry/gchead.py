"""The mark's walks of a disk, begun as soon as ``entrepot garbage-collect`` knows its store
(cli_gcargs: at a glance at its config file, checked against the config read whole),
before it imports the config package, asyncio and the collector (0.2-0.3 s of CPU on one
core): the three walk children it started first (storage.earlywalks) are told their
walks, the very argv the collector's own walks would send (scan_store's, find_blobs'),
and walk on the CPU the imports leave idle, into pipes that hold a megabyte
(fswalk.PIPE_SIZE) until the collector reads them; the driver hands each walk the child
already walking it (fschildren.WalkSpares). In interleaved runs on the bench store: a
median 3.15 s against 3.59 s (eight pairs, told once the config was read whole), then
1.96 s against 2.05 s on a faster machine (sixteen pairs, told at a glance).

The collection is then as if it had begun here: its time (the grace window's cutoff, and
when the mark began, for the re-check) is taken before the walks begin, and the algorithms
the walks skip are those of which the store held no blob then (see gcwalk.ONLY). Imports
nothing that loads asyncio.
"""

from __future__ import annotations

import os
import time
from typing import NamedTuple

from entrepot.registry import layout
from entrepot.registry.digestnames import ALGORITHMS
from entrepot.registry.gcwalk import (
    WALK_SHARDS,
    blob_records,
    repository_args,
    repository_records,
)
from entrepot.storage import earlywalks
from entrepot.storage.fswalk import local_argv


class HeadStart(NamedTuple):
    """A mark begun ahead: when (``time.time()``, before any walk), the algorithms its
    walks skip, and the count of links the servers wrote as it began (gcrecheck's; None:
    not read)."""

    started: float
    skipped: tuple[str, ...]
    links: int | None = None


def begin_mark(root: str, tag_links: bool) -> HeadStart | None:
    """Tell the early walk children the mark's walks of the disk store at ``root`` (the
    driver's root: an absolute path), reading each tag's link with ``tag_links``; None,
    telling nothing, where the store has no blob folder or fewer children wait."""
    started = time.time()
    try:
        present = set(os.listdir(f"{root}/{layout.BLOBS}"))
    except OSError:
        return None  # the collector finds what is wrong and says so
    skipped = tuple(a for a in ALGORITHMS if a not in present)
    links = _links_written(root)  # before any walk reads: see gcrecheck.EarlyRecheck
    walked = tuple(a for a in ALGORITHMS if a not in skipped)
    args = repository_args(tag_links, True, walked, loose=not tag_links)
    argvs = [
        local_argv(root, layout.REPOSITORIES, _name(repository_records), args, (n, WALK_SHARDS))
        for n in range(WALK_SHARDS)
    ]
    argvs.append(local_argv(root, layout.BLOBS, _name(blob_records), (), None))
    if not earlywalks.tell(argvs):
        return None
    return HeadStart(started, skipped, links)


def _links_written(root: str) -> int | None:
    """gcrecheck.links_written's count, read from the disk; None where it cannot be."""
    try:
        return os.stat(f"{root}/{layout.LINKS_WRITTEN}").st_size
    except FileNotFoundError:
        return 0
    except OSError:
        return None


def _name(walk: object) -> str:
    """How a child finds a walk (fschildren.fold_name's)."""
    return f"{walk.__module__}:{walk.__qualname__}"  # type: ignore[attr-defined]
