"""Garbage collection's lease: the servers' scheduled runs and the command take it, so one
collection runs at a time over a store. It is the storage driver's lease of scope "store"
(storage/driver.py ``Lease``): a lock file on a filesystem, Redis where configured, else
objects in the bucket; renewed while held, lost by a holder that stalls past its time
limit (``LeaseLost`` on its next ``renew``: the collection stops)."""

from __future__ import annotations

# Not "entrepot/gc/lease": older versions kept their lease's generations in that folder.
GC_LEASE = "entrepot/gc/lock"
GC_LEASE_TTL = 60.0  # seconds; renewed every third of it
