"""A worker's heap keeps the memory of one request body for the next: a chunked push does
not fault its pages in again at every PATCH (entrepot.heap)."""

from __future__ import annotations

import os
import subprocess
import sys

# In a fresh interpreter (malloc's settings are per process): bodies of 16 MiB in
# Granian-sized pieces, alive at once and then freed, as a PATCH's are; prints the page
# faults the last ten of them cost.
BODIES = """
import resource, sys
from entrepot.heap import keep_heap_for_bodies
print(keep_heap_for_bodies())
def body():
    parts = [b"x" * (400 * 1024) for _ in range(40)]
    del parts
for _ in range(3):
    body()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    body()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
PAGES_PER_BODY = (16 << 20) // os.sysconf("SC_PAGESIZE")


def _bodies(**env: str) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))}
    out = subprocess.run(
        [sys.executable, "-c", BODIES],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    return out[0], int(out[1])


def test_the_next_body_reuses_the_memory_of_the_last() -> None:
    was_set, faults = _bodies()
    assert was_set == "True"
    # Ten bodies touch 10 x PAGES_PER_BODY pages; without the setting glibc gives them
    # back to the kernel after each body and nearly every page faults again.
    assert faults < PAGES_PER_BODY // 10


def test_the_operators_own_malloc_settings_win() -> None:
    was_set, faults = _bodies(MALLOC_TRIM_THRESHOLD_="131072", MALLOC_MMAP_THRESHOLD_="131072")
    assert was_set == "False"
    assert faults > PAGES_PER_BODY  # glibc as the operator asked: pages given back
